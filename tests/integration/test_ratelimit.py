"""Rate limits and safe logs through ``goalstream up``, limits switched on by environment.

One stack for the module, the tests in order: a burst per dialect (and the admin API) is
cut with 429 + Retry-After in that dialect's own shape; hostile requests (CR/LF-injected
credential headers, over-long request lines carrying ``api_token``, credential headers
too long or not UTF-8, wrong credentials, a flood of malformed requests); failed
authentications lock the address out; and last, with the stack stopped, its stderr holds
no configured credential, no traceback, one line per record, and the flood as a
"suppressed" count."""

from __future__ import annotations

import base64
import json
import re
import socket
import urllib.error
import urllib.request

import pytest

from ingest_gateway.logsafe import config_secrets
from schemas.config import parse_config
from tests.conftest import StackProcess, globex_config

pytestmark = pytest.mark.integration

ENV = {
    "GOALSTREAM_RATE_LIMIT_PER_CREDENTIAL": "0.2",  # one request every 5 s ...
    "GOALSTREAM_RATE_LIMIT_PER_CREDENTIAL_BURST": "3",  # ... after a burst of 3
    "GOALSTREAM_RATE_LIMIT_PER_WORKSPACE": "50",
    "GOALSTREAM_RATE_LIMIT_AUTH_FAILURES": "40",  # per client IP per minute
}
TRIGGERLY = "fae3009c1123ab827aa5e0929d2d0d8b"


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    s = StackProcess(tmp_path_factory.mktemp("ratelimit"), env=ENV).start()
    s.token = json.loads((s.workdir / "var" / "run" / "stack.json").read_text())["token"]
    yield s
    s.close()


def call(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def burst(send, n: int = 6):
    """Send until refused; the answers as (status, headers, body)."""
    answers = [send() for _ in range(n)]
    statuses = [a[0] for a in answers]
    assert statuses[:3] == [200, 200, 200] or statuses[:3] == [204, 204, 204], statuses
    assert 429 in statuses, statuses
    refused = answers[statuses.index(429)]
    assert 1 <= int(refused[1]["Retry-After"]) <= 5
    return refused


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_traitly_burst(limited):
    h = {"Authorization": "Token tk_live_123", "Content-Type": "application/json"}
    body = json.dumps({"customer_id": "1", "name": "Logged in"}).encode()
    _, headers, raw = burst(lambda: call(f"{limited.url}/api/v1/event", "POST", body, h))
    error = json.loads(raw)["error"]
    assert error["type"] == "api_error" and "rate limit" in error["message"]


def test_triggerly_burst_json_and_pixel(limited):
    data = base64.b64encode(json.dumps({"type": "purchase", "user_id": "u1"}).encode()).decode()
    url = f"{limited.url}/v1/events/track?api_token={TRIGGERLY}&data={data}"
    _, headers, raw = burst(lambda: call(url))
    assert json.loads(raw)["status"] == "error" and headers["Cache-Control"].startswith("no-cache")
    status, headers, raw = call(url + "&image=1")
    assert status == 429 and headers["Content-Type"] == "image/gif" and raw.startswith(b"GIF")
    assert 1 <= int(headers["Retry-After"]) <= 5


def test_retainly_burst(limited):
    h = {"key": "your_api_key", "secret": "your_api_secret", "Content-Type": "application/json"}
    body = json.dumps({"customer_id": 1, "event": "signed_up", "data": {}}).encode()
    _, _, raw = burst(lambda: call(f"{limited.url}/events", "POST", body, h))
    assert "rate limit" in json.loads(raw)  # the events API answers a JSON string
    status, headers, raw = call(f"{limited.url}/customers", "POST", json.dumps({"customers": [{"id": 1}]}).encode(), h)
    assert status == 429 and "Retry-After" in headers and "rate limit" in json.loads(raw)["detail"]


def test_customerio_burst_v1_and_v2(limited):
    h = {"Authorization": basic("YOUR-SITE-ID-HERE", "YOUR-SECRET-API-KEY-HERE"), "Content-Type": "application/json"}
    body = json.dumps({"email": "a@example.com"}).encode()
    _, _, raw = burst(lambda: call(f"{limited.url}/api/v1/customers/5", "PUT", body, h))
    assert "rate limit" in json.loads(raw)["meta"]["error"]
    v2 = json.dumps({"batch": [{"type": "person", "identifiers": {"id": "5"}, "action": "identify"}]}).encode()
    status, headers, raw = call(f"{limited.url}/api/v2/batch", "POST", v2, h)
    assert status == 429 and "Retry-After" in headers
    assert "rate limit" in json.loads(raw)["errors"][0]["message"]


def test_segment_burst(limited):
    h = {"Authorization": basic("wk_1", ""), "Content-Type": "application/json"}
    body = json.dumps({"userId": "u1", "event": "Signed Up"}).encode()
    _, _, raw = burst(lambda: call(f"{limited.url}/v1/track", "POST", body, h))
    answer = json.loads(raw)
    assert answer["success"] is False and answer["code"] == "rate_limit"


def test_admin_burst(limited):
    h = {"Authorization": "Bearer adm_1"}
    _, _, raw = burst(lambda: call(f"{limited.url}/admin/v1/train", "POST", b"", h))
    assert "rate limit" in json.loads(raw)["error"]["message"]


def raw_request(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
    return out


def test_hostile_requests_get_4xx(limited):
    token = limited.token
    probes = [
        b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nAuthorization: Token tk_live_123\rX: y\r\nContent-Length: 0\r\n\r\n",
        b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nAuthorization: Token tk_live_123\nInjected: 1\r\n\r\n",
        b"POST /admin/v1/sql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token.encode() + b"\rX: 1\r\n\r\n",
        b"POST /admin/v1/sql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer adm_1\x00\r\n\r\n",
        f"GET /v1/events/track?api_token={TRIGGERLY}&data={'A' * 70000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"GET /v1/users/track?data=x&api_token={TRIGGERLY}{'B' * 70000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nAuthorization: Token tk_globex" + b"C" * 9000 + b"\r\n\r\n",
        b"POST /events HTTP/1.1\r\nHost: x\r\nkey: your_api_key\r\nsecret: your_api_secret\x00\r\n\r\n",
        b"POST /events HTTP/1.1\r\nHost: x\r\nkey: rk_globex\r\nsecret: rs_globex\r\nsecret: rs_globex\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"POST /v1/track HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic("wk_globex", "").encode() + b"\x7f\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"YOUR-SITE-ID-HERE:YOUR-SECRET-API-KEY-HERE",
        b"PUT /api/v1/customers/5 HTTP/1.1\r\nHost: x\r\nAuthorization: " + basic("site_globex", "cio_globex").encode() + b"\r\n X: folded\r\n\r\n",
    ]
    for probe in probes:
        answer = raw_request(limited.port, probe)
        status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 400
        assert 400 <= status < 500, (probe[:60], answer[:200])
    # Wrong and non-UTF-8 credentials, through an ordinary client: 401/403, never 5xx.
    for headers in (
        {"Authorization": "Token " + token},
        {"Authorization": "Token tk_live_1234"},
        {"Authorization": basic("YOUR-SITE-ID-HERE", "cio_globex")},
    ):
        status, _, _ = call(f"{limited.url}/api/v1/event", "POST", b"{}", headers)
        assert status in (401, 403), headers
    answer = raw_request(limited.port, b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nAuthorization: Token tk\xff\xfe\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert answer.split(b" ", 2)[1] in (b"400", b"401"), answer[:200]
    status, _, _ = call(f"{limited.url}/v1/users/track?api_token=tg_wrong_{TRIGGERLY}&data=e30&image=1")
    assert status == 401


def test_a_flood_of_bad_requests(limited):
    for i in range(60):
        raw_request(limited.port, f"GET /v1/events/track?api_token={TRIGGERLY}&n={i}{'D' * 66000} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def test_failed_authentication_locks_the_address_out(limited):
    statuses = []
    for _ in range(45):
        status, headers, raw = call(f"{limited.url}/v1/track", "POST", b'{"event":"x","userId":"1"}',
                                    {"Authorization": basic("wk_wrong", ""), "Content-Type": "application/json"})
        statuses.append(status)
        if status == 429:
            break
    assert statuses[-1] == 429 and set(statuses[:-1]) == {401}, statuses
    assert json.loads(raw)["code"] == "rate_limit" and int(headers["Retry-After"]) >= 1
    # The right key from the same address is refused too, before it is compared ...
    status, _, _ = call(f"{limited.url}/api/v1/event", "POST", b"{}", {"Authorization": "Token tk_live_123"})
    assert status == 429
    # ... but health is not limited.
    assert call(f"{limited.url}/healthz")[0] == 200


def test_zz_the_log_holds_no_secret_and_no_traceback(limited):
    assert limited.terminate(120) == 0
    log = limited.err_path.read_text(errors="replace")
    secrets = config_secrets(parse_config(globex_config())) + [limited.token, "tk_globex"]
    leaks = {s: log.count(s) for s in secrets if s in log}
    assert leaks == {}, leaks
    assert "Traceback" not in log
    record = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")
    strays = [line for line in log.splitlines() if not record.match(line)]
    assert strays == [], strays[:5]  # one line per record: nothing continues onto a next line
    bad = [line for line in log.splitlines() if "bad HTTP request from 127.0.0.1" in line]
    assert 10 <= len(bad) <= 20, len(bad)  # the default: 20 per template per minute
    assert re.search(r"suppressed \d+ similar messages in the last \d+s: 'bad HTTP request from %s: %s'", log)
    assert "ERROR aiohttp" not in log
