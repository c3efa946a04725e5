"""An in-memory stand-in for ``schemas.kafka.RecordProducer``, for contract tests.

Records flow through it as they would to the broker: encoded with the same Avro codec and
headers and refused by the same size check (``schemas.kafka.encode_records``), then
placed on a partition by the partitioner aiokafka's producer uses by default (murmur2 of
the key) for the partition count the test broker has, and appended to that partition's
log at the next offset. Tests read the log back with ``since`` (a mark) and ``after``.
What it leaves out is the network: nothing is retried, acknowledged late or lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from aiokafka.partitioner import DefaultPartitioner

from schemas.kafka import KafkaUnavailable, encode_records
from schemas.model import Record

# The tests' broker creates every topic with two partitions (tests/conftest.py `broker`).
PARTITIONS = 2


@dataclass(frozen=True)
class Message:
    """One record as the broker would hold it: where it is and the bytes that were sent."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...]


class MemoryProducer:
    """The surface the gateway uses of ``RecordProducer`` (start, stop, flush, publish)."""

    def __init__(self, partitions: int = PARTITIONS):
        self.partitions = list(range(partitions))
        self._partitioner = DefaultPartitioner()
        self.log: dict[tuple[str, int], list[Message]] = {}
        self.running = False

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def flush(self) -> None:
        pass  # every publish is "acknowledged" before it returns; nothing is buffered

    async def publish(self, records: Sequence[Record]) -> None:
        encoded = encode_records(records)  # RecordTooLarge here, before anything is appended
        if not self.running:
            raise KafkaUnavailable("producer is not running")
        for r, value, headers in encoded:
            partition = self._partitioner(r.key, self.partitions, self.partitions)
            part = self.log.setdefault((r.topic, partition), [])
            part.append(Message(r.topic, partition, len(part), r.key, value, tuple(headers)))

    def since(self) -> dict[tuple[str, int], int]:
        """A mark: each partition's end offset now."""
        return {tp: len(msgs) for tp, msgs in self.log.items()}

    def after(self, mark: dict[tuple[str, int], int]) -> list[Message]:
        """Every message appended since ``mark``, by topic, then partition, then offset."""
        return [m for tp in sorted(self.log) for m in self.log[tp][mark.get(tp, 0):]]
