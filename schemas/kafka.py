"""Kafka plumbing shared by the gateway and the processors: topics and the Avro producer.

``RecordProducer`` turns canonical ``Record``s into Avro messages (schema name and
version in the headers, key ``workspace:customer_id``) and returns only once the broker
acknowledged every one (``acks="all"``). Idempotence is asked for; a broker that refuses
to hand out producer ids (some Kafka-compatible brokers do) gets a plain ``acks="all"``
producer instead, with a warning: duplicates from producer retries are then collapsed
downstream by ``message_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Iterable, Iterator, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, TopicAlreadyExistsError

from . import codec, topics
from .model import Record

log = logging.getLogger("goalstream.kafka")


class KafkaUnavailable(Exception):
    """The broker did not acknowledge in time; retriable."""

    retriable = True


# The producer's max_request_size: the largest record (value, key and headers) it sends.
MAX_REQUEST_BYTES = 8 * 1024 * 1024
# What a record's own bytes may take of it: aiokafka adds a record-batch header (61 bytes)
# and per-record framing, so a little is left for them.
MAX_RECORD_BYTES = MAX_REQUEST_BYTES - 4096


PARTITION_CACHE = 200_000  # keys whose partition ``send_encoded(batched=True)`` remembers


class RecordTooLarge(Exception):
    """One record is larger than a Kafka message may be (ours, or the broker's limit):
    permanent, sending it again cannot succeed. Nothing of the call was sent."""

    retriable = False

    def __init__(self, message: str, size: int | None = None, limit: int = MAX_RECORD_BYTES):
        super().__init__(message)
        self.size, self.limit = size, limit


async def ensure_topics(bootstrap: str, partitions: int, replication: int = 1, names: Iterable[str] = topics.ALL) -> None:
    """Create goalstream's topics if they are missing (idempotent)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, replication) for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process created them between our list and create
            log.info("created topics %s", ", ".join(t.name for t in missing))
    finally:
        await admin.close()


async def end_offsets(bootstrap: str, names: Sequence[str]) -> dict[tuple[str, int], int]:
    """The current end offset of every partition of ``names``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = []
        for name in names:
            for p in consumer.partitions_for_topic(name) or await _partitions(consumer, name):
                tps.append(TopicPartition(name, p))
        ends = await true_end_offsets(consumer, tps)
        return {(tp.topic, tp.partition): off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def true_end_offsets(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
    """End offsets (one past the last record), checked by reading the last record.

    Some Kafka-compatible brokers (tansu 0.6 measured here) answer ListOffsets after a
    multi-record batch with the batch's base offset + 1, not its last offset + 1. Trusting
    that would end a drain before the rest of the batch was stored, so the record batch at
    the reported end - 1 is fetched and its highest offset counts. On Apache Kafka the
    fetch returns exactly the last record and changes nothing. ``consumer`` must not be
    subscribed; its assignment is replaced.
    """
    ends = await consumer.end_offsets(list(tps))
    probe = [tp for tp in tps if ends[tp] > 0]
    if not probe:
        return dict(ends)
    consumer.assign(probe)
    for tp in probe:
        consumer.seek(tp, ends[tp] - 1)
    pending, out = set(probe), dict(ends)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while pending and loop.time() < deadline:
        batch = await consumer.getmany(*pending, timeout_ms=500)
        for tp, msgs in batch.items():
            if msgs:
                out[tp] = max(out[tp], msgs[-1].offset + 1)
                pending.discard(tp)
    # A partition that returned nothing (its last offset is a control record) keeps the reported end.
    return out


async def _partitions(consumer: AIOKafkaConsumer, name: str) -> set[int]:
    await consumer._client.force_metadata_update()  # no public call fetches one topic's metadata
    return consumer.partitions_for_topic(name) or set()


def encode_records(records: Sequence[Record]) -> list[tuple[Record, bytes, Sequence[tuple[str, bytes]]]]:
    """Each record Avro-encoded with its headers, every size checked before any is sent:
    one record too large for a Kafka message (``RecordTooLarge``) refuses them all. Shared
    by ``RecordProducer.publish`` and the tests' in-memory producer, so both refuse alike."""
    encoded = [(r, *codec.encode(r.schema, r.value)) for r in records]
    for i, (r, value, headers) in enumerate(encoded):
        size = len(value) + len(r.key) + sum(len(k) + len(v) for k, v in headers)
        if size > MAX_RECORD_BYTES:
            raise RecordTooLarge(f"record {i} is {size} bytes encoded; at most {MAX_RECORD_BYTES} fit in one Kafka message", size)
    return encoded


class _DropInitProducerIdError(logging.Filter):
    """aiokafka's sender logs ``ERROR Unexpected error during InitProducerIdRequest`` when
    the broker refuses idempotence (the embedded one does), before ``start`` raises and
    ``RecordProducer`` falls back with its own WARNING. That one message, while a probe is
    running, is the expected answer, not an error: it is dropped; anything else passes."""

    def __init__(self) -> None:
        super().__init__()
        self.probes = 0

    def filter(self, record: logging.LogRecord) -> bool:
        return not (self.probes > 0 and isinstance(record.msg, str) and record.msg.startswith("Unexpected error during InitProducerIdRequest"))


_INIT_PRODUCER_ID_FILTER = _DropInitProducerIdError()
logging.getLogger("aiokafka.producer.sender").addFilter(_INIT_PRODUCER_ID_FILTER)


@contextlib.contextmanager
def _expected_init_producer_id_error() -> Iterator[None]:
    _INIT_PRODUCER_ID_FILTER.probes += 1
    try:
        yield
    finally:
        _INIT_PRODUCER_ID_FILTER.probes -= 1


class RecordProducer:
    def __init__(self, bootstrap: str, *, idempotence: bool = True, timeout_s: float = 15.0, linger_ms: int = 1,
                 registry: Any = None):
        self.bootstrap = bootstrap
        self.registry = registry  # a schemas.registry.Registry: Confluent wire format on its topics
        self.idempotence = idempotence
        self.timeout_s = timeout_s
        self.linger_ms = linger_ms
        self._producer: AIOKafkaProducer | None = None
        # The highest offset the broker acknowledged per (topic, partition): what a drain or
        # the embedded stack's spool waits to see stored downstream.
        self.acked: dict[tuple[str, int], int] = {}
        self._partition_of: dict[tuple[bytes, int], int] = {}  # (key, partition count) -> partition

    def _note(self, results: Sequence[Any]) -> dict[tuple[str, int], int]:
        """Fold acknowledgements (RecordMetadata) into ``acked``; their own highest per partition."""
        top: dict[tuple[str, int], int] = {}
        for md in results:
            tp = (md.topic, md.partition)
            if md.offset > top.get(tp, -1):
                top[tp] = md.offset
        acked = self.acked
        for tp, off in top.items():
            if off > acked.get(tp, -1):
                acked[tp] = off
        return top

    def _make(self, idempotent: bool) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=idempotent,
            linger_ms=self.linger_ms,
            request_timeout_ms=int(self.timeout_s * 1000),
            max_batch_size=1024 * 1024,
            max_request_size=MAX_REQUEST_BYTES,
        )

    async def start(self) -> None:
        if self.registry is not None:
            await self.registry.start()  # before the broker: a registry refusal stops the start, said once
        if self.idempotence:
            producer = self._make(True)
            try:
                with _expected_init_producer_id_error():
                    await producer.start()
                self._producer = producer
                return
            except KafkaError as exc:
                await producer.stop()
                log.warning(
                    "broker refused an idempotent producer (%r); using acks=all without idempotence, "
                    "duplicates from retries are collapsed downstream by message_id",
                    exc,
                )
                self.idempotence = False
        producer = self._make(False)
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self.registry is not None:
            await self.registry.close()
        producer = self._producer
        if producer is not None:
            await producer.stop()  # flushes what is buffered
            # Only now: a stop that overran (a dead broker) can still be ``abort``ed.
            self._producer = None

    async def abort(self) -> None:
        """Close at once, failing what is buffered instead of delivering it: for a broker
        that died. aiokafka's ``stop`` flushes first, and a flush a dead broker never answers
        leaves its sender running, to deliver the old batches to the next broker that comes
        up on the port, after (and out of order with) the spool's re-send. So the sender is
        cancelled first, then the buffered batches failed, then the connections closed
        (aiokafka has no public abort; these are the steps of its ``stop`` minus the flush)."""
        producer, self._producer = self._producer, None
        if producer is None:
            return
        producer._closed = True
        if producer._sender is not None:
            await producer._sender.close()
        producer._message_accumulator.fail_all(KafkaUnavailable("the producer was aborted: the broker is gone"))
        await producer.client.close()

    async def flush(self) -> None:
        if self._producer is not None:
            await self._producer.flush()

    async def publish(self, records: Sequence[Record], batched: bool = False) -> dict[tuple[str, int], int]:
        """Send every record and wait for the broker's acknowledgement of all of them;
        returns the highest acknowledged offset per (topic, partition).

        Every record is encoded and its size checked before the first is sent, so a record
        too large for Kafka (``RecordTooLarge``, permanent) refuses the call whole.
        ``batched``: see ``send_encoded``."""
        encoded = encode_records(records)
        if self.registry is not None:  # Confluent mode: the output topics' values framed (schemas/registry.py)
            frame = self.registry.frame_value
            return await self.send_encoded([(r.topic, r.key, *frame(r.topic, value, headers)) for r, value, headers in encoded], batched)
        return await self.send_encoded([(r.topic, r.key, value, headers) for r, value, headers in encoded], batched)

    async def send_encoded(
        self, entries: Sequence[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]], batched: bool = False
    ) -> dict[tuple[str, int], int]:
        """Send already-encoded (topic, key, value, headers) in order and wait for every
        acknowledgement; returns the highest acknowledged offset per (topic, partition).

        ``batched``: one record batch per partition instead of a ``send`` per record, for a
        caller that sends one call at a time (the spool's relay, the scorer). aiokafka's
        ``send_batch`` waits for the partition's previous batch to be drained, and its wait
        loop miscounts its timeout, so many concurrent callers time out: the request path,
        with up to hundreds of concurrent publishes, keeps ``send``."""
        if self._producer is None:
            raise KafkaUnavailable("producer is not running")
        send = self._producer.send
        try:
            if batched:
                return await asyncio.wait_for(self._send_batches(entries), self.timeout_s)
            futures = [await send(topic, value, key=key, headers=list(headers)) for topic, key, value, headers in entries]
            return self._note(await asyncio.wait_for(asyncio.gather(*futures), self.timeout_s))
        except MessageSizeTooLargeError as exc:
            # The broker's own limit (message.max.bytes) is lower than ours: as permanent.
            raise RecordTooLarge(f"the broker refused a record as too large: {exc!r}") from exc
        except (KafkaError, asyncio.TimeoutError) as exc:
            raise KafkaUnavailable(f"broker did not acknowledge: {exc!r}") from exc

    async def _send_batches(self, entries: Sequence[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]]) -> dict[tuple[str, int], int]:
        """Per record only an append to its partition's batch (``send`` looks up metadata,
        partitions and makes a future for each: ~25 us a record, a third of the embedded
        stack's loop at 5k events/s with goals). Partitions come from the producer's own
        partitioner on the key, so a customer's records land where ``send`` would put them,
        in order (aiokafka has one batch per partition in flight)."""
        producer = self._producer
        assert producer is not None
        partitioner = producer._partitioner
        cache = self._partition_of
        if len(cache) > PARTITION_CACHE:
            cache.clear()
        partitions: dict[str, list[int]] = {}
        open_: dict[tuple[str, int], Any] = {}
        sent: list[tuple[Any, int]] = []  # (future, records) in send order
        for topic, key, value, headers in entries:
            parts = partitions.get(topic)
            if parts is None:
                parts = partitions[topic] = sorted(await producer.partitions_for(topic))
            # The default partitioner is murmur2 in Python (~4 us); a key keeps its partition
            # while the topic keeps its partition count. A keyless record is spread anew.
            ck = (key, len(parts))
            partition = cache.get(ck) if key is not None else None
            if partition is None:
                partition = partitioner(key, parts, parts)
                if key is not None:
                    cache[ck] = partition
            tp = (topic, partition)
            batch = open_.get(tp)
            if batch is None:
                batch = open_[tp] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
                if batch.record_count():
                    sent.append((await producer.send_batch(batch, topic, partition=partition), batch.record_count()))
                batch = open_[tp] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
                    # Larger than a batch by itself: the broker decides whether it fits.
                    del open_[tp]
                    sent.append((await producer.send(topic, value, key=key, partition=partition, headers=list(headers)), 1))
        for (topic, partition), batch in open_.items():
            if batch.record_count():
                sent.append((await producer.send_batch(batch, topic, partition=partition), batch.record_count()))
        done = await asyncio.gather(*(f for f, _ in sent))
        # A batch's metadata carries its base offset: its last record is base + count - 1.
        return self._note([md._replace(offset=md.offset + n - 1) for md, (_, n) in zip(done, sent)])

    async def send_raw(self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> None:
        if self._producer is None:
            raise KafkaUnavailable("producer is not running")
        try:
            fut = await self._producer.send(topic, value, key=key, headers=list(headers))
            await asyncio.wait_for(fut, self.timeout_s)
        except (KafkaError, asyncio.TimeoutError) as exc:
            raise KafkaUnavailable(f"broker did not acknowledge: {exc!r}") from exc
