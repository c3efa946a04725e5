"""trigger.ly through ``goalstream up``: the seed's two examples sent with curl as printed
(host changed), their data read back typed from ClickHouse, event dates as event times,
the base64 variants real clients send, and errors: JSON for API callers, the GIF (and a
dead letter) for pixels."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from datetime import datetime, timezone

from tests.conftest import wait_for

TOKEN = "fae3009c1123ab827aa5e0929d2d0d8b"
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
SEED_USER = (
    "/v1/users/track?api_token=fae3009c1123ab827aa5e0929d2d0d8b&data=eyJpZCI6ICJ1c2VyMTNAZ21haWwuY29tIiwgImVtYWlsIjogInVzZXIxM0Bn"
    "bWFpbC5jb20iLCAibmFtZSI6ICJKZWZmIERlYW4iLCAiYWdlIjogMzEsICJnZW5kZXIiOiAibWFsZSIsICJzaWdudXBfZGF0ZSI6ICIyMDEyLTEyLTI0In0=&image=1"
)
SEED_EVENT = (
    "/v1/events/track?api_token=fae3009c1123ab827aa5e0929d2d0d8b&data=eyJ0eXBlIjogInB1cmNoYXNlIiwgInVzZXJfaWQiOiAidXNlcjEzQGdtYWls"
    "LmNvbSIsICJ2YWx1ZSI6IDE0Mi4xMn0="
)


def curl(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """GET ``url`` byte for byte as given (--globoff: no [] {} globbing); status, headers, body."""
    out = subprocess.run(
        ["curl", "-s", "--globoff", "-D", "-", *args, url], capture_output=True, timeout=30, check=True
    ).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def b64(obj, *, urlsafe: bool = False, pad: bool = True) -> str:
    raw = json.dumps(obj, ensure_ascii=False).encode()
    s = (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(raw).decode()
    return s if pad else s.rstrip("=")


def rows(stack, query: str) -> list[dict]:
    return [json.loads(line) for line in stack.sql(query, "JSONEachRow").splitlines()]


def ms(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


NO_CACHE = {
    "cache-control": "no-cache, no-store, must-revalidate, private",
    "pragma": "no-cache",
    "expires": "0",
}


def assert_no_cache(headers: dict[str, str]) -> None:
    for k, v in NO_CACHE.items():
        assert headers.get(k) == v, (k, headers)


def test_seed_user_example(stack):
    status, headers, body = curl(stack.url + SEED_USER)
    assert status == 200 and body == PIXEL and headers["content-type"] == "image/gif"
    assert_no_cache(headers)
    q = (
        "SELECT customer_id, name, email, attrs.age AS age, dynamicType(attrs.age) AS age_t, "
        "toString(attrs.signup_date) AS signup, dynamicType(attrs.signup_date) AS signup_t, "
        "dynamicType(attrs.gender) AS gender_t, dynamicType(attrs.name) AS name_t "
        "FROM customers_typed WHERE workspace = 'acme' AND customer_id = 'user13@gmail.com'"
    )
    (row,) = wait_for(lambda: rows(stack, q))
    assert row == {
        "customer_id": "user13@gmail.com", "name": "Jeff Dean", "email": "user13@gmail.com",
        "age": 31, "age_t": "Int64", "signup": "2012-12-24", "signup_t": "Date", "gender_t": "String", "name_t": "String",
    }
    # Lossless: the attribute itself is the string as sent.
    (raw,) = rows(stack, "SELECT attributes FROM customers FINAL WHERE workspace = 'acme' AND customer_id = 'user13@gmail.com'")
    assert json.loads(raw["attributes"])["signup_date"] == "2012-12-24"


def test_seed_event_example(stack):
    status, headers, body = curl(stack.url + SEED_EVENT)
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"status": "ok"}
    assert_no_cache(headers)
    q = (
        "SELECT customer_id, name, source, props.value AS value, dynamicType(props.value) AS value_t, "
        "toUnixTimestamp64Milli(timestamp) AS ts, toUnixTimestamp64Milli(received_at) AS rcv "
        "FROM events_typed WHERE workspace = 'acme' AND name = 'purchase' AND customer_id = 'user13@gmail.com'"
    )
    (row,) = wait_for(lambda: rows(stack, q))
    assert row["value"] == 142.12 and row["value_t"] == "Float64" and row["source"] == "triggerly"
    assert row["ts"] == row["rcv"]  # no date: the time of the call


DATES = [
    ("Wed, 04 Jul 2001 12:08:56 -0700", ms(2001, 7, 4, 19, 8, 56)),
    ("2001-07-04T12:08:56.235-0700", ms(2001, 7, 4, 19, 8, 56) + 235),
    ("2001-07-04", ms(2001, 7, 4)),
    ("2011/07/04", ms(2011, 7, 4)),
]


def test_event_dates_and_typed_properties(stack):
    """Each documented format as ``date`` is the event time in UTC; as a property it is a date."""
    user = f"dates-{uuid.uuid4().hex[:8]}"
    for i, (value, _) in enumerate(DATES):
        data = {"type": f"dated{i}", "user_id": user, "date": value, "seen": value, "n": 3, "ok": True, "ratio": 0.5}
        status, _, body = curl(f"{stack.url}/v1/events/track?api_token={TOKEN}&data={b64(data)}")
        assert status == 200, body
    q = (
        "SELECT name, toUnixTimestamp64Milli(timestamp) AS ts, dynamicType(props.n) AS n_t, dynamicType(props.ok) AS ok_t, "
        "dynamicType(props.ratio) AS ratio_t, JSONHas(properties, 'date') AS has_date, JSONExtractString(properties, 'seen') AS seen "
        f"FROM events_typed WHERE workspace = 'acme' AND customer_id = '{user}' ORDER BY name"
    )
    got = wait_for(lambda: (r := rows(stack, q)) and len(r) == len(DATES) and r)
    for i, (value, expected_ms) in enumerate(DATES):
        assert got[i]["name"] == f"dated{i}"
        assert got[i]["ts"] == expected_ms, value
        assert got[i]["seen"] == value  # kept as sent
        assert (got[i]["n_t"], got[i]["ok_t"], got[i]["ratio_t"], got[i]["has_date"]) == ("Int64", "Bool", "Float64", 0)
        # The view types the string. Read one row at a time: a JSON cast unifies a path's
        # inferred type over the rows it reads together (Date + DateTime -> DateTime).
        (typed,) = rows(stack, f"SELECT dynamicType(props.seen) AS t FROM events_typed WHERE customer_id = '{user}' AND name = 'dated{i}'")
        assert typed["t"] in ("Date", "DateTime", "DateTime64(9)"), (value, typed)

def test_anonymous_event_is_stored(stack):
    kind = f"anon-{uuid.uuid4().hex[:8]}"
    status, _, body = curl(f"{stack.url}/v1/events/track?api_token={TOKEN}&data={b64({'type': kind, 'page': '/pricing'})}&image=1")
    assert status == 200 and body == PIXEL
    q = f"SELECT customer_id, anonymous_id, identified_id, toString(props.page) AS page FROM events_typed WHERE name = '{kind}'"
    assert wait_for(lambda: rows(stack, q)) == [{"customer_id": "", "anonymous_id": "", "identified_id": "", "page": "/pricing"}]


def test_base64_variants(stack):
    """Standard with a raw '+' (arrives as a space), percent-encoded, URL-safe unpadded, Ruby's encode64."""
    answer = "\u00fb\u00ff>>>???"
    user = f"b64-{uuid.uuid4().hex[:8]}"
    data = {"type": "quiz", "user_id": user, "answer": answer}
    std = b64(data)
    assert "+" in std and "/" in std and std.endswith("=")
    ruby = base64.encodebytes(json.dumps(data).encode()).decode()
    variants = [
        std,
        std.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"),
        b64(data, urlsafe=True, pad=False),
        ruby.replace("\n", "%0A").replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"),
    ]
    for v in variants:
        status, _, body = curl(f"{stack.url}/v1/events/track?api_token={TOKEN}&data={v}")
        assert status == 200, (v, body)
    q = f"SELECT toString(props.answer) AS a FROM events_typed WHERE customer_id = '{user}'"
    assert wait_for(lambda: (r := rows(stack, q)) and len(r) == len(variants) and r) == [{"a": answer}] * len(variants)


def test_errors_keep_their_status_and_shape(stack):
    status, headers, body = curl(f"{stack.url}/v1/users/track?api_token=wrong&data={b64({'id': 'x'})}")
    assert status == 401 and json.loads(body) == {"status": "error", "message": "the API token is invalid", "param": "api_token"}
    assert_no_cache(headers)
    status, _, body = curl(f"{stack.url}/v1/events/track?api_token={TOKEN}&data={b64({'type': 'x', 'date': 'someday'})}")
    assert status == 400 and json.loads(body)["param"] == "date"
    for method in ("POST", "HEAD"):
        args = ["-I"] if method == "HEAD" else ["-X", method]
        status, headers, _ = curl(stack.url + SEED_EVENT, *args)
        assert status == 405 and headers["allow"] == "GET", method
    status, _, body = curl(f"{stack.url}/v1/users/track?api_token={TOKEN}&data={b64({'id': 'x'})}&image=1", "-X", "POST")
    assert status == 405 and body == PIXEL
    # Nothing refused reached the tables.
    assert rows(stack, "SELECT count() AS n FROM events WHERE name = 'x'") == [{"n": 0}]
    assert rows(stack, "SELECT count() AS n FROM customers WHERE customer_id = 'x'") == [{"n": 0}]


def test_data_size_limit_through_the_server(stack):
    """The gateway takes request lines up to 64 KB, so the dialect's own 32 KB limit on the
    decoded data is what a caller meets: just under is stored, just over is a 400 in JSON."""
    under = b64({"type": "big-ok", "pad": "x" * (32 * 1024 - 40)})
    status, _, _ = curl(f"{stack.url}/v1/events/track?api_token={TOKEN}&data={under}")
    assert status == 200
    big = b64({"type": "big", "pad": "x" * (32 * 1024)})
    status, _, body = curl(f"{stack.url}/v1/events/track?api_token={TOKEN}&data={big}")
    assert status == 400 and "32" in json.loads(body)["message"]
    wait_for(lambda: rows(stack, "SELECT count() AS n FROM events WHERE name = 'big-ok'") == [{"n": 1}])
    assert rows(stack, "SELECT count() AS n FROM events WHERE name = 'big'") == [{"n": 0}]


def test_refused_pixel_is_dead_lettered(stack):
    marker = uuid.uuid4().hex[:8]
    pixel = f"/v1/users/track?api_token={TOKEN}&data={b64({'email': marker + '@example.com'})}&image=1"
    status, headers, body = curl(stack.url + pixel)
    assert status == 400 and body == PIXEL and headers["content-type"] == "image/gif"
    assert_no_cache(headers)
    # The same mistake without image=1: the caller sees the error, so it is not kept.
    api = f"/v1/users/track?api_token={TOKEN}&data={b64({'email': marker + '@api.example.com'})}"
    status, _, body = curl(stack.url + api)
    assert status == 400 and json.loads(body)["message"] == "'id' is required"
    q = (
        "SELECT reason, value, headers['method'] AS method, headers['path_qs'] AS path_qs FROM deadletters FINAL "
        "WHERE stage = 'gateway:triggerly' AND reason = '400 \\'id\\' is required'"
    )
    # Kept with the api_token redacted: a dead letter never holds a credential.
    kept = pixel.replace(TOKEN, "REDACTED")
    letters = wait_for(lambda: [r for r in rows(stack, q) if r["value"] == kept])
    assert letters == [{"reason": "400 'id' is required", "value": kept, "method": "GET", "path_qs": kept}]
    assert not [r for r in rows(stack, q) if TOKEN in r["value"] or TOKEN in r["path_qs"]]
    assert not [r for r in rows(stack, q) if r["value"] == api.replace(TOKEN, "REDACTED")]
