"""The app's ports (``ingest_gateway.ports``) in an HTTP front of ``goalstream up``: each a stub
that asks the stack process over the front's one ``ipc.Channel``.

What flows through them:
- ``RemoteSink.publish(records)``: the records are Avro-encoded and size-checked here
  (``encode_records``: a record too large is a 413 without asking anyone), then the encoded
  (topic, key, value, headers) go to the stack, which appends them to its spool (or sends
  them to Kafka without one) and answers once they are durable: a 2xx from a front means
  what it means in-process. The stack's refusals come back as the gateway's own errors.
- ``RemoteAdmission``: the stack pushes its admission state (why writers are refused, if
  they are) on every tick and on every change; the front answers from that copy, at no cost
  per request. The stack checks again on every publish.
- ``RemoteReader`` (ClickHouse reads, ping, the admin lane), ``RemoteRecommender``,
  ``RemoteTrainer``: forwarded; chDB allows one process per data dir, and it is the stack.
- ``RemoteRegulations``: forwarded (the stack carries regulations out); the front's list of
  suppressed people is refreshed through ``RemoteReader`` like any read.
- ``RemoteHealth``: ``/healthz`` shows the stack's components and figures, fetched on each
  probe, with the front's own gateway state over them.
If the stack is gone, writes answer 503 (``KafkaUnavailable``) and reads fail as a
warehouse that does not answer: nothing is acknowledged that the stack did not make durable.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Sequence, TypeVar

from schemas.config import Goal
from schemas.kafka import KafkaUnavailable, encode_records
from schemas.model import Record
from schemas.warehouse import WarehouseError

from . import errors
from .health import Health
from .ipc import Channel, ChannelClosed
from .ports import Recommendation

T = TypeVar("T")
HEALTH_TIMEOUT_S = 5.0  # the stack's own probes are bounded at 1 s each


class RemoteSink:
    """``RecordSink``: started and stopped by the stack (it owns the spool), not by the front."""

    def __init__(self, channel: Channel):
        self.channel = channel

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def flush(self) -> None:
        pass  # nothing is buffered here: publish returns once the stack made it durable

    async def publish(self, records: Sequence[Record]) -> None:
        encoded = encode_records(records)  # RecordTooLarge (413) here, before anything is sent
        entries = [(r.topic, r.key, value, tuple(headers)) for r, value, headers in encoded]
        try:
            await self.channel.call("publish", entries)
        except ChannelClosed as exc:
            raise KafkaUnavailable(f"the stack process did not answer: {exc}") from None


class RemoteAdmission:
    """``Admission`` from the state the stack last pushed: (message, retry_after) or None."""

    def __init__(self) -> None:
        self.state: tuple[str, int | None] | None = None

    def update(self, state: tuple[str, int | None] | None) -> None:
        self.state = state

    def __call__(self) -> errors.GatewayError | None:
        state = self.state
        if state is None:
            return None
        return errors.Unavailable(state[0], retry_after=state[1])  # a new one per refusal: raised, it takes a traceback


class RemoteReader:
    """``Reader``: the stack's ``Warehouse``. ``admin`` takes a picklable call (app.admin_job)."""

    def __init__(self, channel: Channel):
        self.channel = channel

    @property
    def is_open(self) -> bool:
        return not self.channel.closed

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await self.channel.call(method, *args)
        except ChannelClosed as exc:
            raise WarehouseError(f"the stack process did not answer: {exc}") from None

    async def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return await self._call("rows", sql, parameters)

    async def ping(self) -> bool:
        try:
            return await self._call("ping")
        except WarehouseError:
            return False

    async def admin(self, fn: Callable[[Any], T]) -> T:
        return await self._call("admin", fn)


class RemoteRecommender:
    def __init__(self, channel: Channel):
        self.channel = channel

    async def recommend(self, workspace: str, goal: Goal, customer_id: str) -> Recommendation | None:
        try:
            return await self.channel.call("recommend", workspace, goal, customer_id)
        except ChannelClosed as exc:
            raise WarehouseError(f"the stack process did not answer: {exc}") from None


class RemoteTrainer:
    def __init__(self, channel: Channel):
        self.channel = channel

    async def __call__(self, goal: str | None, workspace: str | None) -> list[dict[str, Any]]:
        try:
            return await self.channel.call("train", goal, workspace)
        except ChannelClosed:
            raise errors.Unavailable("the stack process did not answer; retry shortly", retry_after=5) from None


class RemoteHealth(Health):
    """The stack's report (broker, ClickHouse, processors, backlog ...) with this front's own
    states over it (``gateway``: up, draining, stopped). The app's local probes are not run:
    the stack probes ClickHouse itself, where ClickHouse is."""

    def __init__(self, channel: Channel):
        super().__init__()
        self.channel = channel
        self.stack_components: dict[str, str] = {}

    def add_probe(self, component: str, probe: Any, timeout_s: float = 1.0) -> None:
        pass

    async def probe(self) -> None:
        try:
            components, details = await asyncio.wait_for(self.channel.call("health"), HEALTH_TIMEOUT_S)
        except (ChannelClosed, asyncio.TimeoutError) as exc:
            components, details = {"stack": "down" if isinstance(exc, ChannelClosed) else "stalled"}, {}
        self.stack_components, self.details = components, details

    def states(self) -> dict[str, str]:
        return {**self.stack_components, **self.components}


class RemoteRegulations:
    """``Regulations``: the stack's regulator (it holds ClickHouse)."""

    def __init__(self, channel: Channel):
        self.channel = channel

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await self.channel.call(method, *args)
        except ChannelClosed as exc:
            raise WarehouseError(f"the stack process did not answer: {exc}") from None

    async def request(self, workspace: str, customer_id: str, *, suppress: bool, requested_by: str) -> dict[str, Any]:
        return await self._call("forget", workspace, customer_id, suppress, requested_by)

    async def list(self, workspace: str | None = None, regulation: str | None = None) -> list[dict[str, Any]]:
        return await self._call("regulations", workspace, regulation)

    async def wait(self, regulation: str, timeout_s: float) -> dict[str, Any] | None:
        return await self._call("regulation_wait", regulation, timeout_s)
