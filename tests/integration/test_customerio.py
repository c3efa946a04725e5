"""Customer.io end to end: ``goalstream up`` serving HTTPS with a test CA, driven by the
seed's curl examples (as printed, host changed), the official ``customerio`` SDK in a
subprocess (``REQUESTS_CA_BUNDLE``), merges read back through Traitly, resends, and the
v2 batch size limit; every check reads what landed in ClickHouse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest
import requests
import trustme

from tests.conftest import StackProcess, free_port, wait_for

SITE, KEY = "YOUR-SITE-ID-HERE", "YOUR-SECRET-API-KEY-HERE"


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("cio-stack")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(work / "server.pem"))
    ca.cert_pem.write_to_path(str(work / "ca.pem"))
    tls_port = free_port()
    s = StackProcess(work, ["--tls-cert", str(work / "server.pem"), "--tls-key", str(work / "server.pem"), "--tls-port", str(tls_port)]).start()
    ready = next(line for line in s.lines if line.startswith("goalstream ready"))
    https = next(u for u in ready.split() if u.startswith("https://"))
    s.https, s.tls_port, s.ca = https, tls_port, str(work / "ca.pem")
    yield s
    s.close()


def rows(stack, query):
    # counts come back as numbers or quoted 64-bit strings depending on the server: normalise
    out = [json.loads(line) for line in stack.sql(query, "JSONEachRow").splitlines() if line.strip()]
    return [{k: int(v) if k in ("n", "ts", "c") else v for k, v in r.items()} for r in out]


def curl(stack, *args):
    out = subprocess.run(["curl", "-sS", "-i", "--cacert", stack.ca, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), body


def post(stack, path, body, auth=(SITE, KEY), method="POST"):
    return requests.request(method, stack.https + path, json=body, auth=auth, verify=stack.ca, timeout=30)


def test_seed_examples_over_https(tls_stack):
    u = tls_stack.https
    # As printed in the seed, with the host changed (curl -d sends a form).
    assert curl(tls_stack, f"{u}/api/v1/customers/5/events", "-u", f"{SITE}:{KEY}", "-d", "name=eventName") == (200, "{}")
    assert curl(tls_stack, f"{u}/api/v1/customers/5", "-X", "PUT", "-u", f"{SITE}:{KEY}",
                "-d", "email=customer@example.com", "-d", "name=Bob", "-d", "plan=premium") == (200, "{}")
    wait_for(lambda: rows(tls_stack, "SELECT email, name, plan FROM customers_typed WHERE workspace='acme' AND customer_id='5'")
             == [{"email": "customer@example.com", "name": "Bob", "plan": "premium"}])
    assert curl(tls_stack, f"{u}/api/v1/customers/5", "-X", "DELETE", "-u", f"{SITE}:{KEY}") == (200, "{}")
    assert curl(tls_stack, f"{u}/api/v1/customers/5/events", "-u", f"{SITE}:{KEY}", "-d", "name=purchased", "-d", "data[price]=23.45") == (200, "{}")
    got = wait_for(lambda: rows(tls_stack, "SELECT props.price AS price, dynamicType(props.price) AS t FROM events_typed "
                                           "WHERE workspace='acme' AND customer_id='5' AND name='purchased'"))
    assert got == [{"price": 23.45, "t": "Float64"}]
    # Customer.io documents a deletion as removing the person "and all their information": the
    # event sent before it goes too (a regulation), the one sent after stays.
    wait_for(lambda: rows(tls_stack, "SELECT count() AS n FROM events WHERE workspace='acme' AND customer_id='5' AND name='eventName'") == [{"n": 0}])
    wait_for(lambda: rows(tls_stack, "SELECT count() AS n FROM customers FINAL WHERE workspace='acme' AND customer_id='5'") == [{"n": 0}])
    # Errors in Customer.io's shape, also over HTTPS.
    status, body = curl(tls_stack, f"{u}/api/v1/customers/5/events", "-u", f"{SITE}:wrong", "-d", "name=x")
    assert status == 401 and "error" in json.loads(body)["meta"]


SDK_SCRIPT = textwrap.dedent(
    """
    import sys
    from customerio import CustomerIO
    host, port, run, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cio = CustomerIO(site_id="YOUR-SITE-ID-HERE", api_key="YOUR-SECRET-API-KEY-HERE", host=host, port=port, retries=0)
    a, b = f"sdk-a-{run}", f"sdk-b-{run}"
    if phase == "2":
        # by email: resolved against the customers already stored (phase 1 wrote b)
        cio.merge_customers("id", a, "email", f"{b}@example.com")
        print("ok")
        sys.exit(0)
    cio.identify(id=a, email=f"{a}@example.com", plan="pro", seats=3, created_at=1700000000)
    cio.identify(id=b, email=f"{b}@example.com")
    cio.track(customer_id=a, name="purchase", data={"price": 23.45, "sku": "007"}, id=f"ev-{run}", timestamp=1700000100)
    cio.track_anonymous(anonymous_id=f"anon-{run}", name="viewed", data={"page": 2})
    cio.pageview(customer_id=a, page="https://example.com/pricing", referrer="ad")
    cio.backfill(customer_id=a, name="old", timestamp=1600000000, n=1)
    cio.add_device(customer_id=a, device_id=f"tok-{run}", platform="ios", last_used=1700000200)
    cio.add_device(customer_id=a, device_id=f"tok2-{run}", platform="android")
    cio.delete_device(customer_id=a, device_id=f"tok2-{run}")
    cio.suppress(customer_id=b)
    cio.unsuppress(customer_id=b)
    cio.batch([{"type": "person", "action": "event", "identifiers": {"id": a}, "name": "batched", "attributes": {"k": 1}}])
    cio.identify(id=f"sdk-c-{run}", plan="x")
    cio.delete(customer_id=f"sdk-c-{run}")
    print("ok")
    """
)


def test_official_sdk_over_https(tls_stack):
    run = uuid.uuid4().hex[:8]
    env = {**os.environ, "REQUESTS_CA_BUNDLE": tls_stack.ca}
    a, b = f"sdk-a-{run}", f"sdk-b-{run}"

    def sdk(phase: str) -> None:
        out = subprocess.run([sys.executable, "-c", SDK_SCRIPT, "127.0.0.1", str(tls_stack.tls_port), run, phase],
                             capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr

    sdk("1")
    wait_for(lambda: rows(tls_stack, f"SELECT customer_id FROM customers FINAL WHERE workspace='acme' AND email='{b}@example.com'"))
    sdk("2")
    def five_events():
        r = rows(tls_stack, f"SELECT name, customer_id, anonymous_id, toUnixTimestamp(timestamp) AS ts, message_id, properties "
                            f"FROM events FINAL WHERE workspace='acme' AND (customer_id='{a}' OR anonymous_id='anon-{run}') ORDER BY name")
        return r if len(r) == 5 else None

    events = wait_for(five_events)
    by = {e["name"]: e for e in events}
    assert by["purchase"]["message_id"] == f"ev-{run}" and by["purchase"]["ts"] == 1700000100
    assert json.loads(by["purchase"]["properties"]) == {"price": 23.45, "sku": "007"}
    assert json.loads(by["https://example.com/pricing"]["properties"]) == {"referrer": "ad", "_type": "page"}
    assert by["viewed"]["customer_id"] == "" and by["viewed"]["anonymous_id"] == f"anon-{run}"
    assert by["old"]["ts"] == 1600000000 and json.loads(by["batched"]["properties"]) == {"k": 1}
    cust = wait_for(lambda: (r := rows(tls_stack, f"SELECT attributes, toUnixTimestamp(created_at) AS c "
                                                   f"FROM customers_typed WHERE workspace='acme' AND customer_id='{a}'"))
                    and "devices" in json.loads(r[0]["attributes"]) and r)
    attrs = json.loads(cust[0]["attributes"])
    assert cust[0]["c"] == 1700000000 and attrs["plan"] == "pro" and attrs["seats"] == 3
    wait_for(lambda: [d["id"] for d in json.loads(rows(tls_stack, f"SELECT attributes FROM customers FINAL WHERE workspace='acme' AND customer_id='{a}'")[0]["attributes"])["devices"]] == [f"tok-{run}"])
    # The email named b (the customer holding it), so b was merged into a and is gone.
    wait_for(lambda: rows(tls_stack, f"SELECT customer_id, merged_id, kind FROM customer_merges WHERE workspace='acme' AND customer_id='{a}'")
             == [{"customer_id": a, "merged_id": b, "kind": "merge"}])
    wait_for(lambda: rows(tls_stack, f"SELECT count() AS n FROM customers_typed WHERE workspace='acme' AND customer_id IN ('{b}', 'sdk-c-{run}')") == [{"n": 0}])


def test_merge_reads_follow_the_primary(tls_stack):
    run = uuid.uuid4().hex[:8]
    a, b = f"m-a-{run}", f"m-b-{run}"
    http = tls_stack.url  # plain HTTP stays available for local use
    for cid in (a, b):
        r = requests.put(f"{http}/api/v1/customers/{cid}", json={"email": f"{cid}@example.com"}, auth=(SITE, KEY), timeout=30)
        assert r.status_code == 200 and r.json() == {}
        assert requests.post(f"{http}/api/v1/customers/{cid}/events", json={"name": f"did-{cid}"}, auth=(SITE, KEY), timeout=30).status_code == 200
    wait_for(lambda: rows(tls_stack, f"SELECT count() AS n FROM customers FINAL WHERE workspace='acme' AND customer_id IN ('{a}','{b}')") == [{"n": 2}])
    r = post(tls_stack, "/api/v1/merge_customers", {"primary": {"id": a}, "secondary": {"id": b}})
    assert r.status_code == 200 and r.json() == {}
    wait_for(lambda: rows(tls_stack, f"SELECT merged_id, kind, source FROM customer_merges WHERE workspace='acme' AND customer_id='{a}'")
             == [{"merged_id": b, "kind": "merge", "source": "customerio"}])
    wait_for(lambda: rows(tls_stack, f"SELECT customer_id FROM customers FINAL WHERE workspace='acme' AND customer_id IN ('{a}','{b}')") == [{"customer_id": a}])
    listed = requests.get(f"{http}/api/v1/event", params={"customer_id": a}, headers={"Authorization": "Token tk_live_123"}, timeout=30).json()
    assert sorted(e["name"] for e in listed["data"]) == [f"did-{a}", f"did-{b}"]
    counts = rows(tls_stack, f"SELECT identified_id, count() AS n FROM events_typed WHERE workspace='acme' AND customer_id IN ('{a}','{b}') GROUP BY identified_id")
    assert counts == [{"identified_id": a, "n": 2}]


def test_resend_is_stored_once(tls_stack):
    mid = f"01J-{uuid.uuid4().hex}"
    for _ in range(2):
        r = post(tls_stack, "/api/v1/customers/resend-1/events", {"name": "paid", "id": mid, "timestamp": 1700000000, "data": {"n": 1}})
        assert r.status_code == 200
    wait_for(lambda: rows(tls_stack, f"SELECT count() AS n FROM events WHERE message_id='{mid}'") == [{"n": 1}])
    # and still once after a later event of the same customer is stored (the second copy was
    # not merely late: same key, same partition, stored in order)
    barrier = f"01J-{uuid.uuid4().hex}"
    assert post(tls_stack, "/api/v1/customers/resend-1/events", {"name": "barrier", "id": barrier}).status_code == 200
    wait_for(lambda: rows(tls_stack, f"SELECT count() AS n FROM events WHERE message_id='{barrier}'") == [{"n": 1}])
    assert rows(tls_stack, f"SELECT count() AS n FROM events WHERE message_id='{mid}'") == [{"n": 1}]


def test_identify_with_anonymous_id_claims_anonymous_events(tls_stack):
    run = uuid.uuid4().hex[:8]
    assert post(tls_stack, "/api/v1/events", {"name": "browsed", "anonymous_id": f"anon-{run}"}).status_code == 200
    assert post(tls_stack, f"/api/v1/customers/known-{run}", {"anonymous_id": f"anon-{run}"}, method="PUT").status_code == 200
    wait_for(lambda: rows(tls_stack, f"SELECT identified_id FROM events_typed WHERE workspace='acme' AND anonymous_id='anon-{run}'")
             == [{"identified_id": f"known-{run}"}])


def _compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _op_of(size: int, cid: str) -> dict:
    """An identify operation of exactly ``size`` bytes, every attribute within 1000 bytes."""
    op = {"type": "person", "action": "identify", "identifiers": {"id": cid}, "attributes": {}}
    i = 0
    while (left := size - len(_compact(op))) > 0:
        key = f"a{i:03d}"
        overhead = len(_compact({key: ""})) - 2 + (1 if op["attributes"] else 0)
        op["attributes"][key] = "z" * min(1000, left - overhead)
        i += 1
    assert len(_compact(op)) == size
    return op


def _batch_of(size: int) -> bytes:
    """A v2 batch body of exactly ``size`` bytes, each operation under 32 KB."""
    ops: list = []
    while len(_compact({"batch": ops})) < size - 32_000:
        ops.append(_op_of(30_000, f"bulk-{len(ops)}"))
    ops.append(_op_of(size - len(_compact({"batch": ops})) - 1, "pad"))
    body = _compact({"batch": ops})
    assert len(body) == size, (len(body), size)
    return body


def test_v2_batch_size_limit(tls_stack):
    headers = {"Content-Type": "application/json"}
    under = requests.post(tls_stack.https + "/api/v2/batch", data=_batch_of(499_999), headers=headers, auth=(SITE, KEY), verify=tls_stack.ca, timeout=60)
    assert under.status_code == 200, under.text
    over = requests.post(tls_stack.https + "/api/v2/batch", data=_batch_of(500_000), headers=headers, auth=(SITE, KEY), verify=tls_stack.ca, timeout=60)
    assert over.status_code == 400 and over.json()["errors"][0]["reason"] == "too_large"


def test_v2_mixed_batch_lands(tls_stack):
    run = uuid.uuid4().hex[:8]
    p = f"vb-{run}"
    r = post(tls_stack, "/api/v2/batch", {"batch": [
        {"type": "person", "action": "identify", "identifiers": {"id": p}, "attributes": {"plan": "team", "score": 1.5}},
        {"type": "person", "action": "event", "identifiers": {"id": p}, "name": "upgraded", "attributes": {"to": "team"}},
        {"type": "person", "action": "add_device", "identifiers": {"id": p}, "device": {"token": "t1", "platform": "ios"}},
        {"type": "person", "action": "suppress", "identifiers": {"id": p}},
    ]})
    assert r.status_code == 200 and r.json() == {}
    wait_for(lambda: rows(tls_stack, f"SELECT name FROM events WHERE workspace='acme' AND customer_id='{p}'") == [{"name": "upgraded"}])
    got = wait_for(lambda: (r := rows(tls_stack, f"SELECT attributes FROM customers FINAL WHERE workspace='acme' AND customer_id='{p}'"))
                   and "_suppressed" in (a := json.loads(r[0]["attributes"])) and "devices" in a and a)
    assert got["plan"] == "team" and got["score"] == 1.5 and got["_suppressed"] is True and got["devices"] == [{"id": "t1", "platform": "ios"}]
