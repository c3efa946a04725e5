"""The webhook dispatcher against real local receivers, through ``goalstream up``.

Propensity records are put on ``goalstream.propensity`` as the scorer would (Avro, with
their headers); each receiver is a path on a local aiohttp server with a behaviour
(fail twice, 410, 429 + Retry-After, hang, verify signatures). The receivers check
signatures with the Standard Webhooks reference algorithm written out here, not with
goalstream's own code."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from aiohttp import web

from schemas import model, topics
from schemas.kafka import RecordProducer
from tests.conftest import GOALSTREAM, StackProcess, free_port, globex_config, wait_for

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OLD_SECRET = "whsec_dGhlIHByZXZpb3VzIHNlY3JldCBrZXkh"


def goalstream(stack: StackProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(GOALSTREAM), *args], cwd=stack.workdir, capture_output=True, text=True, timeout=120)


def reference_verify(secret: str, headers: dict, body: bytes) -> bool:
    """Standard Webhooks, spec section "Verifying webhook authenticity"."""
    key = base64.b64decode(secret.split("_", 1)[1])
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    if abs(time.time() - int(headers["webhook-timestamp"])) > 300:
        return False
    return any(
        hmac.compare_digest(sig.split(",", 1)[1], expected) for sig in headers["webhook-signature"].split(" ") if sig.startswith("v1,")
    )


class Receivers:
    """One local HTTP server; each path behaves as ``behaviours[path]`` says."""

    def __init__(self):
        self.port = free_port()
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/{name:.*}", self._handle)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        self.loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        path = request.path
        with self.lock:
            n = self.calls[path] = self.calls.get(path, 0) + 1
        rec = {"path": path, "n": n, "at": time.time(), "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        with self.lock:
            self.requests.append(rec)  # before any hanging, so a timed-out attempt is seen
        status, headers = 200, {}
        name = path.strip("/").split("/")[0]
        if name == "flaky" and n <= 2:
            status = 500
        elif name == "gone":
            status = 410
        elif name == "limited" and n == 1:
            status, headers = 429, {"Retry-After": "2"}
        elif name == "hang" and n == 1:
            await asyncio.sleep(30)
        elif name == "fail-first-two":
            # Per message: the first two attempts of each webhook-id fail.
            wid = rec["headers"].get("webhook-id")
            with self.lock:
                k = f"{path}:{wid}"
                self.calls[k] = self.calls.get(k, 0) + 1
                status = 500 if self.calls[k] <= 2 else 200
        elif name == "redirect":
            status, headers = 302, {"Location": "http://169.254.169.254/latest/meta-data/"}
        rec["status"] = status
        return web.Response(status=status, headers=headers, text="ok")

    def of(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


def webhooks_config(receivers: Receivers, hooks: dict[str, str], *, allow_private: bool = True, schedule=(1, 1, 1, 1)) -> str:
    text = globex_config()
    for ws, url in hooks.items():
        text += f'\n[[workspaces]]\nname = "{ws}"\n'
    for ws, url in hooks.items():
        secret = f'["{SECRET}", "{OLD_SECRET}"]' if ws == "w-ok" else f'"{SECRET}"'
        text += f'\n[[webhooks]]\nworkspace = "{ws}"\nurl = "{url}"\nobjects = ["goal-propensity-change"]\nsecret = {secret}\n'
    text += f"\n[dispatcher]\nallow_private_targets = {'true' if allow_private else 'false'}\ntimeout_seconds = 3\nretry_schedule_seconds = {list(schedule)}\n"
    return text


def change(workspace: str, customer: str, likelihood: float) -> model.Record:
    value = {
        "message_id": str(uuid.uuid4()), "workspace": workspace, "customer_id": customer, "goal_name": "30-day Conversion",
        "likelihood": likelihood, "previous_likelihood": None, "status": "active", "model_version": "test",
        "model_kind": "logistic", "drivers": [{"feature": "Style Widget", "value": "2", "contribution": 0.4}],
        "goal_days_left": 12, "timestamp": model.now_ms(),
    }
    return model.Record("goalstream.GoalPropensityChange", topics.PROPENSITY, model.partition_key(workspace, customer), value)


def publish(stack: StackProcess, records: list[model.Record]) -> None:
    async def go():
        p = RecordProducer(f"127.0.0.1:{stack.kafka_port}", idempotence=False)
        await p.start()
        try:
            await p.publish(records)
        finally:
            await p.stop()

    asyncio.run(go())


@pytest.fixture(scope="module")
def receivers():
    return Receivers()


@pytest.fixture(scope="module")
def hook_stack(tmp_path_factory, receivers):
    hooks = {w: receivers.url(f"/{w.removeprefix('w-')}") for w in ("w-flaky", "w-gone", "w-limited", "w-hang", "w-ok", "w-redirect")}
    s = StackProcess(tmp_path_factory.mktemp("hooks"), config=webhooks_config(receivers, hooks)).start()
    yield s
    s.close()


def test_fails_twice_then_accepts_three_attempts_same_id_and_body(hook_stack, receivers):
    rec = change("w-flaky", "c1", 0.42)
    publish(hook_stack, [rec])
    got = wait_for(lambda: len(receivers.of("/flaky")) >= 3 and receivers.of("/flaky"), timeout=30)
    time.sleep(1.5)
    got = receivers.of("/flaky")
    assert [r.get("status") for r in got] == [500, 500, 200]
    assert len({r["headers"]["webhook-id"] for r in got}) == 1 and len({r["body"] for r in got}) == 1
    body = json.loads(got[0]["body"])
    assert body["object"] == "goal-propensity-change" and body["meta"] == {"customer_id": "c1", "goal_name": "30-day Conversion"}
    assert body["data"][0]["likelihood"] == 0.42 and isinstance(body["timestamp"], int)
    h = got[0]["headers"]
    assert h["user-agent"] == "traitly" and h["content-type"] == "application/json" and h["accept"] == "application/json"
    assert all(reference_verify(SECRET, r["headers"], r["body"]) for r in got)
    wait_for(lambda: hook_stack.sql("SELECT groupArray(outcome) FROM (SELECT outcome FROM webhook_attempts WHERE endpoint_id IN "
                                    "(SELECT endpoint_id FROM webhook_deliveries WHERE workspace = 'w-flaky') ORDER BY attempted_at)").strip()
             == "['retry','retry','delivered']")


def test_410_disables_the_endpoint(hook_stack, receivers):
    publish(hook_stack, [change("w-gone", "c1", 0.3)])
    wait_for(lambda: len(receivers.of("/gone")) == 1, timeout=20)
    wait_for(lambda: hook_stack.sql("SELECT disabled FROM webhook_endpoints FINAL WHERE workspace = 'w-gone'").strip() == "1")
    publish(hook_stack, [change("w-gone", "c2", 0.5), change("w-gone", "c1", 0.6)])
    time.sleep(3)
    assert len(receivers.of("/gone")) == 1  # nothing more is sent to it
    wait_for(lambda: hook_stack.sql("SELECT count() FROM webhook_deliveries FINAL WHERE workspace = 'w-gone' AND status = 'failed'").strip() == "3")


def test_a_failed_delivery_is_replayed_to_its_endpoint(hook_stack, receivers):
    """`goalstream webhooks replay --id`: the dead-lettered delivery goes to that endpoint again
    (here the one that answered 410, which the replay turns back on: it answers 410 again)."""
    letters = wait_for(lambda: [json.loads(x) for x in goalstream(hook_stack, "webhooks", "list").stdout.splitlines()
                                if "/gone" in json.loads(x)["reason"]], timeout=20)
    before = len(receivers.of("/gone"))
    out = goalstream(hook_stack, "webhooks", "replay", "--id", letters[0]["id"])
    assert out.returncode == 0 and "replayed 1 of 1" in out.stdout, out.stderr
    wait_for(lambda: len(receivers.of("/gone")) == before + 1, timeout=20)
    replayed = receivers.of("/gone")[-1]
    assert reference_verify(SECRET, replayed["headers"], replayed["body"])


def test_429_retry_after_is_honoured(hook_stack, receivers):
    publish(hook_stack, [change("w-limited", "c1", 0.3)])
    wait_for(lambda: len(receivers.of("/limited")) == 2, timeout=30)
    first, second = receivers.of("/limited")
    assert first["status"] == 429 and second["status"] == 200
    gap = second["at"] - first["at"]
    assert gap >= 1.95, f"retried after {gap:.2f}s despite Retry-After: 2 (schedule says 1 s)"


def test_a_hanging_receiver_times_out_and_is_retried(hook_stack, receivers):
    publish(hook_stack, [change("w-hang", "c1", 0.3)])
    wait_for(lambda: len(receivers.of("/hang")) == 2, timeout=30)
    first, second = receivers.of("/hang")
    assert second["at"] - first["at"] >= 3.0  # the first attempt was given up after the 3 s timeout
    wait_for(lambda: "timed out after 3s" in hook_stack.sql(
        "SELECT error FROM webhook_attempts WHERE url LIKE '%/hang' ORDER BY attempted_at LIMIT 1"))


def test_signatures_verify_with_the_reference_algorithm_during_rotation(hook_stack, receivers):
    publish(hook_stack, [change("w-ok", "c1", 0.3)])
    (r,) = wait_for(lambda: receivers.of("/ok"), timeout=20)
    sigs = r["headers"]["webhook-signature"].split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs)  # one per secret
    assert reference_verify(SECRET, r["headers"], r["body"]) and reference_verify(OLD_SECRET, r["headers"], r["body"])
    tampered = r["body"].replace(b"0.3", b"0.9")
    assert not reference_verify(SECRET, r["headers"], tampered)


def test_a_redirect_is_not_followed(hook_stack, receivers):
    publish(hook_stack, [change("w-redirect", "c1", 0.3)])
    wait_for(lambda: len(receivers.of("/redirect")) >= 2, timeout=30)  # retried, never followed
    out = hook_stack.sql("SELECT status_code, outcome FROM webhook_attempts WHERE url LIKE '%/redirect' ORDER BY attempted_at LIMIT 1")
    assert out.split() == ["302", "retry"]


def test_ssrf_guard_refuses_internal_targets(tmp_path, receivers):
    targets = {
        "w-a": "http://127.1/", "w-b": "http://0x7f000001/", "w-c": "http://2130706433/",
        "w-d": "http://[::ffff:127.0.0.1]/", "w-e": "http://169.254.169.254/latest/meta-data/",
        "w-f": receivers.url("/redirect"),
    }
    s = StackProcess(tmp_path / "ssrf", config=webhooks_config(receivers, targets, allow_private=False)).start()
    try:
        before = len(receivers.of("/redirect"))
        publish(s, [change(ws, "c1", 0.5) for ws in targets])
        rows = wait_for(lambda: [json.loads(x) for x in s.sql(
            "SELECT workspace, outcome, error FROM webhook_attempts ORDER BY workspace", "JSONEachRow").splitlines()
            if x.strip()] if s.sql("SELECT count() FROM webhook_attempts").strip() == str(len(targets)) else None, timeout=30)
        assert [r["outcome"] for r in rows] == ["refused"] * len(targets), rows
        assert all("target refused" in r["error"] for r in rows)
        assert len(receivers.of("/redirect")) == before  # not even the first hop: 127.0.0.1 is loopback
        wait_for(lambda: s.sql("SELECT count() FROM deadletters WHERE stage = 'dispatcher'").strip() == str(len(targets)))
    finally:
        s.terminate(60)
        s.kill()


def test_kill_mid_retry_then_restart_delivers_each_once_in_order(tmp_path, receivers):
    hooks = {"w-crash": receivers.url("/fail-first-two/a"), "w-crash2": receivers.url("/fail-first-two/b")}
    work = tmp_path / "crash"
    s = StackProcess(work, config=webhooks_config(receivers, hooks, schedule=(4, 4, 4))).start()
    records = [change(ws, f"cust{c}-ü", round(0.1 * k + 0.01 * c, 3)) for k in range(1, 5) for c in range(3) for ws in hooks]
    try:
        publish(s, records)
        n = len(records)
        wait_for(lambda: s.sql("SELECT count() FROM webhook_deliveries FINAL").strip() == str(n), timeout=30)
        # Mid-retry: first attempts have failed and the retries are waiting (4 s).
        wait_for(lambda: s.sql("SELECT count() FROM webhook_attempts").strip() != "0", timeout=30)
    finally:
        s.proc.kill()  # SIGKILL: no drain, no goodbye
        s.proc.wait(10)
    again = StackProcess(work, config=webhooks_config(receivers, hooks, schedule=(4, 4, 4)))
    again.start()
    try:
        def successes():
            return [r for p in ("/fail-first-two/a", "/fail-first-two/b") for r in receivers.of(p) if r.get("status") == 200]

        wait_for(lambda: len(successes()) >= len(records), timeout=120)
        time.sleep(2)
        ok = successes()
        ids = [r["headers"]["webhook-id"] for r in ok]
        assert len(ids) == len(set(ids)) == len(records), "each message exactly one success"
        for path in ("/fail-first-two/a", "/fail-first-two/b"):
            for c in range(3):
                seq = [json.loads(r["body"])["data"][0]["likelihood"] for r in receivers.of(path)
                       if r.get("status") == 200 and json.loads(r["body"])["meta"]["customer_id"] == f"cust{c}-ü"]
                assert seq == sorted(seq) and len(seq) == 4, (path, c, seq)
    finally:
        again.terminate(60)
        again.kill()
