"""Hostile input to every dialect: oversize and compressed bodies, broken encodings, binary
credentials, forged cursors, values that would be silently altered, and HTTP framing.

What must hold: every probe gets a 4xx (or the connection is closed on a framing error),
never a 5xx; nothing a probe sent is stored; the refused data is not quietly changed into
something else (an integer beyond int64 is refused or kept exactly, never a float).
"""

from __future__ import annotations

import base64
import json
import time
from typing import Callable
from urllib.parse import quote

import pytest

from tests.hostile.conftest import SECRETS, gz, operator_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ACME = SECRETS["acme"]


def b64(s: str | bytes) -> str:
    return base64.b64encode(s if isinstance(s, bytes) else s.encode()).decode()


# Each dialect's write endpoint, as (method, path, headers) and a body builder that puts the
# raw JSON text `props` (an object) where that vendor keeps an event's properties.
Body = Callable[[str, str, str], bytes]
DIALECTS: dict[str, tuple[str, str, list[tuple[str, str]], Body]] = {
    "traitly": (
        "POST", "/api/v1/event", [("Authorization", f"Token {ACME['traitly_token']}")],
        lambda cid, name, props: f'{{"customer_id": "{cid}", "name": "{name}", "p": {props}}}'.encode(),
    ),
    "retainly": (
        "POST", "/events", [("key", ACME["retainly_key"]), ("secret", ACME["retainly_secret"])],
        lambda cid, name, props: f'{{"customer_id": "{cid}", "event": "{name}", "data": {props}}}'.encode(),
    ),
    "customerio": (
        "POST", "/api/v2/batch",
        [("Authorization", "Basic " + b64(f"{ACME['customerio_site_id']}:{ACME['customerio_api_key']}")),
         ("Content-Type", "application/json")],
        lambda cid, name, props: (
            f'{{"batch": [{{"type": "person", "action": "event", "identifiers": {{"id": "{cid}"}}, '
            f'"name": "{name}", "attributes": {props}}}]}}'
        ).encode(),
    ),
    "customerio-v1": (
        "POST", "/api/v1/customers/hostile-v1/events",
        [("Authorization", "Basic " + b64(f"{ACME['customerio_site_id']}:{ACME['customerio_api_key']}")),
         ("Content-Type", "application/json")],
        lambda cid, name, props: f'{{"name": "{name}", "data": {props}}}'.encode(),
    ),
    "segment": (
        "POST", "/v1/batch", [("Authorization", "Basic " + b64(f"{ACME['segment_write_key']}:")), ("Content-Type", "application/json")],
        lambda cid, name, props: (
            f'{{"batch": [{{"type": "track", "userId": "{cid}", "event": "{name}", "properties": {props}}}]}}'
        ).encode(),
    ),
}


def triggerly_path(data: bytes, token: str = ACME["triggerly_api_token"], pixel: bool = False) -> str:
    return f"/v1/events/track?api_token={quote(token)}&data={quote(b64(data))}" + ("&image=1" if pixel else "")


def triggerly_event(cid: str, name: str, props: str) -> bytes:
    return f'{{"type": "{name}", "user_id": "{cid}", "p": {props}}}'.encode()


def refused(reply) -> bool:
    return reply.status is not None and 400 <= reply.status < 500


def send(attacker, dialect: str, body: bytes, *, category: str, probe: str, extra: list[tuple[str, str]] | None = None):
    method, path, headers, _ = DIALECTS[dialect]
    return attacker.request(method, path, headers + (extra or []), body, category=category, probe=f"{dialect}: {probe}")


# Values that must be refused (or, for big integers, kept exactly): JSON text of an object.
ALTERING = {
    "int 2**64": '{"n": 18446744073709551616}',
    "int -2**63-1": '{"n": -9223372036854775809}',
    "int 30 digits": '{"n": 123456789012345678901234567890}',
    "duplicate key": '{"a": 1, "a": 2}',
    "duplicate nested key": '{"o": {"b": 1, "b": 1}}',
    "NUL in value": '{"a": "x\\u0000y"}',
    "NUL in key": '{"a\\u0000b": 1}',
    "10001 properties": "{" + ", ".join(f'"k{i}": {i}' for i in range(10001)) + "}",
}


def test_values_that_would_be_altered_are_refused(attacker, seeded):
    for dialect, (_, _, _, build) in DIALECTS.items():
        for name, props in ALTERING.items():
            cid = "hostile-alter"
            r = send(attacker, dialect, build(cid, "hostile event", props), category="exact-data", probe=name)
            assert refused(r), (dialect, name, r.status, r.body[:300])
        for name, (cid, ev) in {"NUL in id": ("hostile-\\u0000x", "e"), "NUL in name": ("hostile-n", "ev\\u0000il")}.items():
            if dialect == "customerio-v1" and name == "NUL in id":
                continue  # its id is in the path (below)
            r = send(attacker, dialect, build(cid, ev, "{}"), category="exact-data", probe=name)
            assert refused(r), (dialect, name, r.status, r.body[:300])
    method, _, headers, _ = DIALECTS["customerio-v1"]
    r = attacker.request(method, "/api/v1/customers/hostile-%00x/events", headers, b'{"name": "e"}', category="exact-data",
                         probe="customerio-v1: NUL in path id")
    assert refused(r), (r.status, r.body[:300])
    for name, props in ALTERING.items():
        r = attacker.request("GET", triggerly_path(triggerly_event("hostile-alter", "e", props)), category="exact-data",
                             probe=f"triggerly: {name}")
        assert refused(r), ("triggerly", name, r.status, r.body[:300])


def test_bodies_sizes_and_encodings(attacker, seeded, bomb):
    big = b'{"customer_id": "hostile-big", "name": "x", "pad": "' + b"a" * (20 * 1024 * 1024) + b'"}'
    for dialect in DIALECTS:
        for name, body, extra in (
            ("20 MB body", big, []),
            ("gzip bomb", bomb, [("Content-Encoding", "gzip")]),
            ("gzip header, plain body", b'{"a": 1}', [("Content-Encoding", "gzip")]),
            ("truncated gzip", gz(b'{"a": 1}' * 100)[:30], [("Content-Encoding", "gzip")]),
            ("zstd", b"\x28\xb5\x2f\xfd garbage", [("Content-Encoding", "zstd")]),
            ("br", b"garbage", [("Content-Encoding", "br")]),
            ("deflate garbage", b"garbage", [("Content-Encoding", "deflate")]),
            ("unknown encoding", b'{"a": 1}', [("Content-Encoding", "x-evil")]),
            ("gzip, gzip", gz(gz(b'{"a": 1}')), [("Content-Encoding", "gzip, gzip")]),
            ("invalid utf-8", b'{"customer_id": "hostile-\xff\xfe", "name": "x"}', []),
            ("2 MB of [", b"[" * (2 * 1024 * 1024), []),
            ("deep nesting", b'{"a":' * 10000 + b"1" + b"}" * 10000, []),
            ("NaN", b'{"customer_id": "hostile-nan", "name": "x", "v": NaN}', []),
            ("1e400", b'{"customer_id": "hostile-inf", "name": "x", "v": 1e400}', []),
            ("not json", b"\x00\x01\x02", []),
        ):
            r = send(attacker, dialect, body, category="bodies", probe=name, extra=extra)
            assert refused(r), (dialect, name, r.status, r.body[:300])
    # The admin SQL endpoint too.
    for name, body, extra in (("20 MB body", big, []), ("gzip bomb", bomb, [("Content-Encoding", "gzip")]),
                              ("zstd", b"garbage", [("Content-Encoding", "zstd")])):
        r = attacker.request("POST", "/admin/v1/sql", [("Authorization", f"Bearer {ACME['admin_token']}")] + extra, body,
                             category="bodies", probe=f"admin sql: {name}")
        assert refused(r), ("admin sql", name, r.status, r.body[:300])


def test_single_record_over_the_broker_limit_is_a_permanent_refusal(attacker, seeded):
    # 9 MB: under the 16 MiB body limit, over what one Kafka message may hold.
    body = b'{"customer_id": "hostile-9mb", "name": "x", "pad": "' + b"a" * (9 * 1024 * 1024) + b'"}'
    r = attacker.request("POST", "/api/v1/event", [("Authorization", f"Token {ACME['traitly_token']}")], body,
                         category="bodies", probe="traitly: 9 MB event")
    assert r.status in (400, 413), (r.status, r.body[:300])
    assert "retry-after" not in r.headers


def test_binary_credentials_are_401(attacker, seeded):
    probes = [
        ("traitly", "POST", "/api/v1/event", [(b"Authorization", b"Token tk\xff\xfe")]),
        ("traitly", "POST", "/api/v1/event", [(b"Authorization", b"Bearer tk_live_123\xff")]),
        ("traitly", "GET", "/api/v1/customer", [(b"Authorization", b"Token \xc3\x28")]),
        ("retainly", "POST", "/events", [(b"key", b"rk\xff"), (b"secret", b"rs\xfe")]),
        ("retainly", "POST", "/customers", [(b"api-key", ACME["retainly_key"].encode()), (b"api-secret", b"\xff\xff")]),
        ("customerio", "POST", "/api/v2/batch", [(b"Authorization", b"Basic " + base64.b64encode(b"\xff\xfe:\xfd"))]),
        ("customerio", "PUT", "/api/v1/customers/hostile-1", [(b"Authorization", b"Basic \xff\xfe")]),
        ("segment", "POST", "/v1/batch", [(b"Authorization", b"Basic " + base64.b64encode(b"wk\xff:"))]),
        ("admin", "POST", "/admin/v1/sql", [(b"Authorization", b"Bearer adm\xff")]),
        ("admin", "POST", "/admin/v1/train", [(b"Authorization", b"Bearer \xff\xfe\xfd")]),
    ]
    for dialect, method, path, headers in probes:
        r = attacker.request(method, path, headers, b'{"customer_id": "hostile-cred", "name": "x"}', category="credentials",
                             probe=f"{dialect} {path}")
        assert r.status in (401, 403), (dialect, path, r.status, r.body[:300])
    for token in ("%ff%fe", "fae3009c1123ab827aa5e0929d2d0d8b%00", "%c3%28"):
        r = attacker.request("GET", f"/v1/events/track?api_token={token}&data={b64('{}')}", category="credentials",
                             probe="triggerly api_token")
        assert r.status in (400, 401, 403), (token, r.status, r.body[:300])


def test_forged_cursors_are_400(attacker, seeded):
    for path in ("/api/v1/event", "/api/v1/customer"):
        for cursor in ('["abc","x"]', '[null,"x"]', '[1e300,"x"]', '["x"]', "[]", '{"a":1}', "%ff", "A" * 10000,
                       b64('["abc","x"]'), b64('[1e300,"x"]'), b64('[null]'), b64("[" * 1000), "!!!"):
            r = attacker.request("GET", f"{path}?cursor={quote(cursor)}", [("Authorization", f"Token {ACME['traitly_token']}")],
                                 category="cursor", probe=path)
            assert r.status == 400, (path, cursor[:40], r.status, r.body[:300])


def test_http_framing(attacker, seeded):
    t = ACME["traitly_token"].encode()
    body = b'{"customer_id": "hostile-frame", "name": "x"}'
    probes = {
        "CRLF in header": b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nAuthorization: Token " + t + b"\r\n\rX: y\r\nContent-Length: 2\r\n\r\n{}",
        "bare LF header": b"POST /api/v1/event HTTP/1.1\nHost: x\nAuthorization: Token " + t + b"\x0d\x0aBad\x0a: y\r\n\r\n",
        "CL and TE": b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two CL": b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        "bad chunk": b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "header no colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization Token " + t + b"\r\n\r\n",
        "1 MB URL": b"GET /v1/events/track?api_token=" + ACME["triggerly_api_token"].encode() + b"&data=" + b"A" * (1 << 20) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        "100 KB header": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
        "NUL in path": b"GET /api/v1/\x00event HTTP/1.1\r\nHost: x\r\n\r\n",
        "bad version": b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
        "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,
        "obs-fold": b"POST /api/v1/event HTTP/1.1\r\nHost: x\r\nAuthorization: Token\r\n " + t + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
    }
    for name, raw in probes.items():
        r = attacker.send_raw(raw, category="framing", probe=name, timeout=20)
        assert r.status is None or 400 <= r.status < 500, (name, r.status, r.body[:300])


def test_pixels_of_strangers_are_not_stored(attacker, seeded):
    before = int(operator_rows(attacker, "SELECT count() AS n FROM deadletters")[0]["n"])
    for i in range(50):
        r = attacker.request("GET", triggerly_path(b"not json" * 50, token=f"wrong-token-{i}", pixel=True),
                             category="pixels", probe="unauthenticated refused pixel")
        assert r.status is not None and r.status < 500
    # An authenticated refused pixel is kept (its sender cannot see the error) without the token.
    r = attacker.request("GET", triggerly_path(b"not json", pixel=True), category="pixels", probe="authenticated refused pixel")
    assert r.status is not None and r.status < 500
    time.sleep(3)
    rows = operator_rows(attacker, "SELECT * FROM deadletters WHERE stage LIKE 'gateway:%'")
    after = int(operator_rows(attacker, "SELECT count() AS n FROM deadletters")[0]["n"])
    assert after - before <= 1, after - before
    text = json.dumps(rows)
    assert ACME["triggerly_api_token"] not in text
    assert "wrong-token-" not in text
    # Counted, not stored.
    health = attacker.request("GET", "/healthz", category="pixels", probe="healthz counters").json()
    assert health["counters"]["pixel_unauthenticated"] >= 50, health


def test_nothing_a_probe_sent_was_stored(attacker, seeded):
    time.sleep(3)  # let the processors store anything that was (wrongly) accepted
    assert operator_rows(attacker, "SELECT count() AS n FROM events WHERE customer_id LIKE 'hostile%'")[0]["n"] in (0, "0")
    assert operator_rows(attacker, "SELECT count() AS n FROM customers WHERE customer_id LIKE 'hostile%'")[0]["n"] in (0, "0")
    # No stored number was silently turned into a float.
    assert operator_rows(attacker, "SELECT count() AS n FROM events WHERE properties LIKE '%e+%'")[0]["n"] in (0, "0")
