"""Customer state: merging upserts and deletes into one current row per customer.

Pure logic, no I/O: ``apply`` folds one decoded ``CustomerUpsert``/``CustomerDelete``/
``CustomerArrays`` into the customer's previous state and returns the new state, whose
``row`` is what goes into ClickHouse ``customers`` (a ReplacingMergeTree on ``version``,
with ``is_deleted``). Top-level attributes merge (a later value replaces an earlier one,
keys not given are kept); nested objects such as ``custom_attributes`` are kept as given.
Array changes upsert items by ``id`` (items without one are appended) or remove ids.
``merge`` folds a ``CustomerMerge``: the merged customer's attributes fill the primary's
gaps (the primary's own values win) and, for kind ``merge``, the merged one is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
            model.from_ms(self.created_at_ms),
            model.from_ms(self.updated_at_ms),
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
            created_at_ms=model.to_ms(row["created_at"]),
            updated_at_ms=model.to_ms(row["updated_at"]),
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


def _item_key(value: Any) -> str | None:
    # Ids arrive as 1 or "1" depending on the client; both name the same item.
    if value is None or isinstance(value, (dict, list)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def apply_array(prev: CustomerState | None, record: dict[str, Any]) -> CustomerState | None:
    """Upsert into or delete from one array attribute; None means nothing to store."""
    received = model.to_ms(record["received_at"])
    live = prev if prev is not None and not prev.deleted else None
    field_name = record["field"]
    items = orjson.loads(record["items"])
    current = live.attributes.get(field_name) if live else None
    array = list(current) if isinstance(current, list) else []
    if record["op"] == "delete":
        if live is None or not isinstance(current, list):
            return None  # unknown customer or field: documented as not an error
        gone = {k for k in map(_item_key, items) if k is not None}
        array = [it for it in array if not (isinstance(it, dict) and _item_key(it.get("id")) in gone)]
    else:
        index = {_item_key(it.get("id")): i for i, it in enumerate(array) if isinstance(it, dict) and _item_key(it.get("id")) is not None}
        for item in items:
            key = _item_key(item.get("id")) if isinstance(item, dict) else None
            if key is not None and key in index:
                array[index[key]] = item
            else:
                if key is not None:
                    index[key] = len(array)
                array.append(item)
    attributes = dict(live.attributes) if live else {}
    attributes[field_name] = array
    return CustomerState(
        workspace=record["workspace"],
        customer_id=record["customer_id"],
        created_at_ms=live.created_at_ms if live else received,
        updated_at_ms=received,
        attributes=attributes,
        version=_next_version(prev, received),
        deleted=False,
        message_id=record["message_id"],
    )


def merge(
    primary: CustomerState | None, secondary: CustomerState | None, record: dict[str, Any]
) -> tuple[CustomerState, CustomerState | None]:
    """Fold ``merged_id`` into ``customer_id``; returns (new primary, new merged or None)."""
    received = model.to_ms(record["received_at"])
    p_live = primary if primary is not None and not primary.deleted else None
    s_live = secondary if secondary is not None and not secondary.deleted else None
    attributes = dict(s_live.attributes) if s_live else {}
    attributes.update(p_live.attributes if p_live else {})
    created = [s.created_at_ms for s in (p_live, s_live) if s is not None]
    new_primary = CustomerState(
        workspace=record["workspace"],
        customer_id=record["customer_id"],
        created_at_ms=min(created) if created else received,
        updated_at_ms=received,
        attributes=attributes,
        version=_next_version(primary, received),
        deleted=False,
        message_id=record["message_id"],
    )
    new_secondary = None
    if record["kind"] == "merge" and s_live is not None:
        new_secondary = CustomerState(
            workspace=s_live.workspace,
            customer_id=s_live.customer_id,
            created_at_ms=s_live.created_at_ms,
            updated_at_ms=received,
            attributes={},
            version=_next_version(secondary, received),
            deleted=True,
            message_id=record["message_id"],
        )
    return new_primary, new_secondary


def applied(prev: CustomerState | None, record: dict[str, Any]) -> bool:
    """Whether a record sent again (``goalstream-resent``) is already in ``prev``: it is the
    record ``prev`` came from, or it was received in an earlier millisecond than ``prev``'s
    version (versions are at least the receipt time in microseconds, and the spool sends
    records again in the order they were received)."""
    if prev is None:
        return False
    return record["message_id"] == prev.message_id or model.to_ms(record["received_at"]) * 1000 < prev.version


def apply(prev: CustomerState | None, schema: str, record: dict[str, Any]) -> CustomerState | None:
    """Fold one upsert, delete or array change; None means there is nothing to store."""
    if schema == model.CUSTOMER_ARRAYS:
        return apply_array(prev, record)
    received = model.to_ms(record["received_at"])
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
        created_ms = model.to_ms(created)
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
