"""The embedded stack's record sink: a 2xx means the records are on disk, not only in a broker
that keeps everything in memory.

Flow: ``publish(records)`` -> Avro-encoded and size-checked (``encode_records``, as the plain
producer does) -> appended to the write-ahead ``Spool`` under ``<data-dir>/spool`` (group
commit, fsync) -> ``publish`` returns, and the gateway answers 2xx. The relay task takes what
the spool made durable, in spool order, and sends it to the broker in chunks, one producer,
so every partition sees records in the order they were accepted (a customer's upserts stay
ordered). Each acknowledged chunk leaves a ``Mark``: the last spool seq it held and the highest
broker offset per partition. The stack (``cli.ledger``) checks marks against what the
processors stored and ``release``s the spool up to there; whatever was not released is sent
again, in order, after a broker restart (``reconnect``) or at the next start (``start``).
Message ids make that re-send idempotent (the events sink stores each id once, whenever it comes);
a re-sent record carries the ``goalstream-resent`` header, for the one change that is not
idempotent (an array item without an id, which the customers sink then appends only once).

The relay never gives up on a record: a broker that does not acknowledge is retried every
second (the stack's supervisor restarts a dead broker and calls ``reconnect``); one record the
broker refuses as too large (its ``message.max.bytes`` below ours) goes to the dead-letter
topic with the reason, its value cut to what fits.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from schemas import codec, model
from schemas.kafka import KafkaUnavailable, RecordProducer, RecordTooLarge, encode_records
from schemas.model import Record
from schemas.stopping import bounded

from .spool import Entry, Spool

log = logging.getLogger("goalstream.spool")

CHUNK = 5000  # records per send: big enough to amortise, small enough to retry cheaply
RETRY_S = 1.0
STOP_PRODUCER_S = 5.0
DEAD_LETTER_VALUE_BYTES = 1024 * 1024
RESENT = ((codec.RESENT_HEADER, b"1"),)


class Mark(NamedTuple):
    """One acknowledged chunk: its last spool seq and the highest offset per partition."""

    seq: int
    offsets: dict[tuple[str, int], int]


class SpooledSink:
    """A ``RecordSink`` (ingest_gateway.ports) for the embedded broker: spool first, then Kafka."""

    def __init__(self, directory: Path, make_producer: Callable[[], RecordProducer], *, fsync: bool = True):
        self.spool_dir = directory
        self.spool = Spool(directory, on_durable=self._durable, fsync=fsync)
        self.make_producer = make_producer
        self.producer: RecordProducer | None = None
        self.queue: deque[Entry] = deque()  # durable, not yet acknowledged by the broker
        self.marks: deque[Mark] = deque()  # acknowledged chunks, oldest first, for the ledger
        self.sent_seq = 0  # the last seq the broker acknowledged (this broker)
        self.epoch = 0  # one per broker the relay has sent to; marks belong to the current one
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._relay: asyncio.Task | None = None
        self.failing: str | None = None  # why the last send failed, while it keeps failing
        self.recovered = 0  # entries found unreleased in the spool at start
        self.resent_upto = 0  # entries up to this seq are sent again, with RESENT_HEADER

    # -- RecordSink ----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the spool (re-queue what it still holds), connect, start relaying."""
        if self.producer is not None:
            return
        pending = await self.spool.open()
        self.recovered = len(pending)
        if pending:
            log.warning("the spool holds %d records not yet known to be stored; sending them again, in order", len(pending))
        self._requeue(pending)
        await self._connect()

    async def publish(self, records: Sequence[Record]) -> None:
        encoded = encode_records(records)  # RecordTooLarge before anything is spooled
        await self.publish_encoded([(r.topic, r.key, value, headers) for r, value, headers in encoded])

    async def publish_encoded(self, entries: Sequence[tuple[str, bytes | None, bytes, Sequence[tuple[str, bytes]]]]) -> None:
        """Already-encoded (topic, key, value, headers), as an HTTP front sends them (it
        encodes and size-checks them itself); returns once they are fsynced."""
        try:
            await self.spool.append(entries)
        except Exception as exc:  # the disk failed: nothing of this call may be acknowledged
            raise KafkaUnavailable(f"the spool could not write: {exc}") from exc

    async def flush(self) -> None:
        """Until everything spooled so far was acknowledged by the broker."""
        while self.queue or not self._idle.is_set():
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.pause()
        await self.spool.close()

    # -- the stack's controls --------------------------------------------------------------

    async def pause(self, *, broker_gone: bool = False) -> None:
        """Stop sending (the broker is being replaced, or ``broker_gone``: it died, and what
        the producer still buffers is failed, not delivered later to the next broker: the
        spool sends it again, in order); bounded."""
        relay, self._relay = self._relay, None
        if relay is not None:
            relay.cancel()
            await asyncio.gather(relay, return_exceptions=True)
        producer, self.producer = self.producer, None
        if producer is not None:
            stop = producer.abort if broker_gone else producer.stop
            if not await bounded("the spool's producer", stop, STOP_PRODUCER_S, logger=log) and not broker_gone:
                await bounded("aborting the spool's producer", producer.abort, STOP_PRODUCER_S, logger=log)
        self._idle.set()

    async def reconnect(self) -> None:
        """After a new broker started: send it everything not yet released, in order, then
        what arrives. Marks of the old broker are dropped (its offsets mean nothing now)."""
        await self.pause()
        self._requeue(await self.spool.read(self.spool.released_seq))
        await self._connect()

    # -- inside ----------------------------------------------------------------------------

    def _durable(self, entries: list[Entry]) -> None:
        # Called by the spool in seq order once a group is on disk.
        self.queue.extend(entries)
        self._wake.set()

    def _requeue(self, entries: list[Entry]) -> None:
        """The queue becomes ``entries`` then whatever durable entries follow them."""
        last = entries[-1].seq if entries else self.spool.released_seq
        rest = [e for e in self.queue if e.seq > last]
        self.queue = deque(entries)
        self.queue.extend(rest)
        self.resent_upto = max(self.resent_upto, last)  # these may be stored already: say so
        self.marks.clear()
        self.sent_seq = self.spool.released_seq
        self.epoch += 1
        self._wake.set()

    async def _connect(self) -> None:
        producer = self.make_producer()
        await producer.start()
        self.producer = producer
        self._relay = asyncio.create_task(self._run(producer), name="goalstream-spool-relay")

    async def _run(self, producer: RecordProducer) -> None:
        while True:
            if not self.queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._idle.clear()
            chunk = [self.queue[i] for i in range(min(CHUNK, len(self.queue)))]
            try:
                offsets = await self._send(producer, chunk)
            except KafkaUnavailable as exc:
                if self.failing is None:
                    log.warning("the broker did not acknowledge %d spooled records (%s); retrying every %.0fs", len(chunk), exc, RETRY_S)
                self.failing = str(exc)
                await asyncio.sleep(RETRY_S)
                continue
            if self.failing is not None:
                log.info("the broker acknowledges spooled records again")
                self.failing = None
            for _ in chunk:
                self.queue.popleft()
            self.sent_seq = chunk[-1].seq
            self.marks.append(Mark(chunk[-1].seq, offsets))

    def _wire(self, e: Entry) -> tuple:
        """What goes to the broker for one entry: a re-sent one says so (RESENT_HEADER)."""
        return (e.topic, e.key, e.value, tuple(e.headers) + RESENT if e.seq <= self.resent_upto else e.headers)

    async def _send(self, producer: RecordProducer, chunk: list[Entry]) -> dict[tuple[str, int], int]:
        try:
            return await producer.send_encoded([self._wire(e) for e in chunk], batched=True)
        except RecordTooLarge:
            pass
        # One of them is over the broker's own limit: send one by one, dead-lettering that one.
        offsets: dict[tuple[str, int], int] = {}
        for e in chunk:
            try:
                got = await producer.send_encoded([self._wire(e)])
            except RecordTooLarge as exc:
                log.error("the broker refused spooled record %d as too large; dead-lettering it", e.seq)
                letter = model.dead_letter(
                    reason=f"the broker refused the record as too large ({len(e.value)} bytes): {exc}"[:1000],
                    stage="gateway:spool", key=e.key, value=e.value[:DEAD_LETTER_VALUE_BYTES],
                    headers={**dict(e.headers), "truncated": str(len(e.value)).encode()},
                )
                got = await producer.publish([letter])
            for tp, off in got.items():
                offsets[tp] = max(off, offsets.get(tp, -1))
        return offsets
