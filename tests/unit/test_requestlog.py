"""Request ids and the access log: every credential position of every dialect, in text
and JSON logs, leaves no credential; a 401 leaves an access line with its reason; the
request id goes in, out (errors included, in each dialect's shape) and onto every line."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway import logsafe, requestlog
from ingest_gateway.app import MAX_LINE, create_app
from schemas.config import parse_config
from schemas.settings import GatewaySettings
from tests.conftest import globex_config
from tests.unit.test_hostile_input import Producer, Warehouse

CONFIG = parse_config(globex_config() + '\n[admin]\noperator_token = "op_token_9f2"\n')
# Configured ones (redacted by value) and unknown ones (must not be logged at all).
KNOWN = ["tk_live_123", "fae3009c1123ab827aa5e0929d2d0d8b", "your_api_key", "your_api_secret", "YOUR-SITE-ID-HERE",
         "YOUR-SECRET-API-KEY-HERE", "wk_1_known_writekey", "op_token_9f2", "adm_1", "tg_globex", "wk_globex", "tk_globex"]
UNKNOWN = ["tok_unknown_5", "api_tok_unknown_6", "rk_unknown_7", "rs_unknown_8", "site_unknown_9", "cio_unknown_10",
           "wk_unknown_11", "bearer_unknown_12"]


def basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def calls():
    """(method, path, headers, json body) with a credential in every place a dialect takes one."""
    event = [{"customer_id": "c1", "name": "signup"}]
    data = base64.b64encode(json.dumps({"distinct_id": "c1", "event": "x"}).encode()).decode()
    msg = {"type": "track", "userId": "u1", "event": "e"}
    for good, bad in [("tk_live_123", "tok_unknown_5"), ("tk_globex", "tok_unknown_5")]:
        for scheme in ("Token", "Bearer"):
            yield "POST", "/api/v1/event", {"Authorization": f"{scheme} {good}"}, event
            yield "POST", "/api/v1/event", {"Authorization": f"{scheme} {bad}"}, event
    for token in ("fae3009c1123ab827aa5e0929d2d0d8b", "tg_globex", "api_tok_unknown_6"):
        yield "GET", f"/v1/events/track?data={data}&api_token={token}", {}, None
        yield "GET", f"/v1/users/nowhere?api_token={token}", {}, None
    for key, secret in [("your_api_key", "your_api_secret"), ("rk_unknown_7", "rs_unknown_8")]:
        yield "POST", "/events", {"key": key, "secret": secret}, {"event": "e", "customer_id": "c1"}
        yield "POST", "/customers", {"api-key": key, "api-secret": secret}, {"customer_id": "c1"}
    for site, key in [("YOUR-SITE-ID-HERE", "YOUR-SECRET-API-KEY-HERE"), ("site_unknown_9", "cio_unknown_10")]:
        yield "PUT", "/api/v1/customers/c1", {"Authorization": basic(site, key)}, {"email": "a@example.com"}
        yield "POST", "/api/v2/batch", {"Authorization": basic(site, key)}, {"batch": "not a list"}
    for wk in ("wk_globex", "wk_unknown_11"):
        yield "POST", "/v1/track", {"Authorization": basic(wk)}, msg
        yield "POST", "/v1/track", {}, {**msg, "writeKey": wk}
        yield "POST", "/v1/batch", {}, {"batch": [msg], "writeKey": wk}
    for token in ("op_token_9f2", "adm_1", "bearer_unknown_12"):
        yield "POST", "/admin/v1/sql", {"Authorization": f"Bearer {token}"}, None
        yield "POST", "/admin/v1/train", {"Authorization": f"Bearer {token}"}, None


@pytest.fixture(params=["text", "json"])
def captured(request):
    """The handler set up as ``_setup_logging`` sets up the root's, on the loggers the app uses."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logsafe.formatter(request.param))
    handler.addFilter(requestlog.ContextFilter())
    logsafe.install([handler], logsafe.config_secrets(CONFIG), rate_limit=0)
    loggers = [logging.getLogger(n) for n in ("goalstream", "aiohttp.server", "aiohttp.web")]  # aiohttp.access is off in production (access_log=None)
    saved = [(lg.handlers[:], lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.handlers[:], lg.propagate = [handler], False
        lg.setLevel(logging.DEBUG)
    yield request.param, stream
    for lg, (handlers, propagate, level) in zip(loggers, saved):
        lg.handlers[:], lg.propagate = handlers, propagate
        lg.setLevel(level)


async def _client(**settings) -> TestClient:
    app = create_app(GatewaySettings(**settings), CONFIG, producer=Producer(), warehouse=Warehouse())
    client = TestClient(TestServer(app))
    await client.server.start_server(auto_decompress=False, max_line_size=MAX_LINE)
    await client.start_server()
    return client


def _access_lines(fmt: str, out: str) -> list[dict]:
    lines = [ln for ln in out.splitlines() if "goalstream.access" in ln]
    return [json.loads(ln) for ln in lines] if fmt == "json" else [{"text": ln} for ln in lines]


async def test_no_credential_in_any_position_reaches_the_logs(captured):
    fmt, stream = captured
    client = await _client()
    sent = 0
    try:
        for method, path, headers, body in calls():
            resp = await client.request(method, path, headers=headers, json=body)
            assert resp.headers.get("X-Request-Id"), (method, path)
            sent += 1
    finally:
        await client.close()
    out = stream.getvalue()
    for secret in KNOWN + UNKNOWN:
        assert secret not in out, f"{secret} leaked into the {fmt} log"
    assert "api_token" not in out and "?" not in "".join(ln for ln in out.splitlines() if "goalstream.access" in ln)
    access = _access_lines(fmt, out)
    assert len(access) == sent  # one access line per request, none rate-limited away
    if fmt == "json":
        for entry in access:
            assert {"time", "level", "logger", "message", "method", "route", "status", "duration_ms", "dialect", "request_id"} <= set(entry)
        assert {e["dialect"] for e in access} == {"traitly", "triggerly", "retainly", "customerio", "segment", "admin"}
        assert any(e.get("workspace") == "acme" for e in access)


async def test_a_401_leaves_an_access_line_with_the_reason(captured):
    fmt, stream = captured
    client = await _client()
    try:
        resp = await client.post("/api/v1/event", headers={"Authorization": "Token tok_unknown_5", "X-Request-Id": "sdk-run_42.a:1"},
                                 json=[{"customer_id": "c1", "name": "x"}])
        body = await resp.json()
    finally:
        await client.close()
    assert resp.status == 401 and resp.headers["X-Request-Id"] == "sdk-run_42.a:1"
    [line] = _access_lines(fmt, stream.getvalue())
    reason = body["error"]["message"]
    if fmt == "json":
        assert line["status"] == 401 and line["reason"] == reason and line["route"] == "/api/v1/event"
        assert line["request_id"] == "sdk-run_42.a:1" and line["dialect"] == "traitly" and line["method"] == "POST"
    else:
        assert " 401 " in line["text"] and reason in line["text"] and "request_id=sdk-run_42.a:1" in line["text"]
    assert "tok_unknown_5" not in stream.getvalue()


@pytest.mark.parametrize("path, headers", [
    ("/v1/track", {}),  # segment 401
    ("/customers", {}),  # retainly 403
    ("/api/v2/batch", {}),  # customer.io 401
    ("/v1/events/track", {}),  # trigger.ly 401
    ("/nowhere", {}),  # aiohttp's 404, rendered by the fallback dialect
])
async def test_errors_carry_the_request_id_in_every_dialect(path, headers):
    client = await _client()
    try:
        sent = await client.post(path, headers={"X-Request-Id": "abc-123"}, json={})
        bad = await client.post(path, headers={"X-Request-Id": "no spaces or <html>"}, json={})
        long = await client.post(path, headers={"X-Request-Id": "a" * 129}, json={})
    finally:
        await client.close()
    assert sent.status >= 400 and sent.headers["X-Request-Id"] == "abc-123"
    for resp in (bad, long):
        rid = resp.headers["X-Request-Id"]
        assert rid and len(rid) == 32 and rid.isalnum()  # replaced by a fresh one


def test_accept_id_bounds():
    assert requestlog.accept_id("a" * 128) == "a" * 128
    assert requestlog.accept_id("a" * 129) != "a" * 129
    assert requestlog.accept_id(None) != requestlog.accept_id(None)


def test_json_lines_redact_extra_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logsafe.formatter("json"))
    logsafe.install([handler], ["s3cr3t_value"], rate_limit=0)
    logger = logging.getLogger("test.requestlog.json")
    logger.handlers[:], logger.propagate = [handler], False
    logger.warning("multi\nline %s", "s3cr3t_value", extra={"reason": "bad s3cr3t_value", "detail": {"api_token": "x1"}})
    [line] = stream.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["message"] == "multi\nline [redacted]" and entry["reason"] == "bad [redacted]"
    assert "x1" not in line and entry["level"] == "WARNING" and entry["logger"] == "test.requestlog.json"


async def test_an_unrouted_path_cannot_forge_a_log_line(captured):
    fmt, stream = captured
    client = await _client()
    try:
        resp = await client.get("/nowhere%0A2026-01-01 00:00:00,000 INFO goalstream.access: forged" + "x" * 300)
    finally:
        await client.close()
    assert resp.status == 404
    [line] = [ln for ln in stream.getvalue().splitlines() if "goalstream.access" in ln]
    assert "%0A" in line and "x" * 201 not in line


@pytest.mark.parametrize("which, logged", [("errors", ["/api/v1/event 401"]), ("off", [])])
async def test_access_log_errors_only_or_off(captured, which, logged):
    fmt, stream = captured
    client = await _client(access_log=which)
    try:
        assert (await client.get("/openapi.json")).status == 200
        await client.post("/api/v1/event", json=[])
    finally:
        await client.close()
    lines = [ln for ln in stream.getvalue().splitlines() if "goalstream.access" in ln]
    assert len(lines) == len(logged) and all(want in ln for want, ln in zip(logged, lines))
