"""What the HTTP app is handed: the gateway's side of its boundary, as protocols.

``create_app`` is given a ``RecordSink`` (canonical records to Kafka; the app starts it
before the first request and stops it after the last), a ``Reader`` (ClickHouse reads for
the GET endpoints, the admin SQL lane and ``/healthz``), a ``Recommender`` (GET
recommended-next-actions), a ``Trainer`` (POST /admin/v1/train), ``Regulations`` (forget a
person) and an ``Admission`` (may the pipeline take records right now). The gateway defines
them and never imports their implementations: ``schemas.kafka.RecordProducer`` and
``schemas.warehouse.Warehouse`` fit the first two as they are, and the composition root
(``ingest_gateway.cli``) builds the other two from the stream processors' scorer. In an
HTTP front of ``goalstream up`` each is a stub that asks the stack process
(``ingest_gateway.remote``). Tests hand in list-backed or failing fakes instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, TypeVar

from schemas.config import Goal
from schemas.model import Record

if TYPE_CHECKING:
    from .errors import GatewayError

T = TypeVar("T")


class RecordSink(Protocol):
    """Where accepted records go; ``publish`` returns only once they are durable (acked)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...  # flushes what is still buffered

    async def flush(self) -> None: ...

    async def publish(self, records: Sequence[Record]) -> None: ...


# Asked before every publish: None to take the records, else the error to answer with
# (``errors.Unavailable`` with ``retry_after``: the broker is down, the backlog is full).
Admission = Callable[[], "GatewayError | None"]


class Reader(Protocol):
    """ClickHouse as the gateway reads it; failures raise ``schemas.warehouse.WarehouseError``."""

    @property
    def is_open(self) -> bool: ...

    async def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...

    async def ping(self) -> bool: ...

    async def admin(self, fn: Callable[[Any], T]) -> T: ...  # the admin SQL lane (its own client)


@dataclass(frozen=True)
class Recommendation:
    """One customer's standing in one goal, as GET recommended-next-actions answers it."""

    likelihood: float
    actions: list[dict[str, Any]]  # the goal's actions, most important first
    model_kind: str  # "logistic", "gbt", "base_rate", "outcome" (the goal is already reached or lost)
    model_version: str
    at_ms: int  # when it was computed


class Recommender(Protocol):
    async def recommend(self, workspace: str, goal: Goal, customer_id: str) -> Recommendation | None:
        """Computed now, with the goal's current model; None when there is no such customer.
        A warehouse failure raises ``WarehouseError``."""
        ...


class Trainer(Protocol):
    async def __call__(self, goal: str | None, workspace: str | None) -> list[dict[str, Any]]:
        """Train one goal's model (None: every goal) of one workspace (None: every one),
        start scoring with it and rescore; one summary per model trained."""
        ...


class Regulations(Protocol):
    """Data-subject regulations (POST /admin/v1/forget, a vendor's deletion call):
    ``stream_processors.forget.Regulator`` where ClickHouse is, the stack's over IPC in a front."""

    async def request(self, workspace: str, customer_id: str, *, suppress: bool, requested_by: str) -> dict[str, Any]:
        """Recorded (durable) and in force when this returns; carried out in the background."""
        ...

    async def list(self, workspace: str | None = None, regulation: str | None = None) -> list[dict[str, Any]]: ...

    async def wait(self, regulation: str, timeout_s: float) -> dict[str, Any] | None: ...
