"""Golden fixtures replayed through ``create_app()`` against the real broker and chDB.

Each file in tests/fixtures/<dialect>/ is one request, the response the seed says it
gets, and the canonical records that must appear on Kafka because of it (read back and
decoded with the writer's schema). ``"<any>"`` matches any value.
"""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition

from ingest_gateway.app import create_app
from schemas import codec, topics
from schemas.config import parse_config
from schemas.settings import GatewaySettings
from tests.conftest import globex_config

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ANY = "<any>"


def matches(expected, actual, path="$"):
    if expected == ANY:
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(expected) == set(actual), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for k, v in expected.items():
            matches(v, actual[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            matches(e, a, f"{path}[{i}]")
    else:
        assert expected == actual, f"{path}: {actual!r} != {expected!r}"


@pytest.fixture(scope="module")
async def client(broker, warehouse):
    settings = GatewaySettings(kafka=broker.bootstrap, clickhouse=warehouse.dsn)
    app = create_app(settings, parse_config(globex_config()), warehouse=warehouse)
    c = TestClient(TestServer(app))
    await c.start_server()
    yield c
    await c.close()


@pytest.fixture(scope="module")
async def reader(broker):
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    tps = [TopicPartition(t, p) for t in (topics.EVENTS, topics.CUSTOMERS) for p in consumer.partitions_for_topic(t) or (0, 1)]
    consumer.assign(tps)
    yield consumer, tps
    await consumer.stop()


async def new_records(consumer, tps, since):
    ends = await consumer.end_offsets(tps)
    out = []
    for tp in tps:
        if ends[tp] <= since[tp]:
            continue
        consumer.seek(tp, since[tp])
        while (await consumer.position(tp)) < ends[tp]:
            batch = await consumer.getmany(tp, timeout_ms=2000)
            for msg in batch.get(tp, []):
                schema, value = codec.decode(msg.value, msg.headers)
                for field in ("properties", "attributes"):
                    if field in value:
                        value[field] = orjson.loads(value[field])
                for field in ("timestamp", "received_at", "created_at"):
                    if hasattr(value.get(field), "timestamp"):
                        value[field] = int(value[field].timestamp() * 1000)
                out.append({"schema": schema, "topic": msg.topic, "key": msg.key.decode(), "value": value, "offset": (tp.partition, msg.offset)})
    out.sort(key=lambda r: r["offset"])
    for r in out:
        del r["offset"]
    return out


CASES = sorted((FIXTURES / "traitly").glob("*.json"))


@pytest.mark.parametrize("fixture", CASES, ids=[c.stem for c in CASES])
async def test_golden(fixture, client, reader):
    case = json.loads(fixture.read_text())
    consumer, tps = reader
    since = await consumer.end_offsets(tps)
    req = case["request"]
    resp = await client.request(req["method"], req["path"], headers=req.get("headers", {}), data=req.get("body"))
    body = await resp.json(content_type=None)
    assert resp.status == case["response"]["status"], body
    assert resp.headers["Content-Type"].startswith("application/json")
    matches(case["response"]["json"], body)
    got = await new_records(consumer, tps, since)
    matches(case["records"], got)
    if resp.status >= 400:
        assert got == [], "a refused request must not reach Kafka"
