"""POST /admin/v1/records, what `goalstream import` sends a running stack: the operator's
token only, records of the ingest topics that fit their schema, published through the app's
sink (in `goalstream up`: the spool), and the importer's StackSink round-tripping records
through it, waiting on 503 + Retry-After."""

from __future__ import annotations

import base64

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway import errors
from ingest_gateway.app import create_app
from ingest_gateway.cli.importer import ImportError_, StackSink
from schemas import codec, model, topics
from schemas.config import parse_config
from schemas.settings import GatewaySettings
from tests.conftest import globex_config
from tests.memory import MemoryProducer

CONFIG = parse_config(globex_config())
TOKEN = "op-token-import"


def event(i: int, workspace: str = "acme") -> model.Record:
    return model.event(workspace=workspace, customer_id=f"c{i}", name="Imported", properties={"i": i}, source="import",
                       timestamp_ms=1_700_000_000_000 + i, message_id=f"imp-{i}")


def line(r: model.Record, **change) -> bytes:
    obj = {"schema": r.schema, "topic": r.topic, "key": base64.b64encode(r.key).decode(), "value": r.value} | change
    return orjson.dumps(obj)


async def post(client, body: bytes, token: str | None = TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await client.post("/admin/v1/records", data=body, headers=headers)


async def test_the_operator_publishes_records_and_nobody_else_does():
    producer = MemoryProducer()
    app = create_app(GatewaySettings(), CONFIG, producer=producer, local_token=TOKEN)
    async with TestClient(TestServer(app)) as client:
        body = b"\n".join(line(event(i)) for i in range(3))
        assert (await post(client, body, token=None)).status == 401
        assert (await post(client, body, token="adm_1")).status == 403  # a workspace's admin token
        assert sum(len(m) for m in producer.log.values()) == 0
        r = await post(client, body)
        assert r.status == 200, await r.text()
        assert (await r.json())["accepted"] == 3
        assert sum(len(m) for (t, _), m in producer.log.items() if t == topics.EVENTS) == 3


@pytest.mark.parametrize("change, says", [
    ({"topic": topics.PROPENSITY}, "records go to"),
    ({"schema": "goalstream.Nope"}, "unknown schema"),
    ({"key": "not base64!"}, "not a record"),
    ({"key": base64.b64encode(b"globex:c1").decode()}, "partition key"),
    ({"value": {"workspace": "acme", "message_id": 5}}, "does not fit"),
])
async def test_a_bad_record_is_a_400_and_nothing_of_the_request_is_published(change, says):
    producer = MemoryProducer()
    app = create_app(GatewaySettings(), CONFIG, producer=producer, local_token=TOKEN)
    async with TestClient(TestServer(app)) as client:
        body = line(event(1)) + b"\n" + line(event(2), **change)
        r = await post(client, body)
        assert r.status == 400
        text = await r.text()
        assert says in text and "line 2" in text
        assert sum(len(m) for m in producer.log.values()) == 0


async def test_stack_sink_round_trips_records_and_waits_on_a_full_backlog():
    producer = MemoryProducer()
    refusals = iter([errors.Unavailable("backlog full", retry_after=0), None])
    app = create_app(GatewaySettings(), CONFIG, producer=producer, local_token=TOKEN, admission=lambda: next(refusals, None))
    async with TestClient(TestServer(app)) as client:
        sink = StackSink(str(client.make_url("/")), TOKEN, patience_s=10)
        await sink.start()
        try:
            records = [event(i) for i in range(5)]
            await sink.publish(records)  # the first attempt gets 503, the second is taken
        finally:
            await sink.stop()
    msgs = [m for (t, _), ms in producer.log.items() if t == topics.EVENTS for m in ms]
    assert sorted(m.key for m in msgs) == sorted(r.key for r in records)
    assert sorted(m.value for m in msgs) == sorted(codec.encode(r.schema, r.value)[0] for r in records)


async def test_stack_sink_stops_on_a_refusal_with_the_stacks_message():
    app = create_app(GatewaySettings(), CONFIG, producer=MemoryProducer(), local_token=TOKEN)
    async with TestClient(TestServer(app)) as client:
        sink = StackSink(str(client.make_url("/")), "wrong-token", patience_s=5)
        await sink.start()
        try:
            with pytest.raises(ImportError_, match="401"):
                await sink.publish([event(1)])
        finally:
            await sink.stop()
