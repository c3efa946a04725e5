"""The scoring stage: rescoring decoupled from storing, so scoring never delays an insert.

Flow: ``goalstream.events`` and ``goalstream.customers``, read again in a consumer group of
the stage's own (``<group>.scoring``) -> per batch and partition, the customers it touches,
from the message keys alone (``workspace:customer_id``; a merge also touches the merged id,
so merges are decoded) -> held until the bulk sinks have stored those offsets (this worker's
``Progress`` for partitions its sinks own; the sinks' committed offsets on the broker for the
others) -> coalesced across batches: each customer touched since the last cycle is scored once
(``Scorer.score``: goal states from ClickHouse, likelihoods, propensity changes published) ->
the stage's offsets are committed only then. A crash rescores from the last commit: the
scorer publishes a change only when a likelihood moved, so that is harmless.

Cycles run at most every ``interval_s``. While the sinks have a backlog (more than
``BACKLOG`` records fetched and not stored), the stage waits twice as long as its last cycle
took: during a drain scoring takes at most a third of the worker's time and the sinks keep the
rest; at a steady rate, it scores as soon as the interval allows.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import deque
from typing import Any, Callable

from aiokafka import TopicPartition
from mode import Service

from schemas import codec, model, topics
from schemas.stopping import bounded

from ..runtime import Progress, headers_of
from ..source import KafkaBatches
from .processor import Scorer

log = logging.getLogger("goalstream.scoring")

REMOTE_REFRESH_S = 1.0  # how often the sinks' committed offsets are read for partitions not ours
BACKLOG = 10_000  # records the sinks have not stored, above which scoring yields to them
MAX_WAITING = 200_000  # messages read and not yet scored, above which reading pauses
TASK_STOP_S = 5.0


class _Batch:
    """One partition's part of one batch: its last offset and the customers it touched."""

    __slots__ = ("topic", "partition", "first", "last", "touched")

    def __init__(self, topic: str, partition: int, first: int):
        self.topic, self.partition, self.first, self.last = topic, partition, first, first
        self.touched: set[bytes | None] = set()  # message keys: workspace:customer_id


def _customer(key: bytes | None) -> tuple[str, str] | None:
    parts = model.key_parts(key)
    return parts if parts is not None and parts[1] else None


class ScoringStage(Service):
    def __init__(
        self,
        source: KafkaBatches,
        scorer: Scorer,
        *,
        stored: Progress,
        owned: Callable[[str, int], bool],
        interval_s: float,
        backlog: Callable[[], int] = lambda: 0,
        bootstrap: str,
        sink_groups: dict[str, str],
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.source = source
        self.scorer = scorer
        self.stored = stored
        self.owned = owned
        self.backlog = backlog
        self.interval_s = interval_s
        self.bootstrap = bootstrap
        self.sink_groups = sink_groups
        self.waiting: dict[tuple[str, int], deque[_Batch]] = {}
        self.n_waiting = 0
        self._room = asyncio.Event()
        self._room.set()
        self._remote: dict[tuple[str, int], int] = {}  # the sinks' committed offsets (next to read)
        self._remote_at = 0.0
        self._admin: Any = None
        self._tasks: list[asyncio.Task] = []
        self.cycles = 0
        self.scored = Progress()  # the highest offset scored per partition: what a drain waits on
        self.on_scored: Callable[[], None] | None = None  # after each cycle's commit (a process of its own reports it)

    async def on_start(self) -> None:
        await self.source.start()
        self._tasks = [
            asyncio.create_task(self._read(), name="goalstream-scoring-read"),
            asyncio.create_task(self._cycles(), name="goalstream-scoring-cycles"),
        ]

    def halt(self) -> None:
        """Score nothing more from now on (the broker is gone)."""
        for t in self._tasks:
            t.cancel()

    async def on_stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            await bounded("the scoring stage", asyncio.gather(*tasks, return_exceptions=True), TASK_STOP_S, logger=log)
        await self.source.stop()
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await bounded("the scoring stage's admin client", admin.close, TASK_STOP_S, logger=log)

    # -- reading ---------------------------------------------------------------------------

    async def _read(self) -> None:
        async for batch in self.source:
            # Per message only what must be: the raw key into a set (decoded once per customer
            # when scored); the stage reads everything the sinks read, so this is its hot loop.
            parts: dict[tuple[str, int], _Batch] = {}
            for m in batch:
                tp = (m.topic, m.partition)
                part = parts.get(tp)
                if part is None:
                    part = parts[tp] = _Batch(m.topic, m.partition, m.offset)
                part.last = m.offset
                part.touched.add(m.key)
            for m in batch:
                if m.topic == topics.CUSTOMERS and m.value is not None and (merged := _merged(m)) is not None:
                    parts[(m.topic, m.partition)].touched.add(model.partition_key(*merged))
            for tp, part in parts.items():
                self.waiting.setdefault(tp, deque()).append(part)
            self.n_waiting += len(batch)
            if self.n_waiting >= MAX_WAITING:
                self._room.clear()
                await self._room.wait()

    # -- scoring cycles --------------------------------------------------------------------

    async def _cycles(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            try:
                spent = await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a scoring cycle failed; trying again")
                spent = 0.0
            # With a backlog, at most a third of the worker's time, however large it is.
            yield_s = 2 * spent if self.backlog() > BACKLOG else 0.0
            await asyncio.sleep(max(self.interval_s - (loop.time() - t0), yield_s))

    async def cycle(self) -> float:
        """Score what is stored and not scored yet; returns the seconds spent scoring."""
        ready, commits = await self._take_ready()
        if not commits:
            return 0.0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        by_trigger: dict[str, dict[str, set[str]]] = {}
        for (workspace, customer), trigger in ready.items():
            by_trigger.setdefault(trigger, {}).setdefault(workspace, set()).add(customer)
        token = _token(commits)
        if "customer" in by_trigger:
            self.scorer.forget(by_trigger["customer"])
        for trigger, touched in by_trigger.items():
            await self.scorer.score_with_retry(touched, trigger, f"{token}/{trigger}")
        await self.source.commit({TopicPartition(t, p): off + 1 for (t, p), off in commits.items()})
        for tp, off in commits.items():
            self.scored.offsets[tp] = max(off, self.scored.offsets.get(tp, -1))
        self.cycles += 1
        if self.on_scored is not None:
            self.on_scored()
        spent = loop.time() - t0
        log.debug("scoring cycle: %d customers, %d partitions, %.3fs", len(ready), len(commits), spent)
        return spent

    async def _take_ready(self) -> tuple[dict[tuple[str, str], str], dict[tuple[str, int], int]]:
        """The customers of every waiting batch whose offsets the sinks have stored, with their
        trigger ("customer" wins over "event"), and the last such offset per partition."""
        ready: dict[bytes | None, str] = {}
        commits: dict[tuple[str, int], int] = {}
        for tp, queue in self.waiting.items():
            while queue:
                part = queue[0]
                if not await self._is_stored(tp, part.last):
                    break
                queue.popleft()
                self.n_waiting -= part.last - part.first + 1
                trigger = "customer" if part.topic == topics.CUSTOMERS else "event"
                for key in part.touched:
                    if ready.get(key) != "customer":
                        ready[key] = trigger
                commits[tp] = part.last
        if self.n_waiting < MAX_WAITING:
            self._room.set()
        customers = {}
        for key, trigger in ready.items():
            if (who := _customer(key)) is not None and customers.get(who) != "customer":
                customers[who] = trigger
        return customers, commits

    async def _is_stored(self, tp: tuple[str, int], offset: int) -> bool:
        if self.stored.offsets.get(tp, -1) >= offset:
            return True
        if self.owned(*tp):
            return False  # our own sink gets there: its progress is the fresh answer
        await self._refresh_remote()
        return self._remote.get(tp, 0) > offset

    async def _refresh_remote(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._remote_at < REMOTE_REFRESH_S:
            return
        self._remote_at = loop.time()
        from aiokafka.admin import AIOKafkaAdminClient

        try:
            if self._admin is None:
                self._admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
                await self._admin.start()
            for topic, group in self.sink_groups.items():
                offsets = await self._admin.list_consumer_group_offsets(group)
                for tp, meta in offsets.items():
                    if tp.topic == topic and meta.offset >= 0:
                        self._remote[(tp.topic, tp.partition)] = meta.offset
        except Exception as exc:  # the broker is away: the next refresh tries again
            log.warning("could not read the sinks' committed offsets (%r)", exc)


def _merged(message: Any) -> tuple[str, str] | None:
    try:
        schema = codec.schema_of(headers_of(message))
        if schema.name != model.CUSTOMER_MERGE:
            return None
        _, record = codec.decode(message.value, headers_of(message))
    except codec.SchemaError:
        return None  # the customers sink dead-letters it
    return (record["workspace"], record["merged_id"]) if record.get("merged_id") else None


def _token(commits: dict[tuple[str, int], int]) -> str:
    # Deterministic for the same offsets: a cycle repeated after a crash derives the same ids.
    h = hashlib.blake2b(digest_size=12)
    for (topic, partition), offset in sorted(commits.items()):
        h.update(f"{topic}/{partition}/{offset};".encode())
    return f"scoring-{h.hexdigest()}"
