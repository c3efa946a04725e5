"""The Segment-compatible API through ``goalstream up``: both real SDKs (segment-analytics-python,
rudder-sdk-python with gzip), the docs' examples with real curl, the limits one byte under and
over, a gzip bomb, clock-skew correction, resends stored once, and alias reads."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from tests.conftest import wait_for

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "segment"
BASIC = "Basic " + base64.b64encode(b"wk_1:").decode()


def rows(stack, query: str) -> list[dict]:
    return [json.loads(line) for line in stack.sql(query, "JSONEachRow").splitlines() if line.strip()]


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def curl(*args: str) -> tuple[int, dict]:
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=60)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(body)


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def events_of(stack, where: str) -> list[dict]:
    return rows(
        stack,
        "SELECT message_id, customer_id, anonymous_id, name, toUnixTimestamp64Milli(timestamp) AS ts, properties, source "
        f"FROM events FINAL WHERE workspace = 'acme' AND {where} ORDER BY timestamp, message_id",
    )


def stored_after(stack, user: str) -> str:
    """Post one more event for ``user`` and wait until it is stored; its message id.

    What a "nothing else lands" check waits for, instead of a sleep: the key is
    workspace:customer_id, so this event is on the same partition as everything sent for
    ``user`` before it, and the processors store a partition in order; once it is in
    ClickHouse, anything sent earlier that was going to be stored is there too."""
    mid = str(uuid.uuid4())
    assert post(f"{stack.url}/v1/track", orjson.dumps({"userId": user, "event": "Barrier", "messageId": mid}), {"Authorization": BASIC})[0] == 200
    wait_for(lambda: events_of(stack, f"message_id = '{mid}'"))
    return mid


# -- the docs' examples ------------------------------------------------------------------


def test_docs_curl_example_writekey_in_body(stack):
    user = uid("curl")
    code, body = curl(
        f"{stack.url}/v1/track",
        "--header", "Content-Type: application/json",
        "--data-raw", '{\n      "event": "happy-path-a3ef8a6f-0482-4694-bc4d-4afba03a0eab",\n      "email": "test@example.org",\n'
        f'      "userId": "{user}",\n      "writeKey": "wk_1"\n  }}',
    )
    assert (code, body) == (200, {"success": True})
    got = wait_for(lambda: events_of(stack, f"customer_id = '{user}'"))
    assert got[0]["name"] == "happy-path-a3ef8a6f-0482-4694-bc4d-4afba03a0eab" and got[0]["source"] == "segment"
    assert json.loads(got[0]["properties"]) == {"email": "test@example.org"}


def test_docs_batch_example_lands(stack):
    # The docs' batch body as printed (write key swapped for the test's), posted with curl.
    body = json.loads((FIXTURES / "09-batch.json").read_text())["request"]["body"]
    code, answer = curl(f"{stack.url}/v1/batch", "--header", "Content-Type: application/json", "--data-raw", body)
    assert (code, answer) == (200, {"success": True})
    customers = wait_for(
        lambda: (r := rows(stack, "SELECT customer_id, name, email, attrs.age AS age, toString(dynamicType(attrs.age)) AS t "
                                  "FROM customers_typed WHERE workspace = 'acme' AND customer_id IN ('019mr8mf4r', '971mj8mk7p') "
                                  "AND email IN ('jake@yahoo.com', 'cindy@example.com') ORDER BY customer_id")) and len(r) == 2 and r
    )
    assert [(c["customer_id"], c["name"], c["age"], c["t"]) for c in customers] == [
        ("019mr8mf4r", "Jake Peterson", 26, "Int64"),
        ("971mj8mk7p", "Cindy Gonzalez", 23, "Int64"),
    ]
    events = wait_for(lambda: (r := events_of(stack, "name = 'Song Played'")) and len(r) == 2 and r)
    expected_ts = [
        1354408212984,  # 2012-12-02T00:30:12.984Z
        1422837012984,  # 2015-02-02T00:30:12.984Z
    ]
    assert [(e["customer_id"], e["ts"]) for e in events] == list(zip(["019mr8mf4r", "971mj8mk7p"], expected_ts))
    assert json.loads(events[0]["properties"]) == {
        "name": "Fallin for You", "artist": "Dierks Bentley", "context": {"device": {"type": "phone", "name": "Apple iPhone 6"}}
    }


def test_gzip_with_curl(stack, tmp_path):
    user = uid("gz")
    body = {"batch": [{"type": "track", "userId": user, "event": "Gzipped", "properties": {"n": i}} for i in range(50)]}
    path = tmp_path / "body.gz"
    path.write_bytes(gzip.compress(orjson.dumps(body)))
    code, answer = curl(
        f"{stack.url}/v1/batch", "-u", "wk_1:", "-H", "Content-Type: application/json", "-H", "Content-Encoding: gzip",
        "--data-binary", f"@{path}",
    )
    assert (code, answer) == (200, {"success": True})
    got = wait_for(lambda: (r := events_of(stack, f"customer_id = '{user}'")) and len(r) == 50 and r)
    assert sorted(json.loads(e["properties"])["n"] for e in got) == list(range(50))


# -- the SDKs ----------------------------------------------------------------------------


def check_sdk_rows(stack, user: str, anon: str, group: str, library: str) -> None:
    """What both SDKs' identify/track/page/screen/group/alias calls must leave in ClickHouse."""
    customer = wait_for(lambda: rows(stack, f"SELECT customer_id, name, email, plan, attributes FROM customers FINAL "
                                            f"WHERE workspace = 'acme' AND customer_id = '{user}'"))
    assert (customer[0]["name"], customer[0]["email"], customer[0]["plan"]) == ("Ada Lovelace", f"{user}@example.com", "pro")
    assert json.loads(customer[0]["attributes"])["seats"] == 5
    events = wait_for(lambda: (r := events_of(stack, f"(customer_id = '{user}' OR anonymous_id = '{anon}')")) and len(r) == 5 and r)
    by_name = {e["name"]: e for e in events}
    assert set(by_name) == {"Viewed Pricing", "Signed Up", "page", "screen", "group"}
    assert (by_name["Viewed Pricing"]["customer_id"], by_name["Viewed Pricing"]["anonymous_id"]) == ("", anon)
    props = json.loads(by_name["Signed Up"]["properties"])
    assert props["plan"] == "pro" and props["amount"] == 49.5 and props["trial"] is False
    assert props["context"]["library"]["name"] == library
    assert json.loads(by_name["page"]["properties"])["name"] == "Pricing"
    assert json.loads(by_name["screen"]["properties"])["name"] == "Home"
    assert json.loads(by_name["group"]["properties"])["groupId"] == group
    now = time.time() * 1000
    assert all(abs(e["ts"] - now) < 120_000 for e in events), "the SDKs' own timestamps, skew-corrected, are about now"
    merges = wait_for(lambda: rows(stack, f"SELECT customer_id, merged_id, kind, source FROM customer_merges FINAL WHERE merged_id = '{anon}'"))
    assert merges == [{"customer_id": user, "merged_id": anon, "kind": "alias", "source": "segment"}]
    # Reads of the user now include what they did while anonymous.
    req = urllib.request.Request(f"{stack.url}/api/v1/event?customer_id={user}&limit=100", headers={"Authorization": "Token tk_live_123"})
    with urllib.request.urlopen(req, timeout=10) as r:
        listed = json.loads(r.read())["data"]
    assert {e["name"] for e in listed} == {"Viewed Pricing", "Signed Up", "page", "screen", "group"}
    typed = rows(stack, f"SELECT DISTINCT identified_id FROM events_typed WHERE workspace = 'acme' AND anonymous_id = '{anon}'")
    assert typed == [{"identified_id": user}]


def drive_sdk(client, user: str, anon: str, group: str) -> None:
    client.track(anonymous_id=anon, event="Viewed Pricing", properties={"path": "/pricing"})
    client.identify(user_id=user, traits={"name": "Ada Lovelace", "email": f"{user}@example.com", "plan": "pro", "seats": 5})
    client.track(user_id=user, event="Signed Up", properties={"plan": "pro", "amount": 49.5, "trial": False})
    client.page(user_id=user, category="Docs", name="Pricing", properties={"url": "https://example.com/pricing"})
    client.screen(user_id=user, name="Home")
    client.group(user_id=user, group_id=group, traits={"name": "Analytical Engines", "employees": 3})
    client.alias(previous_id=anon, user_id=user)


def test_segment_analytics_python(stack):
    import segment.analytics as analytics

    failures = []
    analytics.default_client = None
    analytics.write_key, analytics.host = "wk_1", stack.url
    analytics.on_error = lambda exc, batch: failures.append(exc)
    user, anon, group = uid("seg-user"), uid("seg-anon"), uid("seg-group")
    try:
        drive_sdk(analytics, user, anon, group)
        analytics.flush()
    finally:
        analytics.shutdown()
        analytics.default_client = None
    assert failures == []
    check_sdk_rows(stack, user, anon, group, "analytics-python")


def test_rudder_sdk_python_gzip(stack):
    import rudderstack.analytics as rudder

    failures = []
    rudder.default_client = None
    rudder.write_key, rudder.dataPlaneUrl, rudder.gzip = "wk_1", stack.url, True
    rudder.on_error = lambda exc, batch: failures.append(exc)
    user, anon, group = uid("rud-user"), uid("rud-anon"), uid("rud-group")
    try:
        drive_sdk(rudder, user, anon, group)
        rudder.flush()
    finally:
        rudder.shutdown()
        rudder.default_client = None
    assert failures == []
    check_sdk_rows(stack, user, anon, group, "analytics-python")


def test_sdk_sees_an_unknown_write_key_as_an_error(stack):
    from segment.analytics import Client

    failures = []
    client = Client("not-a-key", host=stack.url, sync_mode=True, on_error=lambda exc, batch: failures.append(exc), max_retries=0)
    user = uid("badkey")
    with pytest.raises(Exception) as e:
        client.track(user_id=user, event="Lost?")
    assert getattr(e.value, "status", None) == 401 and e.value.code == "invalid_write_key"
    barrier = stored_after(stack, user)
    assert [e["message_id"] for e in events_of(stack, f"customer_id = '{user}'")] == [barrier]


# -- idempotency and time --------------------------------------------------------------


def test_resend_is_stored_once(stack):
    user, mid = uid("resend"), str(uuid.uuid4())
    msg = {"userId": user, "event": "Paid", "messageId": mid, "timestamp": iso(datetime.now(timezone.utc) - timedelta(seconds=3))}
    assert post(f"{stack.url}/v1/track", orjson.dumps({**msg, "sentAt": iso(datetime.now(timezone.utc))}), {"Authorization": BASIC})[0] == 200
    # The retry: same messageId, in a batch this time, sent a moment later.
    time.sleep(0.3)
    retry = {"batch": [{**msg, "type": "track"}], "sentAt": iso(datetime.now(timezone.utc))}
    assert post(f"{stack.url}/v1/batch", orjson.dumps(retry), {"Authorization": BASIC})[0] == 200
    wait_for(lambda: events_of(stack, f"message_id = '{mid}'"))
    stored_after(stack, user)  # the second copy, had it been stored, is in ClickHouse by now
    raw = rows(stack, f"SELECT count() AS n FROM events WHERE message_id = '{mid}'")
    final = rows(stack, f"SELECT count() AS n FROM events FINAL WHERE message_id = '{mid}'")
    assert (int(raw[0]["n"]), int(final[0]["n"])) == (1, 1)


def test_client_clock_skew_is_corrected(stack):
    # The client's clock is an hour fast; the event happened 5 s before it was sent.
    user = uid("skew")
    fast = datetime.now(timezone.utc) + timedelta(hours=1)
    body = {"userId": user, "event": "Skewed", "timestamp": iso(fast - timedelta(seconds=5)), "sentAt": iso(fast)}
    before = time.time() * 1000
    assert post(f"{stack.url}/v1/track", orjson.dumps(body), {"Authorization": BASIC})[0] == 200
    after = time.time() * 1000
    got = wait_for(lambda: events_of(stack, f"customer_id = '{user}'"))
    # Timestamps are whole milliseconds (ISO strings and the receive time are truncated): 2 ms of slack.
    assert before - 5002 <= got[0]["ts"] <= after - 4998


# -- limits ------------------------------------------------------------------------------


def padded(size: int, **fields) -> dict:
    msg = {"event": "Padded", "properties": {"pad": ""}, **fields}
    msg["properties"]["pad"] = "x" * (size - len(orjson.dumps(msg)))
    assert len(orjson.dumps(msg)) == size
    return msg


def test_single_call_limit_32_kb(stack):
    user = uid("lim32")
    under = orjson.dumps(padded(32 * 1024, userId=user, messageId=f"{user}-ok", writeKey="wk_1"))
    over = orjson.dumps(padded(32 * 1024 + 1, userId=user, messageId=f"{user}-over", writeKey="wk_1"))
    assert post(f"{stack.url}/v1/track", under) == (200, {"success": True})
    status, answer = post(f"{stack.url}/v1/track", over)
    assert status == 400 and answer["success"] is False and answer["code"] == "payload_too_large"
    assert answer["message"].startswith("Exceed payload limit")
    got = wait_for(lambda: events_of(stack, f"customer_id = '{user}'"))
    barrier = stored_after(stack, user)
    assert [e["message_id"] for e in events_of(stack, f"customer_id = '{user}'") if e["message_id"] != barrier] == [f"{user}-ok"] == [got[0]["message_id"]]


def batch_body(total: int, user: str) -> bytes:
    msgs = [padded(31_990, type="track", userId=user, messageId=f"{user}-{i}") for i in range(16)]
    body = {"batch": msgs, "writeKey": "wk_1"}
    msgs[0]["properties"]["pad"] += "x" * (total - len(orjson.dumps(body)))
    raw = orjson.dumps(body)
    assert len(raw) == total and all(len(orjson.dumps(m)) <= 32 * 1024 for m in msgs)
    return raw


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_batch_limit_500_kb(stack, encoding):
    user = uid(f"lim500-{encoding}")
    headers = {"Content-Encoding": "gzip"} if encoding == "gzip" else {}
    wrap = gzip.compress if encoding == "gzip" else (lambda b: b)
    assert post(f"{stack.url}/v1/batch", wrap(batch_body(500 * 1024, user)), headers) == (200, {"success": True})
    over_user = uid("lim500-over")
    status, answer = post(f"{stack.url}/v1/batch", wrap(batch_body(500 * 1024 + 1, over_user)), headers)
    assert status == 400 and answer["code"] == "payload_too_large"
    wait_for(lambda: len(events_of(stack, f"customer_id = '{user}'")) == 16)
    assert events_of(stack, f"customer_id = '{over_user}'") == []


def vm_hwm_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


def test_gzip_bomb_is_refused_without_inflating(stack):
    bomb = gzip.compress(b" " * (1 << 30), 9)  # 1 GiB of spaces in ~1 MB
    peak_before = vm_hwm_kb(stack.proc.pid)
    started = time.monotonic()
    status, answer = post(f"{stack.url}/v1/batch", bomb, {"Content-Encoding": "gzip", "Authorization": BASIC})
    elapsed = time.monotonic() - started
    assert status == 400 and answer["code"] == "payload_too_large"
    grown_mb = (vm_hwm_kb(stack.proc.pid) - peak_before) / 1024
    print(f"gzip bomb: {len(bomb)} bytes -> 1 GiB refused in {elapsed:.2f}s; stack peak RSS {peak_before / 1024:.0f} MB, grew {grown_mb:.1f} MB")
    assert elapsed < 10 and grown_mb < 64
