"""Golden fixtures replayed through ``create_app()`` against the real broker and chDB.

Each file in tests/fixtures/<dialect>/ is one request, the response the seed says it
gets, and the canonical records that must appear on Kafka because of it (read back and
decoded with the writer's schema). ``"<any>"`` matches any value.

A fixture file::

    {"about": "...",
     "request": {"method", "path" (query string included),
                 "headers"?: {...}, "auth"?: [user, password] (HTTP Basic),
                 one body at most: "body" (text as sent) | "body_json" (any JSON value)
                 | "body_base64" (raw bytes, e.g. gzip) | "form" ([[key, value], ...])},
     "response": {"status", then "json" (matched) | "text" | "body_base64" (exact),
                  "headers"?: {name: value} (each must be present, "<any>" allowed)},
     "records": [{"schema", "topic", "key", "value"}, ...]}

JSON-in-a-string fields of a record (properties, attributes, items) are compared parsed.
Records are listed by topic, then partition (two in tests), then offset.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from urllib.parse import urlencode

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, TopicPartition

from ingest_gateway.app import create_app
from schemas import codec, topics
from schemas.kafka import true_end_offsets
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
    # As `goalstream up` serves it: content codings are decoded (with limits) by read_body.
    await c.server.start_server(auto_decompress=False)
    await c.start_server()
    yield c
    await c.close()


@pytest.fixture(scope="module")
async def reader(broker):
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    tps = [
        TopicPartition(t, p)
        for t in (topics.EVENTS, topics.CUSTOMERS, topics.DEADLETTER)
        for p in consumer.partitions_for_topic(t) or (0, 1)
    ]
    consumer.assign(tps)
    yield consumer, tps
    await consumer.stop()


async def new_records(consumer, tps, since):
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
                schema, value = codec.decode(msg.value, msg.headers)
                for field in ("properties", "attributes", "items"):
                    if field in value:
                        value[field] = orjson.loads(value[field])
                for field in ("timestamp", "received_at", "created_at", "failed_at"):
                    if hasattr(value.get(field), "timestamp"):
                        value[field] = int(value[field].timestamp() * 1000)
                out.append({"schema": schema, "topic": msg.topic, "key": msg.key.decode(), "value": value, "offset": (msg.topic, tp.partition, msg.offset)})
    out.sort(key=lambda r: r["offset"])
    for r in out:
        del r["offset"]
    return out


CASES = sorted(FIXTURES.glob("*/*.json"))


def build_request(req: dict) -> tuple[dict, bytes | None]:
    headers = dict(req.get("headers", {}))
    if "auth" in req:
        user, password = req["auth"]
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    body: bytes | None = None
    if "body" in req:
        body = req["body"].encode()
    elif "body_json" in req:
        body = json.dumps(req["body_json"]).encode()
    elif "body_base64" in req:
        body = base64.b64decode(req["body_base64"])
    elif "form" in req:
        body = urlencode(req["form"]).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return headers, body


@pytest.mark.parametrize("fixture", CASES, ids=[f"{c.parent.name}/{c.stem}" for c in CASES])
async def test_golden(fixture, client, reader):
    case = json.loads(fixture.read_text())
    consumer, tps = reader
    since = await true_end_offsets(consumer, tps)
    consumer.assign(tps)
    req, expected = case["request"], case["response"]
    headers, body = build_request(req)
    resp = await client.request(req["method"], req["path"], headers=headers, data=body)
    raw = await resp.read()
    assert resp.status == expected["status"], raw[:2000]
    for name, value in expected.get("headers", {}).items():
        assert name in resp.headers, f"missing response header {name}"
        matches(value, resp.headers[name], f"headers.{name}")
    if "json" in expected:
        assert resp.headers["Content-Type"].startswith("application/json"), resp.headers["Content-Type"]
        matches(expected["json"], json.loads(raw), "body")
    elif "text" in expected:
        assert raw.decode() == expected["text"]
    elif "body_base64" in expected:
        assert raw == base64.b64decode(expected["body_base64"])
    got = await new_records(consumer, tps, since)
    matches(case["records"], got, "records")
    if resp.status >= 400:
        # A refused request reaches Kafka only as a dead letter (pixels, whose senders cannot see errors).
        assert all(r["topic"] == topics.DEADLETTER for r in got), "a refused request must not reach Kafka"
