"""Customer state: merging upserts and deletes into one current row per customer.

Pure logic, no I/O: ``apply`` folds one decoded ``CustomerUpsert``/``CustomerDelete``
into the customer's previous state and returns the new state, whose ``row`` is what
goes into ClickHouse ``customers`` (a ReplacingMergeTree on ``version``, with
``is_deleted``). Top-level attributes merge (a later value replaces an earlier one, keys
not given are kept); nested objects such as ``custom_attributes`` are kept as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import orjson

from schemas import model

COLUMNS = (
    "workspace",
    "customer_id",
    "created_at",
    "updated_at",
    "name",
    "email",
    "plan",
    "attributes",
    "message_id",
    "version",
    "is_deleted",
)


def _ms(value: Any) -> int:
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    return int(value)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


@dataclass(slots=True)
class CustomerState:
    workspace: str
    customer_id: str
    created_at_ms: int
    updated_at_ms: int
    attributes: dict[str, Any] = field(default_factory=dict)
    version: int = 0
    deleted: bool = False
    message_id: str = ""

    def row(self) -> list[Any]:
        a = self.attributes

        def s(key: str) -> str:
            v = a.get(key)
            return v if isinstance(v, str) else ""

        return [
            self.workspace,
            self.customer_id,
            _dt(self.created_at_ms),
            _dt(self.updated_at_ms),
            s("name"),
            s("email"),
            s("plan"),
            orjson.dumps(a).decode(),
            self.message_id,
            self.version,
            1 if self.deleted else 0,
        ]

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "CustomerState":
        return cls(
            workspace=row["workspace"],
            customer_id=row["customer_id"],
            created_at_ms=_ms(row["created_at"]),
            updated_at_ms=_ms(row["updated_at"]),
            attributes=orjson.loads(row["attributes"]) if row["attributes"] else {},
            version=int(row["version"]),
            deleted=bool(row["is_deleted"]),
            message_id=row["message_id"],
        )


def _next_version(prev: CustomerState | None, received_ms: int) -> int:
    # Monotonic per customer across broker restarts: microsecond wall time, but always
    # above the previous version even if clocks or receipt times go backwards.
    floor = prev.version + 1 if prev is not None else 1
    return max(floor, received_ms * 1000)


def apply(prev: CustomerState | None, schema: str, record: dict[str, Any]) -> CustomerState:
    received = _ms(record["received_at"])
    if schema == model.CUSTOMER_DELETE:
        base = prev or CustomerState(record["workspace"], record["customer_id"], received, received)
        return CustomerState(
            workspace=base.workspace,
            customer_id=base.customer_id,
            created_at_ms=base.created_at_ms,
            updated_at_ms=received,
            attributes={},
            version=_next_version(prev, received),
            deleted=True,
            message_id=record["message_id"],
        )
    live = prev if prev is not None and not prev.deleted else None
    attributes = dict(live.attributes) if live else {}
    attributes.update(orjson.loads(record["attributes"]))
    created = record.get("created_at")
    if created is not None:
        created_ms = _ms(created)
    elif live is not None:
        created_ms = live.created_at_ms
    else:
        created_ms = received
    return CustomerState(
        workspace=record["workspace"],
        customer_id=record["customer_id"],
        created_at_ms=created_ms,
        updated_at_ms=received,
        attributes=attributes,
        version=_next_version(prev, received),
        deleted=False,
        message_id=record["message_id"],
    )
