"""The golden fixtures that read ClickHouse, replayed through ``create_app()`` against the
real broker and chDB; the rest run in the contract lane (tests/unit/test_golden_contract.py).
The runner and the fixture format: tests/golden.py.

Also here: the in-memory producer the contract lane uses puts every record on the same
partition, with the same bytes and headers, as the real producer does on the real broker.
"""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from ingest_gateway.app import create_app
from schemas import model, topics
from schemas.config import parse_config
from schemas.kafka import RecordProducer, true_end_offsets
from schemas.settings import GatewaySettings
from tests import golden
from tests.conftest import globex_config
from tests.memory import MemoryProducer

CASES = golden.lane("integration")


class KafkaLog:
    """The broker's partitions of the events, customers and dead-letter topics."""

    def __init__(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]):
        self.consumer, self.tps = consumer, tps

    async def mark(self) -> dict[TopicPartition, int]:
        since = await true_end_offsets(self.consumer, self.tps)
        self.consumer.assign(self.tps)
        return since

    async def after(self, since: dict[TopicPartition, int]) -> list[golden.Message]:
        consumer, tps = self.consumer, self.tps
        ends = await true_end_offsets(consumer, tps)
        consumer.assign(tps)
        out = []
        for tp in tps:
            if ends[tp] <= since[tp]:
                continue
            consumer.seek(tp, since[tp])
            while (await consumer.position(tp)) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=2000)
                for msg in batch.get(tp, []):
                    out.append(((msg.topic, tp.partition, msg.offset), (msg.topic, msg.key, msg.value, msg.headers)))
        out.sort(key=lambda m: m[0])
        return [m for _, m in out]


@pytest.fixture(scope="module")
async def client(broker, warehouse):
    settings = GatewaySettings(kafka=broker.bootstrap, clickhouse=warehouse.dsn)
    c = await golden.serve(create_app(settings, parse_config(globex_config()), warehouse=warehouse))
    yield c
    await c.close()


@pytest.fixture(scope="module")
async def log(broker):
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    tps = [
        TopicPartition(t, p)
        for t in (topics.EVENTS, topics.CUSTOMERS, topics.DEADLETTER)
        for p in consumer.partitions_for_topic(t) or (0, 1)
    ]
    consumer.assign(tps)
    yield KafkaLog(consumer, tps)
    await consumer.stop()


@pytest.mark.parametrize("fixture", CASES, ids=[golden.case_id(c) for c in CASES])
async def test_golden(fixture, client, log):
    await golden.replay(fixture, client, log)


async def test_memory_producer_places_records_as_the_broker_does(broker, log):
    """Keys of every shape the dialects make, through both producers: the same topic,
    partition, key, value bytes and headers, in the same order."""
    keys = ["1", "5", "cust-1", "ann@example.com", "é" * 150, "u-" + "x" * 40, "anon:abc", ""]
    records = []
    for i, k in enumerate(keys):
        records.append(model.event(workspace="acme", customer_id=k, name=f"e{i}", properties={"i": i}, source="test",
                                   timestamp_ms=1_700_000_000_000 + i, received_at_ms=1_700_000_000_000, message_id=f"mp-{i}"))
        records.append(model.customer_upsert(workspace="globex", customer_id=k, attributes={"i": i}, source="test",
                                             received_at_ms=1_700_000_000_000, message_id=f"mc-{i}"))
    real, memory = RecordProducer(broker.bootstrap), MemoryProducer()
    await real.start()
    await memory.start()
    try:
        since = await log.mark()
        mark = memory.since()
        await real.publish(records)
        await memory.publish(records)
        got = await log.after(since)
    finally:
        await real.stop()
    want = [(m.topic, m.key, m.value, m.headers) for m in memory.after(mark)]
    assert len(got) == len(records)
    assert [(t, k, v, tuple(h)) for t, k, v, h in got] == want
    # Both partitions were used, so the comparison says something about the partitioner.
    assert {m.partition for m in memory.after(mark)} == {0, 1}
