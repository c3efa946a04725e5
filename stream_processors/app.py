"""The stream processors: faust agents from Kafka into ClickHouse.

Flow: ``goalstream.events`` -> events sink -> ClickHouse ``events``;
``goalstream.customers`` -> customer state (upsert, delete, arrays, merges) -> ClickHouse
``customers`` and ``customer_merges``; ``goalstream.deadletter`` -> ClickHouse
``deadletters`` (the embedded broker keeps nothing across restarts; ClickHouse does).
After the events or customers sink stored a batch, the scoring processor
(``scoring.Scorer``) rescores the customers it touched, in every goal of their workspace,
and publishes propensity changes and recommended actions.
Each agent takes batches (``take_events``: acknowledged only after the batch body
returns, i.e. after ClickHouse took it), decodes every message with the writer's schema
named in its headers, sends what does not decode to ``goalstream.deadletter`` with the
reason, and inserts the rest in one batch carrying an ``insert_deduplication_token``
derived from the batch's offsets and message ids: a batch replayed after a crash is not
stored twice, and a broker restart that reuses offsets (the embedded broker keeps
nothing) cannot collide with an earlier batch because the message ids differ.

Customer state is cached in memory per worker and rebuilt from ClickHouse on a miss (the
latest version, deleted or not), never from Kafka, so a broker restart with empty topics
cannot make merges go wrong. The cache is dropped whenever partitions are revoked.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Iterable, Sequence

import faust

from schemas import codec, model, topics
from schemas.config import GoalstreamConfig
from schemas.kafka import KafkaUnavailable, RecordProducer
from schemas.settings import WorkerSettings
from schemas.warehouse import Warehouse, WarehouseError

from . import customers as cust
from .scoring.processor import Scorer
from .errors import BadRecord

log = logging.getLogger("goalstream.processors")

EVENT_COLUMNS = ("message_id", "workspace", "customer_id", "anonymous_id", "name", "timestamp", "received_at", "properties", "source")
EXPECTED = {
    topics.EVENTS: {model.EVENT},
    topics.CUSTOMERS: {model.CUSTOMER_UPSERT, model.CUSTOMER_DELETE, model.CUSTOMER_ARRAYS, model.CUSTOMER_MERGE},
}
DEADLETTER_COLUMNS = (
    "id", "reason", "stage", "source_topic", "source_partition", "source_offset", "key", "value", "headers", "failed_at",
)
MERGE_COLUMNS = ("workspace", "customer_id", "merged_id", "kind", "source", "message_id", "merged_at")
# After this many failed attempts a batch is split so one bad row cannot block the rest.
ISOLATE_AFTER = 5


def _headers(message: Any) -> list[tuple[str, bytes]]:
    h = message.headers or ()
    return list(h.items()) if isinstance(h, dict) else list(h)


def batch_token(stage: str, messages: Sequence[Any], ids: Iterable[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for m in messages:
        h.update(f"{m.topic}/{m.partition}/{m.offset};".encode())
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return f"{stage}-{h.hexdigest()}"


class Processors:
    def __init__(self, settings: WorkerSettings, warehouse: Warehouse, config: GoalstreamConfig, models: Any = None):
        self.settings = settings
        self.warehouse = warehouse
        self.config = config
        self.progress: dict[tuple[str, int], int] = {}
        self.cache: OrderedDict[tuple[str, str], cust.CustomerState] = OrderedDict()
        self.seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # recent (workspace, message_id)
        # Dead letters, propensity changes and recommended actions all go out through this one.
        # Not idempotent: what it sends carries deterministic ids, so a retry duplicate is recognisable.
        self.producer = RecordProducer(settings.kafka_bootstrap, idempotence=False)
        self.app = self._make_app()
        self.scorer = Scorer(settings, config, warehouse, self.producer, is_leader=self._owns_partition_zero, models=models)

    # -- faust wiring ------------------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.consumer_group,
            broker=[f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",")],
            datadir=str(s.data_dir / "faust"),
            web_enabled=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=False,
            stream_buffer_maxsize=max(4096, s.batch_max * 2),
            broker_rebalance_timeout=s.rebalance_timeout_s,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=min(1.0, s.session_timeout_s / 4),
            broker_commit_interval=1.0,
        )
        events = app.topic(topics.EVENTS, value_serializer="raw", key_serializer="raw")
        customers = app.topic(topics.CUSTOMERS, value_serializer="raw", key_serializer="raw")

        async def events_sink(stream):
            async for batch in stream.take_events(s.batch_max, within=s.batch_within_s):
                await self._handle(batch, "events-sink", self._sink_events)

        async def customers_sink(stream):
            async for batch in stream.take_events(s.batch_max, within=s.batch_within_s):
                await self._handle(batch, "customers-sink", self._sink_customers)

        deadletters = app.topic(topics.DEADLETTER, value_serializer="raw", key_serializer="raw")

        async def deadletters_sink(stream):
            async for batch in stream.take_events(s.batch_max, within=s.batch_within_s):
                await self._store_deadletters(batch)

        app.agent(events, name="goalstream.events-sink")(events_sink)
        app.agent(customers, name="goalstream.customers-sink")(customers_sink)
        app.agent(deadletters, name="goalstream.deadletters-sink")(deadletters_sink)

        @app.on_partitions_revoked.connect
        async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
            # Another worker may now own some customers: our cached view of them may go stale.
            self.cache.clear()

        return app

    def _owns_partition_zero(self) -> bool:
        """One worker of the group does the group-wide jobs (rescoring after a model change,
        scheduled retraining): the one that holds partition 0 of the events topic."""
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # not started, or between rebalances
            return False
        return any(tp.topic == topics.EVENTS and tp.partition == 0 for tp in assigned)

    async def start(self) -> None:
        (self.settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
        await self.producer.start()
        await self.app.start()
        await self.scorer.start()

    async def stop(self, timeout: float = 30.0) -> None:
        await self.scorer.stop()
        # Bounded: with the broker gone, faust's final commit could wait forever.
        try:
            await asyncio.wait_for(self.app.stop(), timeout)
        except asyncio.TimeoutError:
            log.error("processors did not stop within %.0fs (broker unreachable?); leaving anyway", timeout)
        try:
            await asyncio.wait_for(self.producer.stop(), 10)
        except asyncio.TimeoutError:
            log.error("dead-letter producer did not flush within 10s")

    # -- batch handling ----------------------------------------------------------------

    async def _handle(self, batch: Sequence[Any], stage: str, sink: Callable[[list], Awaitable[None]]) -> None:
        good: list[tuple[Any, str, dict[str, Any]]] = []
        for event in batch:
            msg = event.message
            try:
                schema, record = self._decode(msg)
            except BadRecord as exc:
                await self._deadletter(msg, exc.message, stage)
                continue
            good.append((msg, schema, record))
        if good:
            await self._with_retry(good, stage, sink)
        self._advance(batch)

    def _advance(self, batch: Sequence[Any]) -> None:
        for event in batch:
            msg = event.message
            key = (msg.topic, msg.partition)
            if msg.offset > self.progress.get(key, -1):
                self.progress[key] = msg.offset

    async def _store_deadletters(self, batch: Sequence[Any]) -> None:
        """Dead letters into ClickHouse. There is nowhere further to send one that fails,
        so this waits and retries until ClickHouse takes the batch; a message that is not
        a DeadLetter record is stored too, raw, with that as its reason."""
        rows = []
        for event in batch:
            msg = event.message
            try:
                schema, r = codec.decode(msg.value or b"", _headers(msg))
                if schema != model.DEAD_LETTER:
                    raise codec.SchemaError(f"{schema} does not belong on {msg.topic}")
                rows.append([r[c] for c in DEADLETTER_COLUMNS])
            except codec.SchemaError as exc:
                # A deterministic id, so a replayed batch keeps its deduplication token.
                raw_id = hashlib.blake2b((msg.value or b"") + f"/{msg.partition}/{msg.offset}".encode(), digest_size=16).hexdigest()
                rows.append([
                    raw_id, f"undecodable dead letter: {exc}", "deadletters-sink", msg.topic,
                    msg.partition, msg.offset, msg.key, msg.value, dict(_headers(msg)), model.now_ms(),
                ])
        token = batch_token("deadletters", [e.message for e in batch], (str(r[0]) for r in rows))
        attempt = 0
        while True:
            try:
                await self.warehouse.insert("deadletters", rows, DEADLETTER_COLUMNS, token)
                break
            except WarehouseError as exc:
                attempt += 1
                delay = min(10.0, 0.2 * 2**attempt)
                log.error("deadletters-sink: ClickHouse insert failed (%s); retry %d in %.1fs", exc, attempt, delay)
                await asyncio.sleep(delay)
        self._advance(batch)

    @staticmethod
    def _decode(msg: Any) -> tuple[str, dict[str, Any]]:
        if msg.value is None:
            raise BadRecord("message has no value")
        try:
            schema, record = codec.decode(msg.value, _headers(msg))
        except codec.SchemaError as exc:
            raise BadRecord(str(exc)) from None
        if schema not in EXPECTED.get(msg.topic, ()):
            raise BadRecord(f"{schema} does not belong on {msg.topic}")
        return schema, record

    async def _with_retry(self, good: list, stage: str, sink: Callable[[list], Awaitable[None]]) -> None:
        """Insert until it works. A ClickHouse that is down is waited for, however long;
        only a ClickHouse that answers pings but keeps refusing the batch gets it split,
        so that the rows it refuses go to the dead-letter topic and the rest are stored."""
        attempt = 0
        while True:
            try:
                await sink(good)
                return
            except WarehouseError as exc:
                attempt += 1
                if attempt >= ISOLATE_AFTER and await self.warehouse.ping():
                    log.error("%s: ClickHouse is up but refused a batch of %d %d times (%s); isolating", stage, len(good), attempt, exc)
                    for item in good:
                        await self._one_or_deadletter(item, stage, sink)
                    return
                delay = min(10.0, 0.2 * 2**attempt)
                log.warning("%s: ClickHouse insert failed (%s); retry %d in %.1fs", stage, exc, attempt, delay)
                await asyncio.sleep(delay)

    async def _one_or_deadletter(self, item: tuple, stage: str, sink: Callable[[list], Awaitable[None]]) -> None:
        refusals = 0
        while True:
            try:
                await sink([item])
                return
            except WarehouseError as exc:
                if not await self.warehouse.ping():
                    await asyncio.sleep(1.0)  # down again: wait, this row is not at fault
                    continue
                refusals += 1
                if refusals >= 3:
                    await self._deadletter(item[0], f"ClickHouse refused the record: {exc}", stage)
                    return
                await asyncio.sleep(0.5 * refusals)

    async def _deadletter(self, msg: Any, reason: str, stage: str) -> None:
        log.warning("dead-lettering %s/%s@%s: %s", msg.topic, msg.partition, msg.offset, reason)
        record = model.dead_letter(
            reason=reason, stage=stage, key=msg.key, value=msg.value, headers=dict(_headers(msg)),
            source_topic=msg.topic, source_partition=msg.partition, source_offset=msg.offset,
        )
        while True:
            try:
                await self.producer.publish([record])
                return
            except KafkaUnavailable as exc:
                # Not acknowledging the source message is the only safe choice here.
                log.error("cannot write to %s (%s); retrying", topics.DEADLETTER, exc)
                await asyncio.sleep(1.0)

    # -- sinks -------------------------------------------------------------------------

    async def _sink_events(self, good: list) -> None:
        # A client that resends (same Segment messageId, Customer.io event id) gets its
        # event stored once: ids seen recently or twice in this batch are skipped.
        rows, fresh = [], {}
        for _msg, _schema, r in good:
            k = (r["workspace"], r["message_id"])
            if k in self.seen or k in fresh:
                continue
            fresh[k] = None
            rows.append([r[c] for c in EVENT_COLUMNS])
        # The token covers the whole batch, so a replay of it is recognised however it filters.
        token = batch_token("events", [g[0] for g in good], (r["message_id"] for _, _, r in good))
        if rows:
            await self.warehouse.insert("events", rows, EVENT_COLUMNS, token)
            touched: dict[str, set[str]] = {}
            for _msg, _schema, r in good:
                touched.setdefault(r["workspace"], set()).add(r["customer_id"] or r["anonymous_id"])
            await self.scorer.score_with_retry(touched, "event", token)
        if self.settings.dedup_window:
            self.seen.update(fresh)
            while len(self.seen) > self.settings.dedup_window:
                self.seen.popitem(last=False)

    async def _load_customers(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], cust.CustomerState]:
        by_ws: dict[str, list[str]] = {}
        for ws, cid in keys:
            by_ws.setdefault(ws, []).append(cid)
        found: dict[tuple[str, str], cust.CustomerState] = {}
        for ws, ids in by_ws.items():
            rows = await self.warehouse.rows(
                f"SELECT {', '.join(cust.COLUMNS)} FROM customers WHERE workspace = {{ws:String}} "
                "AND customer_id IN {ids:Array(String)} ORDER BY version DESC LIMIT 1 BY customer_id",
                {"ws": ws, "ids": ids},
            )
            for row in rows:
                found[(ws, row["customer_id"])] = cust.CustomerState.from_row(row)
        return found

    async def _sink_customers(self, good: list) -> None:
        keys = {(r["workspace"], r["customer_id"]) for _, _, r in good}
        # A merge also changes the merged customer, which may live on another partition.
        keys |= {(r["workspace"], r["merged_id"]) for _, schema, r in good if schema == model.CUSTOMER_MERGE}
        states: dict[tuple[str, str], cust.CustomerState | None] = {k: self.cache.get(k) for k in keys}
        missing = {k for k, v in states.items() if v is None}
        if missing:
            states.update(await self._load_customers(missing))
        touched: dict[tuple[str, str], cust.CustomerState] = {}
        merges: list[list[Any]] = []
        for _msg, schema, r in good:
            k = (r["workspace"], r["customer_id"])
            if schema == model.CUSTOMER_MERGE:
                if r["merged_id"] == r["customer_id"]:
                    continue
                m = (r["workspace"], r["merged_id"])
                primary, secondary = cust.merge(states.get(k), states.get(m), r)
                states[k] = touched[k] = primary
                if secondary is not None:
                    states[m] = touched[m] = secondary
                merges.append([r["workspace"], r["customer_id"], r["merged_id"], r["kind"], r["source"], r["message_id"], r["received_at"]])
                continue
            new = cust.apply(states.get(k), schema, r)
            if new is not None:
                states[k] = touched[k] = new
        token = batch_token("customers", [g[0] for g in good], (r["message_id"] for _, _, r in good))
        if touched:
            await self.warehouse.insert("customers", [s.row() for s in touched.values()], cust.COLUMNS, token)
        if merges:
            # After the customers: a replay re-sends both, and each insert is deduplicated by its token.
            await self.warehouse.insert("customer_merges", merges, MERGE_COLUMNS, token + "-merges")
        if touched:
            by_ws: dict[str, set[str]] = {}
            for ws, cid in touched:
                by_ws.setdefault(ws, set()).add(cid)
            await self.scorer.score_with_retry(by_ws, "customer", token)
        # Only now, with the rows stored, does the cache move forward.
        limit = self.settings.customer_cache_size
        for k, state in touched.items():
            self.cache[k] = state
            self.cache.move_to_end(k)
        while len(self.cache) > limit:
            self.cache.popitem(last=False)

    # -- draining ----------------------------------------------------------------------

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        return all(end == 0 or self.progress.get(tp, -1) >= end - 1 for tp, end in ends.items())

    async def wait_caught_up(self, ends: dict[tuple[str, int], int], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.caught_up(ends):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True
