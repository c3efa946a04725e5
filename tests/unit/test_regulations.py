"""The regulations' list (who is forgotten, what it blocks), what a dead letter quotes, and the
admin API and the gateway's suppression through ``create_app`` with an in-memory sink."""

from __future__ import annotations

import base64

import orjson
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway.app import create_app
from schemas import codec, model
from schemas.config import parse_config
from schemas.regulations import Forgotten, quoted
from schemas.settings import GatewaySettings
from tests.conftest import globex_config
from tests.memory import MemoryProducer

T = 1_800_000_000_000


def regulation(ws: str, ids: list[str], *, suppress: bool, state: str = "completed", rid: str = "r1", at: int = T) -> dict:
    return {"id": rid, "workspace": ws, "customer_id": ids[0], "ids": ids, "suppress": suppress, "requested_ms": at, "state": state}


def test_a_plain_forget_blocks_what_was_received_up_to_the_request_only():
    f = Forgotten()
    assert not f.any and not f.blocks("acme", ["x"], T)
    f.update([regulation("acme", ["x", "x-old"], suppress=False)])
    assert f.blocks("acme", ["x-old"], T - 1) and f.blocks("acme", ["x"], T)
    assert not f.blocks("acme", ["x"], T + 1)  # received after: the person may come back
    assert f.blocks("acme", ["x"], None)  # arrival unknown: counted as before
    assert not f.blocks("globex", ["x"], T - 1)  # another workspace's x
    assert not f.holds("acme", ["x"]) and f.holds("acme", ["x"], at_ms=T - 1)


def test_suppression_blocks_for_ever_and_wins_over_a_plain_forget():
    f = Forgotten()
    f.update([regulation("acme", ["x"], suppress=False, rid="a", at=T + 5), regulation("acme", ["x"], suppress=True, rid="b")])
    assert f.suppressed("acme", "x") and f.blocks("acme", ["x"], T + 10**9) and f.holds("acme", ["x"])


def test_a_running_regulation_holds_scoring_and_listeners_hear_new_ids_once():
    heard: list[dict] = []
    f = Forgotten()
    f.on_forgotten(heard.append)
    f.update([regulation("acme", ["x"], suppress=False, state="running")])
    assert f.holds("acme", ["x"])
    f.update([regulation("acme", ["x"], suppress=False, state="completed")])  # same regulation, moved on
    f.update([regulation("acme", ["x", "x-anon"], suppress=False, state="completed")])  # its ids resolved
    assert heard == [{"acme": {"x"}}, {"acme": {"x-anon"}}]
    assert not f.holds("acme", ["x"])


def test_what_a_dead_letter_quotes():
    rec = model.event(workspace="acme", customer_id="", anonymous_id="anon-9", name="n", properties={}, source="segment",
                      received_at_ms=T)
    value, headers = codec.encode(rec.schema, rec.value)
    ws, ids, received = quoted({"key": None, "value": value, "headers": dict(headers), "stage": "events-sink"})
    assert (ws, ids, received) == ("acme", {"anon-9"}, T)
    assert quoted({"key": b"acme:c1", "value": b"\xff", "headers": {}, "stage": "events-sink"})[:2] == ("acme", {"c1"})
    # A refused trigger.ly pixel: the person is in the base64 `data` of its query string.
    data = base64.b64encode(orjson.dumps({"event": "x", "properties": {"distinct_id": "p-7", "token": "t"}})).decode()
    letter = {"key": b"acme:", "value": f"/v1/events/track?data={data}&api_token=[redacted]".encode(), "headers": {},
              "stage": "gateway:triggerly"}
    assert quoted(letter)[1] == {"p-7"}
    body = {"key": None, "value": b'{"batch": [{"userId": "u-1", "properties": {"name": "u-2"}}]}', "headers": {}, "stage": "gateway:segment"}
    assert quoted(body)[1] == {"u-1"}  # a property that happens to hold an id is not the person


class FakeRegulator:
    def __init__(self):
        self.made: list[tuple] = []

    async def request(self, workspace, customer_id, *, suppress, requested_by):
        self.made.append((workspace, customer_id, suppress, requested_by))
        return {"object": "regulation", "id": "r1", "workspace": workspace, "customer_id": customer_id, "state": "pending"}

    async def list(self, workspace=None, regulation=None):
        return [{"id": "r1", "workspace": "acme"}] if workspace in (None, "acme") and regulation in (None, "r1") else []

    async def wait(self, regulation, timeout_s):
        return {"id": regulation, "state": "completed"}


async def test_the_admin_api_is_scoped_and_validated():
    reg, f = FakeRegulator(), Forgotten()
    app = create_app(GatewaySettings(), parse_config(globex_config()), producer=MemoryProducer(), local_token="op-t",
                     forgotten=f, regulator=reg)
    admin = {"Authorization": "Bearer adm_1"}
    async with TestClient(TestServer(app)) as c:
        assert (await c.post("/admin/v1/forget", json={"customer_id": "x"})).status == 401
        r = await c.post("/admin/v1/forget", json={"customer_id": "x", "suppress": True}, headers=admin)
        assert r.status == 202, await r.text()
        assert reg.made[0][:3] == ("acme", "x", True) and "admin token of acme" in reg.made[0][3]
        assert (await c.post("/admin/v1/forget", json={"customer_id": "x", "workspace": "globex"}, headers=admin)).status == 403
        for bad in ({}, {"customer_id": ""}, {"customer_id": "x", "suppress": "yes"}, {"customer_id": "x", "extra": 1}, [1]):
            r = await c.post("/admin/v1/forget", json=bad, headers=admin)
            assert r.status == 400, (bad, await r.text())
        r = await c.post("/admin/v1/forget", data=b"{not json", headers=admin)
        assert r.status == 400
        op = {"Authorization": "Bearer op-t"}
        assert (await c.post("/admin/v1/forget", json={"customer_id": "x"}, headers=op)).status == 400  # which workspace?
        r = await c.post("/admin/v1/forget", json={"customer_id": 42, "workspace": "globex", "wait": True}, headers=op)
        assert r.status == 200 and (await r.json())["state"] == "completed"
        assert (await c.get("/admin/v1/forget/r1", headers=admin)).status == 200
        assert (await c.get("/admin/v1/forget/nope", headers=admin)).status == 404
        assert (await (await c.get("/admin/v1/forget", headers=admin)).json())["object"] == "list"


async def test_a_suppressed_person_is_refused_in_the_dialect_or_discarded_as_configured():
    config = parse_config(globex_config().replace('segment_write_key = "wk_globex"',
                                                  'segment_write_key = "wk_globex"\nsuppressed_records = "discard"'))
    f = Forgotten()
    f.update([regulation("acme", ["sup"], suppress=True), regulation("globex", ["sup"], suppress=True, rid="r2")])
    producer = MemoryProducer()
    app = create_app(GatewaySettings(), config, producer=producer, forgotten=f)
    async with TestClient(TestServer(app)) as c:
        acme = {"Authorization": "Basic " + base64.b64encode(b"wk_1:").decode()}
        r = await c.post("/v1/track", json={"userId": "sup", "event": "e"}, headers=acme)
        assert r.status == 403 and (await r.json())["code"] == "suppressed"
        r = await c.post("/api/v1/event", json={"customer_id": "sup", "name": "e"}, headers={"Authorization": "Token tk_live_123"})
        assert r.status == 403 and "suppressed" in (await r.json())["error"]["message"]
        assert (await c.post("/v1/track", json={"userId": "fine", "event": "e"}, headers=acme)).status == 200
        globex = {"Authorization": "Basic " + base64.b64encode(b"wk_globex:").decode()}
        r = await c.post("/v1/track", json={"userId": "sup", "event": "e"}, headers=globex)
        assert r.status == 200  # discarded, as globex chose
    stored = [m for msgs in producer.log.values() for m in msgs]
    assert len(stored) == 1


def test_the_live_tap_forgets_entries_that_quote_a_forgotten_id():
    from ingest_gateway.live import Tap

    tap = Tap()
    for who in ("victim-1", "other-1"):
        tap.add({"workspace": "acme", "raw": f'{{"userId": "{who}"}}', "records": [], "customers": [who]})
    tap.forget({"acme": {"victim-1"}})
    assert [e["customers"] for e in tap.rings["acme"]] == [["other-1"]]
