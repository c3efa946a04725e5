"""The batch runtime: one topic's batches from Kafka through a Sink into ClickHouse.

Flow, for every batch a source yields (``BatchRuntime.run``; the order is written once,
in ``process``): decode each message with the writer's schema named in its headers ->
what does not decode, or is not what the topic carries, to ``goalstream.deadletter``
(stage = this runtime's stage name) -> the decoded ``Item``s to the ``Sink`` (retried,
or isolated record by record) -> drain progress -> the next batch is asked for, which is
what commits this one.

The runtime knows nothing of tables; a ``Sink`` knows nothing of Kafka offsets, retries or
dead letters (``sinks`` holds one per table, ``ListSink`` serves tests). ``Progress``
records the highest offset handled per partition, for draining (``caught_up``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterable, Awaitable, Callable, Collection, NamedTuple, Protocol, Sequence

from schemas import codec, model, topics
from schemas.kafka import RecordProducer

from . import errors
from .errors import BadRecord
from .retry import EVERY_SECOND, STANDARD, Backoff, retry

log = logging.getLogger("goalstream.processors")

# After this many failed tries of a batch, with ClickHouse answering pings, it is split so
# one bad row cannot block the rest; a record it refuses this many times is dead-lettered.
ISOLATE_AFTER = 5
REFUSALS = 3
# Record by record: 0.5 s, then 1 s between tries (and while ClickHouse is down again).
RECORD_BACKOFF = Backoff(first=0.5, factor=2.0, cap=1.0)


class Message(Protocol):
    """What a batch is made of: a Kafka message as faust's ``event.message`` has it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Any  # a list of (name, bytes) pairs, or a dict


class Item(NamedTuple):
    """One decoded message: the message itself, its writer's schema name and the record."""

    message: Any
    schema: str
    record: dict[str, Any]


class Sink(Protocol):
    """One table's writer (quix-streams' ``BatchingSink.write``). ``write`` stores the whole
    batch or raises; it is called again with the same batch (a retry) or with one item of
    it (isolation), so a repeated write must store nothing twice."""

    async def write(self, batch: Sequence[Item]) -> None: ...


class RawSink(Sink, Protocol):
    """A Sink that can also store messages as they came from Kafka, undecoded (the events
    sink: ClickHouse decodes the Avro itself). ``write_raw`` gets messages whose headers name
    one of the runtime's schemas; it stores them all or raises, and any error sends the batch
    down the decoding path (``write``), which dead-letters what does not decode."""

    async def write_raw(self, batch: Sequence[tuple[Any, codec.Schema]]) -> None: ...


class ListSink:
    """A Sink that keeps what it is given, for tests; ``fail`` raises instead, while set."""

    def __init__(self) -> None:
        self.batches: list[list[Item]] = []
        self.fail: Callable[[Sequence[Item]], BaseException | None] | None = None

    @property
    def items(self) -> list[Item]:
        return [i for b in self.batches for i in b]

    async def write(self, batch: Sequence[Item]) -> None:
        if self.fail is not None and (exc := self.fail(batch)) is not None:
            raise exc
        self.batches.append(list(batch))


def headers_of(message: Any) -> Sequence[tuple[str, bytes]]:
    # aiokafka's are a tuple: handed on as it is (no copy; ``codec.schema_of`` remembers tuples).
    h = message.headers or ()
    if type(h) is tuple:
        return h
    return list(h.items()) if isinstance(h, dict) else list(h)


class Progress:
    """The highest offset handled per (topic, partition): what a drain waits on."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def advance(self, messages: Sequence[Any]) -> None:
        for m in messages:
            key = (m.topic, m.partition)
            if m.offset > self.offsets.get(key, -1):
                self.offsets[key] = m.offset

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        """Every partition handled up to its end offset (one past its last record)."""
        return all(end == 0 or self.offsets.get(tp, -1) >= end - 1 for tp, end in ends.items())

    async def wait_caught_up(self, ends: dict[tuple[str, int], int], timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.caught_up(ends):
            if loop.time() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def __repr__(self) -> str:
        return repr(self.offsets)


class DeadLetters(Protocol):
    async def publish(self, message: Any, reason: str, stage: str) -> None: ...


class DeadLetterTopic:
    """Dead letters onto ``goalstream.deadletter``, each acknowledged by the broker before
    ``publish`` returns (the producer is flushed for it)."""

    def __init__(self, producer: RecordProducer):
        self.producer = producer

    async def publish(self, message: Any, reason: str, stage: str) -> None:
        log.warning("dead-lettering %s/%s@%s: %s", message.topic, message.partition, message.offset, reason)
        record = model.dead_letter(
            reason=reason, stage=stage, key=message.key, value=message.value, headers=dict(headers_of(message)),
            source_topic=message.topic, source_partition=message.partition, source_offset=message.offset,
        )
        # Until the broker takes it: not acknowledging the source message is the only safe choice.
        await retry(
            lambda: self.producer.publish([record]), what=f"writing to {topics.DEADLETTER}", backoff=EVERY_SECOND, level=logging.ERROR
        )


class BatchRuntime:
    """One topic's batches into one Sink.

    ``letters`` None makes this the end of the line (the dead-letter topic's own runtime):
    ``rescue(message, reason)`` turns what does not decode into an Item for the sink, and
    a batch ClickHouse refuses is retried until it is stored, never split."""

    def __init__(
        self,
        stage: str,
        expected: Collection[str],
        sink: Sink,
        *,
        letters: DeadLetters | None,
        is_up: Callable[[], Awaitable[bool]],
        progress: Progress,
        rescue: Callable[[Any, str], Item] | None = None,
        backoff: Backoff = STANDARD,
        record_backoff: Backoff = RECORD_BACKOFF,
        logical: bool = True,
    ):
        if letters is None and rescue is None:
            raise ValueError("a runtime without dead letters needs a rescue")
        self.stage = stage
        self.expected = frozenset(expected)
        self.sink = sink
        self.letters = letters
        self.is_up = is_up
        self.progress = progress
        self.rescue = rescue
        self.backoff = backoff
        self.record_backoff = record_backoff
        self.logical = logical  # False: the sink takes timestamps as int ms (cheaper to decode)
        # The undecoded first try, for a sink that takes raw messages (not at the end of the line).
        self.raw = getattr(sink, "write_raw", None) if letters is not None else None

    async def run(self, batches: AsyncIterable[Sequence[Any]]) -> None:
        async for batch in batches:
            await self.process(batch)

    async def process(self, batch: Sequence[Any]) -> None:
        """One batch, in the one order that keeps every message somewhere:

        1. decode with the writer's schema; what fails is dead-lettered now, and the
           broker has acknowledged each dead letter before the next step (producer flushed);
        2. the sink stores the decoded items (sinks flushed): retried while the error is
           retriable, isolated record by record when ClickHouse answers but keeps refusing.
           A sink that scores publishes the scores before storing them, inside ``write``;
        3. drain progress moves past the batch;
        4. commit: only by returning. The source acknowledges a batch when it is asked for
           the next one (faust's ``take_events`` acks on resume, and faust commits acked
           offsets), so nothing is committed that a sink did not store.
        """
        todo: Sequence[Any] = batch
        if self.raw is not None:
            todo = await self._try_raw(batch)
        items: list[Item] = []
        for message in todo:
            try:
                items.append(self._decode(message))
            except BadRecord as exc:
                if self.letters is None:
                    assert self.rescue is not None
                    items.append(self.rescue(message, exc.message))
                else:
                    await self.letters.publish(message, exc.message, self.stage)
        if items:
            await self._store(items)
        self.progress.advance(batch)

    async def _try_raw(self, batch: Sequence[Any]) -> Sequence[Any]:
        """Step 2 without decoding, tried once: what is left to decode (nothing, if it worked).

        Messages whose headers are wrong for this topic are dead-lettered first, as in step 1.
        Any error (a record ClickHouse cannot read, ClickHouse away) sends the rest down the
        decoding path, which dead-letters what does not decode and retries the rest; the two
        paths use the same deduplication token, so a raw insert that did land is not doubled."""
        assert self.letters is not None and self.raw is not None
        wanted: list[tuple[Any, codec.Schema]] = []
        for message in batch:
            try:
                wanted.append((message, self._schema(message)))
            except BadRecord as exc:
                await self.letters.publish(message, exc.message, self.stage)
        if not wanted:
            return ()
        try:
            await self.raw(wanted)
            return ()
        except errors.KNOWN as exc:
            log.info("%s: a raw batch of %d was not stored (%s); decoding it", self.stage, len(wanted), exc)
            return [m for m, _ in wanted]

    def _schema(self, message: Any) -> codec.Schema:
        if message.value is None:
            raise BadRecord("message has no value")
        try:
            schema = codec.schema_of(headers_of(message))
        except codec.SchemaError as exc:
            raise BadRecord(str(exc)) from None
        if schema.name not in self.expected:
            raise BadRecord(f"{schema.name} does not belong on {message.topic}")
        return schema

    def _decode(self, message: Any) -> Item:
        schema = self._schema(message)
        try:
            record = codec.decode_as(schema, message.value, logical=self.logical)
        except codec.SchemaError as exc:
            raise BadRecord(str(exc)) from None
        return Item(message, schema.name, record)

    async def _store(self, items: list[Item]) -> None:
        """Store until it works. A ClickHouse that is down is waited for, however long;
        only one that answers pings but keeps refusing the batch gets it split, so that the
        rows it refuses are dead-lettered and the rest are stored. A non-retriable error
        splits it at once."""

        async def keeps_refusing(failures: int, exc: BaseException) -> bool:
            return self.letters is not None and failures >= ISOLATE_AFTER and await self.is_up()

        try:
            await retry(lambda: self.sink.write(items), what=f"{self.stage}: storing a batch of {len(items)}",
                        backoff=self.backoff, give_up=keeps_refusing, logger=log)
            return
        except errors.KNOWN as exc:
            if self.letters is None:
                raise  # nowhere further to send it
            log.error("%s: a batch of %d was refused (%s); storing it record by record", self.stage, len(items), exc)
        for item in items:
            await self._store_one(item)

    async def _store_one(self, item: Item) -> None:
        refusals = 0

        async def refused_enough(failures: int, exc: BaseException) -> bool:
            nonlocal refusals
            if not await self.is_up():
                return False  # down again: wait, this record is not at fault
            refusals += 1
            return refusals >= REFUSALS

        try:
            await retry(lambda: self.sink.write([item]), what=f"{self.stage}: storing one record",
                        backoff=self.record_backoff, give_up=refused_enough, logger=log)
        except errors.KNOWN as exc:
            assert self.letters is not None
            await self.letters.publish(item.message, f"ClickHouse refused the record: {exc}", self.stage)
