"""The webhook dispatcher: propensity changes and recommended actions to receivers' URLs.

Flow: ``goalstream.propensity`` / ``goalstream.recommendations`` (consumer group
``goalstream-dispatcher``) -> for each record, one delivery per webhook of its workspace
subscribed to its object, stored as ``pending`` in ClickHouse ``webhook_deliveries``
before the offsets are committed -> the sender POSTs due deliveries (the Traitly seed's
JSON and headers, signed per Standard Webhooks) -> every attempt into
``webhook_attempts`` -> delivered, or retried on the configured schedule (with jitter,
at least the receiver's Retry-After), or, once the schedule is exhausted, failed and sent
to ``goalstream.deadletter`` (``goalstream webhooks replay`` sends it again). A 410
disables the endpoint.

Order: per endpoint and customer, a delivery is sent only once the one before it is done
(delivered or given up), while every other endpoint and customer goes on. The consumer
never waits on a receiver: retry state lives in ClickHouse and in the sender's schedule,
so a restart (or a broker that forgot everything) resumes the retries where they were.
A batch whose deliveries cannot be stored is consumed again from the committed offsets
(``retry.retry``, every second, however long it takes): the consumer never skips one.
Delivery is at least once; a receiver deduplicates on ``webhook-id``, which is the same
on every attempt of a message.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import heapq
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from schemas import codec, metrics, model, registry, topics
from schemas.config import GoalstreamConfig, Webhook
from schemas.kafka import RecordProducer
from schemas.model import Record, from_ms, now_ms, to_ms
from schemas.regulations import Forgotten
from schemas.settings import CommonSettings
from schemas.warehouse import Warehouse

from ..retry import EVERY_SECOND, always, jittered, retry
from ..runtime import Progress
from ..stopping import stop_within
from . import ssrf
from . import signing as webhook_signing

log = logging.getLogger("goalstream.dispatcher")

GROUP = "goalstream-dispatcher"
OBJECTS = {topics.PROPENSITY: "goal-propensity-change", topics.RECOMMENDATIONS: "recommended-next-actions"}
ENDPOINT_HEADER = "goalstream-endpoint"  # on a dead-lettered delivery: replay only to this endpoint
REPLAY_HEADER = "goalstream-replay"
PASS_OVER_S = 1.0  # with no webhook configured, how often the group's offsets move to the ends
USER_AGENT = "traitly"  # the seed's User-Agent for both webhook objects
MAX_RESPONSE_BYTES = 64 * 1024
DELIVERY_COLUMNS = (
    "delivery_id", "workspace", "endpoint_id", "url", "object", "customer_id", "webhook_id", "body",
    "source_topic", "source_partition", "source_offset", "record", "headers", "attempts", "next_attempt_at",
    "status", "last_error", "created_at", "updated_at", "version",
)
ATTEMPT_COLUMNS = (
    "delivery_id", "workspace", "endpoint_id", "url", "webhook_id", "attempt", "attempted_at", "duration_ms",
    "status_code", "outcome", "error", "next_attempt_at",
)
ENDPOINT_COLUMNS = ("endpoint_id", "workspace", "url", "disabled", "reason", "updated_at", "version")


def webhook_id(message_id: str) -> str:
    """``msg_`` + the record's id without dashes: ASCII, no dots, the same on every attempt."""
    return "msg_" + message_id.replace("-", "")


def payload(schema: str, record: dict[str, Any]) -> dict[str, Any]:
    """The Traitly seed's webhook JSON for a decoded record."""
    ts = record["timestamp"]
    seconds = int(ts.timestamp()) if isinstance(ts, datetime) else int(ts) // 1000
    meta = {"customer_id": record["customer_id"], "goal_name": record["goal_name"]}
    if schema == "goalstream.GoalPropensityChange":
        # The seed's one field, then what goalstream adds: where the score came from and why.
        data = {
            "likelihood": record["likelihood"],
            "previous_likelihood": record["previous_likelihood"],
            "model_version": record["model_version"],
            "model_kind": record["model_kind"],
            "drivers": record["drivers"],
        }
        return {"data": [data], "meta": meta, "timestamp": seconds, "object": "goal-propensity-change"}
    return {
        "data": record["actions"],
        "likelihood": record["likelihood"],
        "meta": meta,
        "timestamp": seconds,
        "object": "recommended-next-actions",
    }


def retry_after_seconds(value: str | None, now_s: float | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (now_s if now_s is not None else time.time()))


def next_delay(schedule: list[float], attempts: int, retry_after: float | None, rng: random.Random) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None when exhausted.
    Jitter of +-20% spreads retries out so a recovering receiver is not hit all at once;
    a receiver's Retry-After is a floor, never shortened by jitter."""
    if attempts > len(schedule):
        return None
    delay = jittered(schedule[attempts - 1], 0.2, rng)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay


@dataclass
class Delivery:
    delivery_id: str
    workspace: str
    endpoint_id: str
    url: str
    object: str
    customer_id: str
    webhook_id: str
    body: bytes
    source_topic: str
    source_partition: int
    source_offset: int
    record: bytes
    headers: dict[str, bytes]
    attempts: int = 0
    next_at_ms: int = 0
    status: str = "pending"
    last_error: str = ""
    created_at_ms: int = field(default_factory=now_ms)

    @property
    def queue(self) -> tuple[str, str]:
        return (self.endpoint_id, self.customer_id)

    def row(self) -> list[Any]:
        now = now_ms()
        return [
            self.delivery_id, self.workspace, self.endpoint_id, self.url, self.object, self.customer_id,
            self.webhook_id, self.body, self.source_topic, self.source_partition, self.source_offset,
            self.record, self.headers, self.attempts, from_ms(self.next_at_ms), self.status, self.last_error,
            from_ms(self.created_at_ms), from_ms(now), time.time_ns() // 1000,
        ]

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> "Delivery":
        """From a row whose body, record and header values were selected base64-encoded."""

        def b(v: Any) -> bytes:
            return base64.b64decode(v)

        return cls(
            delivery_id=r["delivery_id"], workspace=r["workspace"], endpoint_id=r["endpoint_id"], url=r["url"],
            object=r["object"], customer_id=r["customer_id"], webhook_id=r["webhook_id"], body=b(r["body"]),
            source_topic=r["source_topic"], source_partition=int(r["source_partition"]),
            source_offset=int(r["source_offset"]), record=b(r["record"]),
            headers={k: b(v) for k, v in (r["headers"] or {}).items()}, attempts=int(r["attempts"]),
            next_at_ms=to_ms(r["next_attempt_at"]), status=r["status"], last_error=r["last_error"],
            created_at_ms=to_ms(r["created_at"]),
        )


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, dispatcher: "Dispatcher"):
        self.dispatcher = dispatcher

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.dispatcher._drop({(tp.topic, tp.partition) for tp in revoked})

    async def on_partitions_assigned(self, assigned: Any) -> None:
        await self.dispatcher._load({(tp.topic, tp.partition) for tp in assigned})


class Dispatcher:
    def __init__(self, settings: CommonSettings, config: GoalstreamConfig, warehouse: Warehouse, *, max_in_flight: int = 64,
                 forgotten: Forgotten | None = None):
        self.settings = settings
        # Nothing about a forgotten person is sent that was made before the request (or at
        # all while it runs, or ever once suppressed): ``_forgotten``. Default: our own list.
        self._own_forgotten = forgotten is None
        self.forgotten = forgotten if forgotten is not None else Forgotten()
        self.config = config
        self.warehouse = warehouse
        self._shared: Warehouse | None = None  # the warehouse given, while ``warehouse`` is our lane
        self.cfg = config.dispatcher
        self.producer = RecordProducer(settings.kafka_bootstrap, idempotence=False)
        # Reads both forms: Confluent-framed values' writer schemas by id from the registry.
        self.registry = registry.Registry.from_settings(settings)
        self.consumer: AIOKafkaConsumer | None = None
        self.session: aiohttp.ClientSession | None = None
        self.queues: dict[tuple[str, str], deque[Delivery]] = {}
        self._heap: list[tuple[int, int, tuple[str, str]]] = []
        self._seq = 0
        self._in_flight: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._sem = asyncio.Semaphore(max_in_flight)
        self._rng = random.Random()
        self._disabled: set[str] = set()
        self._runner: list[asyncio.Task] = []
        self.progress = Progress()
        self.hooks: dict[str, list[Webhook]] = {}
        for w in config.webhooks:
            self.hooks.setdefault(w.workspace, []).append(w)
        self.by_endpoint = {w.endpoint_id: w for w in config.webhooks}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        # A lane of its own: its delivery and attempt inserts never queue the sinks' inserts.
        self._shared, self.warehouse = self.warehouse, await self.warehouse.lane()
        if self._own_forgotten:
            self.forgotten.start(self.warehouse)
        rows = await self.warehouse.rows("SELECT endpoint_id, disabled FROM webhook_endpoints FINAL", {})
        self._disabled = {r["endpoint_id"] for r in rows if int(r["disabled"])}
        await self.producer.start()
        self.session = ssrf.make_session(allow_private=self.cfg.allow_private_targets, timeout_s=self.cfg.timeout_seconds)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            group_id=GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=10_000,
            heartbeat_interval_ms=1_000,
            max_poll_interval_ms=300_000,
        )
        self.consumer.subscribe([topics.PROPENSITY, topics.RECOMMENDATIONS], listener=_Rebalance(self))
        # Joining the group can take seconds (a broker waits for other members); the stack
        # need not wait for it: records stay on the topics until we are in.
        self._runner = [
            asyncio.create_task(self._consume(), name="goalstream-dispatcher-consume"),
            asyncio.create_task(self._send_loop(), name="goalstream-dispatcher-send"),
        ]

    async def stop(self, timeout: float = 20.0) -> None:
        for t in self._runner:
            t.cancel()
        for t in self._runner:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._runner = []
        if self._own_forgotten:
            await self.forgotten.stop()
        if self._tasks:
            # Attempts in flight finish (and record their outcome) within the receiver timeout.
            await asyncio.wait(self._tasks, timeout=timeout)
        if self.consumer is not None:
            await stop_within("the dispatcher's consumer", self.consumer.stop(), min(10.0, timeout))
            self.consumer = None
        if self.session is not None:
            await self.session.close()
            self.session = None
        if self.registry is not None:
            await self.registry.close()
        await stop_within("the dispatcher's producer", self.producer.stop(), min(10.0, timeout))
        if self._shared is not None:
            lane, self.warehouse, self._shared = self.warehouse, self._shared, None
            await stop_within("the dispatcher's ClickHouse client", lane.close(), min(10.0, timeout))

    @property
    def published(self) -> dict[tuple[str, int], int]:
        """What its producer has had acknowledged (dead-lettered deliveries), per partition."""
        return self.producer.acked

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        # With no webhook configured nothing will ever be delivered: nothing to wait for.
        return not self.hooks or self.progress.caught_up(ends)

    async def wait_caught_up(self, ends: dict[tuple[str, int], int], timeout: float) -> bool:
        return not self.hooks or await self.progress.wait_caught_up(ends, timeout)

    # -- consuming ---------------------------------------------------------------------

    async def _consume(self) -> None:
        assert self.consumer is not None
        # Neither loop may skip work, so every error is retried (a bug with its traceback).
        await retry(self.consumer.start, what="dispatcher: reaching Kafka", backoff=EVERY_SECOND, retriable=always, logger=log)
        while True:
            await retry(self._consume_batch, what="dispatcher: storing a batch of deliveries", backoff=EVERY_SECOND,
                        retriable=always, before_retry=self._rewind, logger=log)

    async def _consume_batch(self) -> None:
        assert self.consumer is not None
        if not self.hooks:
            await self._pass_over()
            return
        batch = await self.consumer.getmany(timeout_ms=500, max_records=1000)
        if not batch:
            return
        messages = [m for msgs in batch.values() for m in msgs]
        await self._accept(messages)
        # Only now, with every delivery stored, do the offsets move on.
        await self.consumer.commit({tp: msgs[-1].offset + 1 for tp, msgs in batch.items() if msgs})
        self.progress.advance(messages)

    async def _pass_over(self) -> None:
        """No webhook is configured (the config is fixed for the process's life): nothing on
        the topics can be delivered, so nothing is fetched or decoded (at 5k scored customers
        a second that was 10k records/s, ~14% of the embedded stack's loop). The group's
        offsets still move to the topics' ends, so a webhook configured later starts from
        then, as it would have had every record been read and passed over."""
        assert self.consumer is not None
        await asyncio.sleep(PASS_OVER_S)
        tps = list(self.consumer.assignment())
        if not tps:
            return
        ends = {tp: off for tp, off in (await self.consumer.end_offsets(tps)).items() if off > 0}
        if ends:
            await self.consumer.commit(ends)
            for tp, off in ends.items():
                key = (tp.topic, tp.partition)
                self.progress.offsets[key] = max(off - 1, self.progress.offsets.get(key, -1))

    async def _rewind(self) -> None:
        """After a failed batch, start again from the last committed offsets (nothing skipped)."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            committed = await self.consumer.committed(tp)
            if committed is not None:
                self.consumer.seek(tp, committed)
            else:
                await self.consumer.seek_to_beginning(tp)

    def _may_deliver(self, key: bytes | None, headers: dict[str, bytes]) -> bool:
        """False when the record's workspace (its key: ``workspace:customer_id``) has no
        webhook and its headers name a schema we have: nothing to deliver, and decoding it
        would be most of this loop's time. Anything else is decoded (and dead-lettered if bad)."""
        parts = model.key_parts(key)
        if parts is None or self.hooks.get(parts[0]):
            return True
        try:
            codec.schema_of(headers.items())
        except codec.SchemaError:
            return True
        return False

    async def _accept(self, messages: list[Any]) -> None:
        await self.forgotten.ready(self.warehouse)
        new: list[Delivery] = []
        letters: list[Record] = []
        for m in messages:
            headers = {k: v for k, v in (m.headers or ())}
            if not self._may_deliver(m.key, headers):
                continue
            try:
                schema, record = await registry.decode(m.value or b"", headers, self.registry)
            except codec.SchemaError as exc:
                letters.append(self._letter(m.topic, m.partition, m.offset, m.key, m.value, headers, str(exc)))
                continue
            if self._forgotten(record["workspace"], record.get("customer_id", ""), m.timestamp):
                continue
            only = headers.get(ENDPOINT_HEADER, b"").decode() or None
            replay = headers.get(REPLAY_HEADER, b"").decode()
            body = orjson.dumps(payload(schema, record))
            for hook in self.hooks.get(record["workspace"], []):
                if OBJECTS.get(m.topic) not in hook.objects or (only and hook.endpoint_id != only):
                    continue
                did = f"{hook.endpoint_id}:{record['message_id']}" + (f":{replay}" if replay else "")
                new.append(
                    Delivery(
                        delivery_id=did, workspace=record["workspace"], endpoint_id=hook.endpoint_id, url=hook.url,
                        object=OBJECTS[m.topic], customer_id=record["customer_id"], webhook_id=webhook_id(record["message_id"]),
                        body=body, source_topic=m.topic, source_partition=m.partition, source_offset=m.offset,
                        record=m.value or b"", headers=headers, next_at_ms=now_ms(),
                    )
                )
                if only and hook.endpoint_id in self._disabled:
                    await self._set_disabled(hook, False, "re-enabled by a replay")
        if letters:
            await self.producer.publish(letters)
        if not new:
            return
        # A batch consumed again after a crash must not reset or resend what is stored.
        known = await self.warehouse.rows(
            "SELECT delivery_id FROM webhook_deliveries WHERE delivery_id IN {ids:Array(String)}",
            {"ids": [d.delivery_id for d in new]},
        )
        seen = {r["delivery_id"] for r in known} | {d.delivery_id for q in self.queues.values() for d in q}
        fresh = [d for d in new if d.delivery_id not in seen]
        if not fresh:
            return
        token = "deliveries-" + hashlib.blake2b("|".join(d.delivery_id for d in fresh).encode(), digest_size=16).hexdigest()
        await self.warehouse.insert("webhook_deliveries", [d.row() for d in fresh], DELIVERY_COLUMNS, token)
        for d in fresh:
            self._enqueue(d)

    def _letter(self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None, headers: dict[str, bytes], reason: str) -> Record:
        return model.dead_letter(
            reason=reason, stage="dispatcher", key=key, value=value, headers=headers,
            source_topic=topic, source_partition=partition, source_offset=offset,
        )

    async def _load(self, assigned: set[tuple[str, int]]) -> None:
        """Pending deliveries of the partitions we now own, from ClickHouse, in order."""
        if not assigned:
            return
        # Bytes columns come back base64-encoded: a String read as text would not survive
        # a non-UTF-8 Avro record, or be re-encoded differently from what was signed.
        binary = {"body", "record"}
        cols = [f"base64Encode({c}) AS {c}" if c in binary else c for c in DELIVERY_COLUMNS]
        cols[DELIVERY_COLUMNS.index("headers")] = "mapApply((k, v) -> (k, base64Encode(v)), headers) AS headers"
        rows = await self.warehouse.rows(
            f"SELECT {', '.join(cols)} FROM webhook_deliveries FINAL WHERE status = 'pending' "
            "AND (source_topic, source_partition) IN {tps:Array(Tuple(String, Int32))} "
            "ORDER BY created_at, source_partition, source_offset",
            {"tps": sorted(assigned)},
        )
        known = {d.delivery_id for q in self.queues.values() for d in q}
        for r in rows:
            if r["delivery_id"] not in known:
                self._enqueue(Delivery.from_row(r))
        if rows:
            log.info("dispatcher resumed %d pending deliveries", len(rows))

    def _drop(self, revoked: set[tuple[str, int]]) -> None:
        for key, q in list(self.queues.items()):
            kept = deque(d for d in q if (d.source_topic, d.source_partition) not in revoked or key in self._in_flight)
            if kept:
                self.queues[key] = kept
            else:
                del self.queues[key]

    # -- sending -----------------------------------------------------------------------

    def _enqueue(self, d: Delivery) -> None:
        q = self.queues.setdefault(d.queue, deque())
        q.append(d)
        if len(q) == 1:
            self._schedule(d)

    def _schedule(self, d: Delivery) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (d.next_at_ms, self._seq, d.queue))
        self._wake.set()

    async def _send_loop(self) -> None:
        while True:
            now = now_ms()
            while self._heap and self._heap[0][0] <= now:
                _, _, key = heapq.heappop(self._heap)
                q = self.queues.get(key)
                if not q or key in self._in_flight or q[0].next_at_ms > now:
                    continue
                self._in_flight.add(key)
                task = asyncio.create_task(self._attempt(q[0]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            self._wake.clear()
            delay = (self._heap[0][0] - now) / 1000 if self._heap else 1.0
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.01, min(delay, 1.0)))
            except asyncio.TimeoutError:
                pass

    async def _attempt(self, d: Delivery) -> None:
        try:
            async with self._sem:
                await self._attempt_once(d)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Bookkeeping failed (ClickHouse down?): try this delivery again shortly, in order.
            log.exception("dispatcher could not record an attempt of %s; it stays pending", d.delivery_id)
            d.next_at_ms = now_ms() + 5_000
            self._in_flight.discard(d.queue)
            self._schedule(d)

    def _forgotten(self, workspace: str, customer_id: str, made_ms: int | None) -> bool:
        if not self.forgotten.any or not self.forgotten.holds(workspace, (customer_id,), made_ms):
            return False
        metrics.FORGOTTEN_RECORDS.labels("dispatcher").inc()
        return True

    async def _attempt_once(self, d: Delivery) -> None:
        await self.forgotten.ready(self.warehouse)
        if self._forgotten(d.workspace, d.customer_id, d.created_at_ms):
            # Not sent, not saved: the regulation's sweep removes the delivery and its attempts.
            self._done(d)
            return
        hook = self.by_endpoint.get(d.endpoint_id)
        started = now_ms()
        status: int | None = None
        retry_after: float | None = None
        error = ""
        if hook is None:
            outcome, error = "failed", "the webhook is no longer configured"
        elif d.endpoint_id in self._disabled:
            outcome, error = "failed", "the endpoint is disabled (it answered 410 Gone)"
        else:
            outcome, status, retry_after, error = await self._post(hook, d)
        d.attempts += 1
        attempt_no = d.attempts
        metrics.WEBHOOK_ATTEMPTS.labels(outcome).inc()
        next_at: int | None = None
        if outcome == "retry":
            delay = next_delay(self.cfg.retry_schedule_seconds, d.attempts, retry_after, self._rng)
            if delay is None:
                outcome, error = "failed", f"gave up after {d.attempts} attempts; last: {error}"
            else:
                next_at = now_ms() + int(delay * 1000)
        if outcome == "disabled" and hook is not None:
            await self._set_disabled(hook, True, f"answered 410 Gone at {datetime.now(timezone.utc).isoformat()}")
        await self.warehouse.insert(
            "webhook_attempts",
            [[d.delivery_id, d.workspace, d.endpoint_id, d.url, d.webhook_id, attempt_no, from_ms(started),
              float(now_ms() - started), status, outcome, error[:2000], from_ms(next_at) if next_at else None]],
            ATTEMPT_COLUMNS,
            None,
        )
        d.last_error = error[:2000]
        if outcome == "retry":
            d.next_at_ms = next_at or now_ms()
            await self._save(d)
            self._in_flight.discard(d.queue)
            self._schedule(d)
            return
        if outcome in ("failed", "disabled", "refused"):
            d.status = "failed"
            await self.producer.publish([self._dead(d)])
        else:
            d.status = "delivered"
        await self._save(d)
        self._done(d)

    def _dead(self, d: Delivery) -> Record:
        # The source record byte for byte, with the endpoint it was for: a replay of this
        # dead letter goes back through the dispatcher to this endpoint only.
        headers = {**d.headers, ENDPOINT_HEADER: d.endpoint_id.encode()}
        reason = f"webhook to {d.url} failed: {d.last_error}"
        return self._letter(d.source_topic, d.source_partition, d.source_offset, model.partition_key(d.workspace, d.customer_id), d.record, headers, reason)

    async def _save(self, d: Delivery) -> None:
        await self.warehouse.insert("webhook_deliveries", [d.row()], DELIVERY_COLUMNS, None)

    def _done(self, d: Delivery) -> None:
        q = self.queues.get(d.queue)
        if q and q[0] is d:
            q.popleft()
        self._in_flight.discard(d.queue)
        if q:
            q[0].next_at_ms = max(q[0].next_at_ms, now_ms()) if q[0].attempts else now_ms()
            self._schedule(q[0])
        elif q is not None:
            del self.queues[d.queue]

    async def _set_disabled(self, hook: Webhook, disabled: bool, reason: str) -> None:
        (self._disabled.add if disabled else self._disabled.discard)(hook.endpoint_id)
        await self.warehouse.insert(
            "webhook_endpoints",
            [[hook.endpoint_id, hook.workspace, hook.url, 1 if disabled else 0, reason, from_ms(now_ms()), time.time_ns() // 1000]],
            ENDPOINT_COLUMNS,
            None,
        )
        log.warning("webhook %s %s: %s", hook.url, "disabled" if disabled else "enabled", reason)

    async def _post(self, hook: Webhook, d: Delivery) -> tuple[str, int | None, float | None, str]:
        """One attempt: (outcome, status, retry_after, error). Only 2xx is success;
        redirects are not followed (a 3xx is a failure like any other)."""
        assert self.session is not None
        ts = int(time.time())
        headers = {
            **webhook_signing.headers(hook.secrets(), d.webhook_id, ts, d.body),
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            "Content-Type": "application/json",
        }
        try:
            # The session's connector checks the target (names after resolving, literals
            # as they are) before any connection, and connects only to what it checked.
            async with self.session.post(hook.url, data=d.body, headers=headers, allow_redirects=False) as resp:
                await resp.content.read(MAX_RESPONSE_BYTES)  # read a little, never a whole huge body
                status = resp.status
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
        except asyncio.TimeoutError:
            return "retry", None, None, f"timed out after {self.cfg.timeout_seconds:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            if (refused := ssrf.refusal(exc)) is not None:
                return "refused", None, None, f"target refused: {refused}"
            return "retry", None, None, f"{type(exc).__name__}: {exc}"
        if 200 <= status < 300:
            return "delivered", status, None, ""
        if status == 410:
            return "disabled", status, None, "410 Gone: the endpoint is disabled"
        return "retry", status, retry_after, f"HTTP {status}"
