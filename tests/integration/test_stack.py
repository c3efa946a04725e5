"""``goalstream up`` end to end, as a user drives it: the seed's curl examples, reads
back through the GET endpoints and ``goalstream sql``, isolation between workspaces,
and a drain on SIGTERM that loses nothing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from tests.conftest import StackProcess, wait_for


def curl(*args: str) -> tuple[int, dict]:
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=30)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), json.loads(body)


def get(url: str, token: str = "tk_live_123") -> dict:
    req = urllib.request.Request(url, headers={"Authorization": f"Token {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_ready_line_and_healthz(stack):
    assert stack.lines[0] == f"goalstream ready {stack.url}"
    with urllib.request.urlopen(f"{stack.url}/healthz", timeout=5) as r:
        health = json.loads(r.read())
    assert r.status == 200
    assert health["components"] == {"broker": "embedded", "clickhouse": "up", "processors": "running", "dispatcher": "running", "gateway": "up"}


def test_seed_curl_examples_round_trip(stack):
    # Create an Event, exactly as the seed prints it (host and token adjusted).
    code, body = curl(
        f"{stack.url}/api/v1/event", "--request", "POST",
        "--data", '{"customer_id": "15", "name": "Customer C",\n "monthly_payment_amount": 99,\n "location": "New York", "plan": "Atom",\n "email": "support@company.com"\n }',
        "-H", "Authorization: Token tk_live_123",
    )
    assert code == 200 and body["object"] == "event" and body["data"][0]["success"] == 1
    # Create a Customer, twice: the second merges.
    code, body = curl(
        f"{stack.url}/api/v1/customer", "--request", "POST",
        "--data", '{"customer_id": "123", "name": "John Smith",\n "monthly_payment_amount": 199,\n "location": "San Francisco", "plan": "Starter",\n "email": "john.smith@example.com", "custom_attributes": {"role": "manager"}}',
        "-H", "Authorization: Token tk_live_123",
    )
    assert code == 200 and body["object"] == "customer" and body["data"][0]["customer_id"] == "123"
    code, _ = curl(
        f"{stack.url}/api/v1/customer", "--request", "POST",
        "--data", '{"customer_id": "123", "name": "John Smith", "plan": "Pro", "email": "john.smith@example.com", "custom_attributes": {"account_type": "admin"}}',
        "-H", "Authorization: Token tk_live_123",
    )
    assert code == 200

    # List Events / List Customers, as printed.
    events = wait_for(lambda: (b := curl(f"{stack.url}/api/v1/event", "--request", "GET", "-H", "Authorization: Token tk_live_123",
                                         "-H", "Content-Type: application/json")[1])["data"] and b)
    assert events["object"] == "event" and "retrieved" in events and events["metadata"] == {}
    assert events["data"][0]["customer_id"] == "15" and events["data"][0]["name"] == "Customer C"
    assert events["data"][0]["properties"]["monthly_payment_amount"] == 99

    def merged():
        c = get(f"{stack.url}/api/v1/customer?customer_id=123")["data"]
        return c and c[0]["plan"] == "Pro" and c[0]
    customer = wait_for(merged)
    assert customer["location"] == "San Francisco"  # kept from the first POST
    assert customer["monthly_payment_amount"] == 199
    assert customer["custom_attributes"] == {"account_type": "admin"}  # kept as given
    assert set(customer) >= {"customer_id", "name", "created_at", "email", "phone_number", "organisation_id", "plan"}

    # And through SQL while the stack runs.
    rows = [json.loads(line) for line in stack.sql("SELECT customer_id, plan FROM customers FINAL WHERE workspace = 'acme'", "JSONEachRow").splitlines()]
    assert {"customer_id": "123", "plan": "Pro"} in rows


def test_filters_paging_and_workspace_isolation(stack):
    for i in range(5):
        curl(f"{stack.url}/api/v1/customer", "-X", "POST", "-H", "Authorization: Token tk_globex",
             "--data", json.dumps({"customer_id": f"g{i}", "name": f"G {i}", "email": f"g{i}@globex.test", "plan": "Gold" if i % 2 else "Free"}))
    wait_for(lambda: len(get(f"{stack.url}/api/v1/customer", "tk_globex")["data"]) == 5)
    assert all(c["customer_id"].startswith("g") for c in get(f"{stack.url}/api/v1/customer", "tk_globex")["data"])
    assert not any(c["customer_id"].startswith("g") for c in get(f"{stack.url}/api/v1/customer")["data"])
    assert [c["customer_id"] for c in get(f"{stack.url}/api/v1/customer?plan=Gold", "tk_globex")["data"]] == ["g1", "g3"]
    page1 = get(f"{stack.url}/api/v1/customer?limit=2", "tk_globex")
    page2 = get(f"{stack.url}/api/v1/customer?limit=2&cursor={page1['metadata']['next_cursor']}", "tk_globex")
    page3 = get(f"{stack.url}/api/v1/customer?limit=2&cursor={page2['metadata']['next_cursor']}", "tk_globex")
    ids = [c["customer_id"] for p in (page1, page2, page3) for c in p["data"]]
    assert ids == ["g0", "g1", "g2", "g3", "g4"] and page3["metadata"] == {}
    code, body = curl(f"{stack.url}/api/v1/customer?limit=5000", "-H", "Authorization: Token tk_globex")
    assert code == 400 and body["error"]["param"] == "limit"


def test_bad_input_never_reaches_clickhouse(stack):
    bad = [
        ("POST", "/api/v1/event", "Token tk_live_123", '{"customer_id": "bad-1"}', 400),
        ("POST", "/api/v1/event", "Token tk_live_123", '{"customer_id": "bad-2", "name": "tr', 400),
        ("POST", "/api/v1/event", "Token wrong", '{"customer_id": "bad-3", "name": "x"}', 401),
        ("PUT", "/api/v1/event", "Token tk_live_123", '{"customer_id": "bad-4", "name": "x"}', 405),
        ("POST", "/api/v1/evnt", "Token tk_live_123", '{"customer_id": "bad-5", "name": "x"}', 404),
    ]
    for method, path, auth, data, status in bad:
        code, body = curl(f"{stack.url}{path}", "-X", method, "-H", f"Authorization: {auth}", "--data", data)
        assert code == status and set(body) == {"error"} and set(body["error"]) >= {"type", "message"}, body
    # A good event posted after them is stored; none of the bad ones is.
    curl(f"{stack.url}/api/v1/event", "-X", "POST", "-H", "Authorization: Token tk_live_123", "--data", '{"customer_id": "good-1", "name": "x"}')
    wait_for(lambda: stack.sql("SELECT count() FROM events WHERE customer_id = 'good-1'").strip() == "1")
    assert stack.sql("SELECT count() FROM events WHERE customer_id LIKE 'bad-%'").strip() == "0"


def test_sql_refuses_writes(stack):
    with pytest.raises(RuntimeError, match="only read queries"):
        stack.sql("DROP TABLE events")


async def _post_all(url: str, n: int, concurrency: int = 64) -> int:
    ok = 0
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(headers={"Authorization": "Token tk_live_123"}) as s:
        async def one(i: int) -> None:
            nonlocal ok
            async with sem:
                async with s.post(f"{url}/api/v1/event", data=json.dumps({"customer_id": f"c{i % 500}", "name": "drain", "i": i})) as r:
                    assert r.status == 200, await r.text()
                    ok += 1
        await asyncio.gather(*(one(i) for i in range(n)))
    return ok


def test_sigterm_right_after_10000_events_loses_none(tmp_path):
    workdir = tmp_path / "drain"
    first = StackProcess(workdir).start()
    try:
        t0 = time.monotonic()
        acknowledged = asyncio.run(_post_all(first.url, 10_000))
        # Then 10,000 customers in one Retainly request: multi-record batches per partition,
        # whose end offsets some brokers under-report (the drain must still wait for all).
        body = json.dumps({"customers": [{"id": f"drain-{i}", "plan": "p"} for i in range(10_000)]}).encode()
        req = urllib.request.Request(
            f"{first.url}/customers", data=body, method="POST",
            headers={"key": "your_api_key", "secret": "your_api_secret", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
        t1 = time.monotonic()
        assert acknowledged == 10_000
        assert first.terminate(180) == 0  # SIGTERM at once, then a clean exit
        print(f"\n10,000 single-event POSTs acknowledged in {t1 - t0:.1f}s; SIGTERM to exit {time.monotonic() - t1:.1f}s")
    finally:
        first.kill()
    second = StackProcess(workdir).start()  # the same data dir, a fresh (empty) embedded broker
    try:
        out = second.sql("SELECT count(), uniqExact(message_id) FROM events WHERE name = 'drain'")
        assert out.split() == ["10000", "10000"]
        out = second.sql("SELECT count() FROM customers FINAL WHERE startsWith(customer_id, 'drain-')")
        assert out.split() == ["10000"]
    finally:
        second.terminate(60)
        second.kill()


async def _post_batches(url: str, batches: int, size: int = 500) -> dict[int, int]:
    """Post batches of ~1 KB events, honouring 503 + Retry-After like a well-behaved client."""
    statuses: dict[int, int] = {}
    pad = "x" * 900
    sem = asyncio.Semaphore(4)
    async with aiohttp.ClientSession(headers={"Authorization": "Token tk_live_123"}) as s:
        async def one(b: int) -> None:
            body = json.dumps([{"customer_id": f"r{b}-{i}", "name": "recycle", "pad": pad} for i in range(size)])
            async with sem:
                while True:
                    async with s.post(f"{url}/api/v1/event", data=body) as r:
                        statuses[r.status] = statuses.get(r.status, 0) + 1
                        if r.status == 200:
                            return
                        assert r.status == 503 and "Retry-After" in r.headers, await r.text()
                        await asyncio.sleep(float(r.headers["Retry-After"]) / 5)
        await asyncio.gather(*(one(b) for b in range(batches)))
    return statuses


def _health(url: str) -> dict:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as r:
            return json.loads(r.read())["components"]
    except urllib.error.HTTPError as exc:  # 503 while degraded, e.g. recycling
        return json.loads(exc.read())["components"]


def test_embedded_broker_is_recycled_without_loss(tmp_path):
    s = StackProcess(tmp_path / "recycle", ["--broker-max-rss-mb", "64"]).start()
    try:
        statuses = asyncio.run(_post_batches(s.url, 160))  # 80,000 events of ~1 KB: well past 64 MB
        assert statuses[200] == 160
        wait_for(lambda: "recycling it" in s.err_path.read_text(), timeout=30)
        wait_for(lambda: s.sql("SELECT count(), uniqExact(message_id) FROM events WHERE name = 'recycle'").split() == ["80000", "80000"], timeout=120, interval=1)
        wait_for(lambda: _health(s.url).get("broker") == "embedded", timeout=60)
        recycles = s.err_path.read_text().count("recycling it")
        print(f"recycled {recycles} time(s); statuses {statuses}")
    finally:
        s.terminate(120)
        s.kill()


def _gone(pid: int) -> bool:
    """Exited (a zombie, dead and not yet reaped by whoever adopted it, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _refused(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_fronts_exit_when_the_stack_is_killed(tmp_path):
    """SIGKILL of the stack process: its HTTP fronts see their connection close and exit at
    once, so nothing keeps the port of a stack that is gone."""
    s = StackProcess(tmp_path / "orphans", ["--gateway-processes", "2"]).start()
    try:
        info = json.loads((s.workdir / "var" / "run" / "stack.json").read_text())
        fronts = info["front_pids"]
        assert len(fronts) == 2 and s.lines[0] == f"goalstream ready {s.url}"
        s.proc.kill()
        s.proc.wait(10)
        t0 = time.monotonic()
        wait_for(lambda: all(_gone(p) for p in fronts), timeout=5, interval=0.05)
        wait_for(lambda: _refused(s.port), timeout=5, interval=0.05)
        print(f"fronts {fronts} gone and the port closed {time.monotonic() - t0:.2f} s after the stack's SIGKILL")
    finally:
        s.kill()
