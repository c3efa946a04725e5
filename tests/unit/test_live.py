"""The live page's tap: what a dialect request leaves in it (raw payload redacted and
capped, records, refusals with their error), per-workspace scoping of the feed, bounds,
and that nothing is captured while nobody watches."""

from __future__ import annotations

import base64

from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway import live
from ingest_gateway.app import TAP, create_app
from schemas.config import parse_config
from schemas.settings import GatewaySettings
from tests.conftest import globex_config
from tests.memory import MemoryProducer

CONFIG = parse_config(globex_config())
BASIC = {"Authorization": "Basic " + base64.b64encode(b"wk_1:").decode()}


def app():
    return create_app(GatewaySettings(), CONFIG, producer=MemoryProducer(), local_token="op-token-xyz")


async def feed(client, token: str, after: int = 0):
    r = await client.get(f"/admin/v1/live/events?after={after}", headers={"Authorization": f"Bearer {token}"})
    assert r.status == 200, await r.text()
    return await r.json()


async def test_accepted_and_refused_requests_reach_the_feed_redacted():
    a = app()
    async with TestClient(TestServer(a)) as client:
        assert (await client.get("/admin/v1/live/events")).status == 401
        assert (await client.get("/admin/v1/live/events", headers={"Authorization": "Bearer wk_1"})).status == 401
        await client.post("/v1/track", json={"userId": "u1", "event": "before watching"}, headers=BASIC)
        assert (await feed(client, "adm_1"))["entries"] == []  # nothing captured while nobody watched
        r = await client.post("/v1/track", json={"userId": "u1", "event": "Signed Up", "writeKey": "wk_1", "properties": {"x": "y" * 20000}})
        assert r.status == 200
        await client.post("/v1/track", data=b"{nope", headers={**BASIC, "Content-Type": "application/json"})
        await client.post("/v1/track", json={"userId": "u1", "event": "e"}, headers={"Authorization": "Basic " + base64.b64encode(b"bad:").decode()})
        got = await feed(client, "adm_1")
        refused_json, accepted = got["entries"][0], got["entries"][1]
        assert accepted["status"] == 200 and accepted["names"] == ["Signed Up"] and accepted["customers"] == ["u1"]
        assert "wk_1" not in accepted["raw"] and "[redacted]" in accepted["raw"]
        assert len(accepted["raw"].encode()) <= live.MAX_RAW_BYTES + 100 and accepted["raw_bytes"] > 20000
        assert accepted["records"][0]["topic"] == "goalstream.events"
        cut = accepted["records"][0]["value"]  # 20 KB of properties: over the cap, its text cut short
        assert isinstance(cut, str) and '"name":"Signed Up"' in cut and cut.endswith("bytes, cut)") and len(cut) < live.MAX_RAW_BYTES + 100
        assert refused_json["status"] == 400 and refused_json["workspace"] == "acme" and "JSON" in refused_json["error"]["message"]
        # A request naming no workspace: the operator's feed only.
        assert all(e["workspace"] == "acme" for e in got["entries"])
        operator = await feed(client, "op-token-xyz")
        stranger = [e for e in operator["entries"] if e["workspace"] == ""]
        assert stranger and stranger[0]["status"] == 401
        # ?after= returns only what is newer.
        assert (await feed(client, "adm_1", after=got["seq"]))["entries"] == []


async def test_a_large_batch_is_cut_to_the_caps():
    a = app()
    async with TestClient(TestServer(a)) as client:
        await feed(client, "adm_1")
        batch = {"batch": [{"type": "track", "userId": f"u{i}", "event": "big", "properties": {"x": "y" * 20000}} for i in range(25)]}
        r = await client.post("/v1/batch", json=batch, headers=BASIC)
        assert r.status == 200, await r.text()
        entry = (await feed(client, "adm_1"))["entries"][0]
        assert len(entry["records"]) == live.MAX_RECORDS and entry["customers"][:2] == ["u0", "u1"]
        size = sum(len(str(rec["value"])) for rec in entry["records"])
        assert size < 3 * live.MAX_RAW_BYTES + live.MAX_RECORDS * 300, size


async def test_rings_are_bounded_per_workspace():
    tap = live.Tap(per_workspace=3)
    for i in range(10):
        tap.add({"workspace": "a" if i % 2 else "b", "i": i})
    got = await tap.feed("a", 0)
    assert [e["i"] for e in got["entries"]] == [9, 7, 5]
    assert len((await tap.feed(None, 0))["entries"]) == 6


async def test_pages_are_served_without_a_token_and_hold_none():
    a = app()
    async with TestClient(TestServer(a)) as client:
        for path in ("/live", "/goals"):
            r = await client.get(path)
            assert r.status == 200 and "sessionStorage" in await r.text()
            assert "connect-src 'self'" in r.headers["Content-Security-Policy"]
        assert (await client.get("/admin/v1/goals")).status == 401
        assert isinstance(a[TAP], live.Tap)
