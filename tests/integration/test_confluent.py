"""Confluent wire format on the output topics (issue 14): a real embedded broker and a small
schema registry written here (aiohttp, the endpoints goalstream uses, schemas in memory).

What a downstream tool does is done here: read the raw Kafka message, take the schema id
after the magic byte, fetch that schema from the registry and decode with fastavro."""

from __future__ import annotations

import base64
import io
import json
import struct

import fastavro
import pytest
from aiohttp import ClientSession, web
from aiokafka import AIOKafkaConsumer

from schemas import codec, registry, topics
from schemas.kafka import RecordProducer
from schemas.model import Record
from stream_processors.webhooks import dispatcher as d
from tests.conftest import free_port


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class MemoryRegistry:
    """POST /subjects/{subject}/versions, GET /schemas/ids/{id}; optional basic auth and a
    switch that refuses every new schema as incompatible (409), as a registry would."""

    def __init__(self, user: str | None = None, password: str | None = None):
        self.schemas: list[str] = []
        self.subjects: dict[str, list[int]] = {}
        self.incompatible = False
        self.auth = _basic(user, password) if user else None
        self.port = free_port()

    async def _check(self, request: web.Request) -> None:
        if self.auth and request.headers.get("Authorization") != self.auth:
            raise web.HTTPUnauthorized(text=json.dumps({"error_code": 401, "message": "Unauthorized"}), content_type="application/json")

    async def register(self, request: web.Request) -> web.Response:
        await self._check(request)
        schema = (await request.json())["schema"]
        canonical = json.dumps(json.loads(schema), sort_keys=True)
        if canonical in self.schemas:
            return web.json_response({"id": self.schemas.index(canonical) + 1})
        if self.incompatible:
            return web.json_response({"error_code": 409, "message": "Schema being registered is incompatible with an earlier schema"}, status=409)
        self.schemas.append(canonical)
        sid = len(self.schemas)
        self.subjects.setdefault(request.match_info["subject"], []).append(sid)
        return web.json_response({"id": sid})

    async def by_id(self, request: web.Request) -> web.Response:
        await self._check(request)
        sid = int(request.match_info["id"])
        if not 1 <= sid <= len(self.schemas):
            return web.json_response({"error_code": 40403, "message": "Schema not found"}, status=404)
        return web.json_response({"schema": self.schemas[sid - 1]})

    async def __aenter__(self) -> "MemoryRegistry":
        app = web.Application()
        app.router.add_post("/subjects/{subject}/versions", self.register)
        app.router.add_get("/schemas/ids/{id}", self.by_id)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()


def _change(cid: str) -> dict:
    return {"message_id": f"m-{cid}", "workspace": "acme", "customer_id": cid, "goal_name": "30-day Conversion",
            "likelihood": 0.42, "previous_likelihood": None, "status": "active", "model_version": "v1",
            "model_kind": "logistic", "drivers": [{"feature": "count:Style Widget", "value": "3", "contribution": 0.5}],
            "goal_days_left": 14, "timestamp": 1_764_000_000_000}


async def _raw_messages(bootstrap: str, topic: str, n: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                                group_id=None)
    await consumer.start()
    try:
        out = []
        while len(out) < n:
            batch = await consumer.getmany(timeout_ms=2000)
            assert batch, "no message within 2 s"
            for msgs in batch.values():
                out += msgs
        return out
    finally:
        await consumer.stop()


async def test_confluent_mode_is_decodable_by_id_as_downstream_tools_do_and_by_the_dispatcher(broker):
    async with MemoryRegistry("sr-user", "sr-pass") as reg:
        client = registry.Registry(reg.url, "sr-user", "sr-pass")
        producer = RecordProducer(broker.bootstrap, idempotence=False, registry=client)
        await producer.start()
        try:
            await producer.publish([Record("goalstream.GoalPropensityChange", topics.PROPENSITY, b"acme\x00c-conf", _change("c-conf"))])
        finally:
            await producer.stop()
        assert set(reg.subjects) == {"goalstream.propensity-value", "goalstream.recommendations-value"}  # TopicNameStrategy

        (m,) = [x for x in await _raw_messages(broker.bootstrap, topics.PROPENSITY, 1) if x.key == b"acme\x00c-conf"][-1:]
        # As Kafka Connect / ksqlDB / AvroConfluent read it: magic byte, id, then Avro binary.
        magic, sid = struct.unpack(">bI", m.value[:5])
        assert magic == 0 and sid in reg.subjects["goalstream.propensity-value"]
        async with ClientSession(headers={"Authorization": _basic("sr-user", "sr-pass")}) as s, s.get(f"{reg.url}/schemas/ids/{sid}") as r:
            writer = fastavro.parse_schema(json.loads((await r.json())["schema"]))
        record = fastavro.schemaless_reader(io.BytesIO(m.value[5:]), writer, None)
        assert record["customer_id"] == "c-conf" and record["likelihood"] == 0.42
        headers = dict(m.headers)
        assert headers[codec.SCHEMA_HEADER] == b"goalstream.GoalPropensityChange"  # the headers are kept
        assert headers[registry.WIRE_HEADER] == registry.CONFLUENT

        # The dispatcher's decoding: the writer's schema fetched by id (a fresh client: nothing cached).
        fresh = registry.Registry(reg.url, "sr-user", "sr-pass")
        try:
            name, decoded = await registry.decode(m.value, headers, fresh)
            assert name == "goalstream.GoalPropensityChange" and decoded["customer_id"] == "c-conf"
            body = d.payload(name, decoded)
            assert body["object"] == "goal-propensity-change" and body["data"][0]["likelihood"] == 0.42
            # The header form (the default) still decodes through the same call, and a framed
            # value without a registry decodes with the schema its headers name.
            value, hdrs = codec.encode("goalstream.GoalPropensityChange", _change("c-plain"))
            assert (await registry.decode(value, dict(hdrs), fresh))[1]["customer_id"] == "c-plain"
            assert (await registry.decode(m.value, headers, None))[1]["customer_id"] == "c-conf"
        finally:
            await fresh.close()


async def test_registry_down_or_incompatible_is_a_clear_error_at_start(broker):
    down = registry.Registry(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(registry.RegistryError, match="did not answer POST /subjects/goalstream.propensity-value/versions"):
        await RecordProducer(broker.bootstrap, idempotence=False, registry=down).start()
    await down.close()
    async with MemoryRegistry() as reg:
        reg.incompatible = True
        client = registry.Registry(reg.url)
        with pytest.raises(registry.RegistryError, match="409 Schema being registered is incompatible"):
            await RecordProducer(broker.bootstrap, idempotence=False, registry=client).start()
        await client.close()
    async with MemoryRegistry("u", "right") as reg:
        client = registry.Registry(reg.url, "u", "wrong")
        with pytest.raises(registry.RegistryError, match="401"):
            await client.start()
        await client.close()


def test_goalstream_up_in_confluent_mode_registers_and_its_dispatcher_delivers_framed_records(tmp_path):
    """A whole `goalstream up` with GOALSTREAM_SCHEMA_REGISTRY_URL: its producers register
    the output subjects at start, and its dispatcher delivers a framed propensity change."""
    import asyncio
    import threading

    from tests.conftest import StackProcess, wait_for
    from tests.integration.test_webhooks import Receivers, change, webhooks_config

    reg = MemoryRegistry()
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(reg.__aenter__())
        started.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    assert started.wait(10)
    receivers = Receivers()
    stack = StackProcess(tmp_path, config=webhooks_config(receivers, {"w-ok": receivers.url("/conf")}),
                         env={"GOALSTREAM_SCHEMA_REGISTRY_URL": reg.url}).start()
    try:
        assert "goalstream.propensity-value" in reg.subjects  # registered by the stack at start

        async def publish() -> None:
            client = registry.Registry(reg.url)
            p = RecordProducer(f"127.0.0.1:{stack.kafka_port}", idempotence=False, registry=client)
            await p.start()
            try:
                await p.publish([change("w-ok", "c-framed", 0.37)])
            finally:
                await p.stop()

        asyncio.run(publish())
        wait_for(lambda: receivers.of("/conf"), timeout=30)
        body = json.loads(receivers.of("/conf")[0]["body"])
        assert body["object"] == "goal-propensity-change" and body["meta"]["customer_id"] == "c-framed"
        assert body["data"][0]["likelihood"] == 0.37
    finally:
        stack.close()
        loop.call_soon_threadsafe(loop.stop)
