"""Forgetting a person through ``goalstream up``: a person with events under three ids,
scores, webhook deliveries and a dead letter is erased everywhere by ``POST
/admin/v1/forget``; with ``suppress`` their later records are refused in each dialect's
shape, across a restart, and a replay of their old raw records onto the topic stores nothing;
the propensity topic and the webhooks carry nothing of them after the request. A plain
forget (Customer.io's documented DELETE) erases the history and lets the person start again."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from schemas import codec, model, topics
from schemas.kafka import RecordProducer
from tests.conftest import StackProcess, wait_for
from tests.integration.test_goals import read_topic
from tests.integration.test_webhooks import Receivers, SECRET

GOAL = "30-day Conversion"
VICTIM_IDS = ("victim", "victim-old", "victim-anon")
TABLES = {
    "events": "person_id IN {ids}",
    "customers": "customer_id IN {ids}",
    "customer_merges": "customer_id IN {ids} OR merged_id IN {ids}",
    "goal_status": "customer_id IN {ids}",
    "goal_aggregates": "customer_id IN {ids}",
    "propensity_scores": "customer_id IN {ids}",
    "webhook_deliveries": "customer_id IN {ids}",
    "deadletters": "key IN {keys}",
}


def config(receivers: Receivers) -> str:
    from tests.conftest import globex_config

    return globex_config() + f'''
[[goals]]
workspace = "acme"
name = "{GOAL}"
window_days = 30
target_event = "purchase"

[[webhooks]]
workspace = "acme"
url = "{receivers.url('/hook')}"
objects = ["goal-propensity-change"]
secret = "{SECRET}"

[dispatcher]
allow_private_targets = true
'''


def call(stack: StackProcess, method: str, path: str, body: Any = None, headers: dict | None = None,
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(stack.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=150) as resp:
            text = resp.read()
            return resp.status, json.loads(text) if text else None
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text


TRAITLY = {"Authorization": "Token tk_live_123"}
ADMIN = {"Authorization": "Bearer adm_1"}
SEGMENT = {"Authorization": "Basic d2tfMTo="}  # wk_1:


def counts(stack: StackProcess, ids: tuple[str, ...]) -> dict[str, int]:
    arr = "[" + ", ".join(f"'{i}'" for i in ids) + "]"
    keys = "[" + ", ".join(f"'acme:{i}'" for i in ids) + "]"
    out = {}
    for table, where in TABLES.items():
        sql = f"SELECT count() FROM {table} WHERE " + ("" if table == "deadletters" else "workspace = 'acme' AND ")
        out[table] = int(stack.sql(sql + "(" + where.format(ids=arr, keys=keys) + ")").strip())
    out["webhook_attempts"] = int(stack.sql(
        f"SELECT count() FROM webhook_attempts WHERE delivery_id IN (SELECT delivery_id FROM webhook_deliveries "
        f"WHERE workspace = 'acme' AND customer_id IN {arr})").strip())
    return out


def others(stack: StackProcess) -> dict[str, int]:
    return counts(stack, tuple(f"other{i}" for i in range(3)))


@pytest.fixture(scope="module")
def receivers():
    return Receivers()


@pytest.fixture(scope="module")
def forget_stack(tmp_path_factory, receivers):
    s = StackProcess(tmp_path_factory.mktemp("forget"), config=config(receivers), env={"GOALSTREAM_FORGET_SETTLE_S": "1"}).start()
    yield s
    s.close()


async def _produce_raw(stack: StackProcess, key: bytes, value: bytes, headers: list) -> None:
    p = AIOKafkaProducer(bootstrap_servers=f"127.0.0.1:{stack.kafka_port}")
    await p.start()
    try:
        await p.send_and_wait(topics.EVENTS, value=value, key=key, headers=headers)
    finally:
        await p.stop()


def test_forget_with_suppress_erases_the_person_everywhere_and_keeps_them_out(forget_stack, receivers):
    s = forget_stack
    signed_up = time.time() - 86400
    for who in ("victim", "victim-old", "other0", "other1", "other2"):
        assert call(s, "POST", "/api/v1/customer", {"customer_id": who, "name": f"Customer {who}", "email": f"{who}@x.example", "plan": "Starter", "created_at": signed_up},
                    TRAITLY)[0] == 200
    for i in range(20):
        for who in ("victim", "other0", "other1", "other2"):
            assert call(s, "POST", "/api/v1/event", {"customer_id": who, "name": "Style Widget", "message_id": f"{who}-{i}"},
                        TRAITLY)[0] == 200
    assert call(s, "POST", "/api/v1/event", {"customer_id": "victim-old", "name": "old", "message_id": "old-1"}, TRAITLY)[0] == 200
    assert call(s, "POST", "/v1/track", {"anonymousId": "victim-anon", "event": "Browsed", "messageId": "anon-1"}, SEGMENT)[0] == 200
    assert call(s, "POST", "/v1/track", {"anonymousId": "victim-anon", "userId": "victim", "event": "Signed in"}, SEGMENT)[0] == 200
    assert call(s, "POST", "/v1/alias", {"previousId": "victim-old", "userId": "victim"}, SEGMENT)[0] == 200
    # A record nobody can decode, about the victim: a dead letter quoting them.
    asyncio.run(_produce_raw(s, b"acme:victim", b"\xff\xfe not avro", [(codec.SCHEMA_HEADER, b"goalstream.Event"),
                                                                      (codec.VERSION_HEADER, b"1")]))
    wait_for(lambda: all(n > 0 for t, n in counts(s, VICTIM_IDS).items()), timeout=90)
    wait_for(lambda: receivers.of("/hook"), timeout=60)
    time.sleep(3)  # scoring and deliveries of the others settle
    others_before = others(s)
    assert all(n > 0 for t, n in others_before.items() if t not in ("deadletters", "customer_merges"))

    started = time.monotonic()
    status, reg = call(s, "POST", "/admin/v1/forget", {"customer_id": "victim", "suppress": True, "wait": True}, ADMIN)
    took = time.monotonic() - started
    assert status == 200 and reg["state"] == "completed", reg
    assert sorted(reg["ids"]) == sorted(VICTIM_IDS)
    requested = time.time()
    print(f"forget took {took:.1f}s; removed {reg['removed']}")
    assert counts(s, VICTIM_IDS) == {t: 0 for t in [*TABLES, "webhook_attempts"]}
    assert others(s) == others_before
    # Refused in each dialect's shape, never stored.
    status, body = call(s, "POST", "/api/v1/event", {"customer_id": "victim", "name": "again"}, TRAITLY)
    assert status == 403 and body["error"]["type"], body
    status, body = call(s, "POST", "/v1/track", {"anonymousId": "victim-anon", "event": "again"}, SEGMENT)
    assert status == 403 and body["code"] == "suppressed"
    status, _ = call(s, "POST", "/v1/batch", {"batch": [{"type": "track", "userId": "other0", "event": "x"},
                                                       {"type": "track", "userId": "victim-old", "event": "x"}]}, SEGMENT)
    assert status == 403

    # Across a restart, and a replay of an old raw record onto the topic.
    assert s.terminate() == 0
    s.start()
    assert call(s, "POST", "/api/v1/event", {"customer_id": "victim", "name": "after restart"}, TRAITLY)[0] == 403
    old = model.event(workspace="acme", customer_id="victim", name="Style Widget", properties={}, source="traitly",
                      received_at_ms=int(signed_up * 1000) + 1000, message_id="victim-replayed")
    value, headers = codec.encode(old.schema, old.value)
    asyncio.run(_produce_raw(s, old.key, value, list(headers)))
    assert call(s, "POST", "/api/v1/event", {"customer_id": "other0", "name": "marker", "message_id": "marker-1"}, TRAITLY)[0] == 200
    wait_for(lambda: s.sql("SELECT count() FROM events WHERE message_id = 'marker-1'").strip() == "1", timeout=60)
    time.sleep(2)
    assert counts(s, VICTIM_IDS)["events"] == 0
    # Nothing about them on the propensity topic or in a webhook after the request.
    changes = [r for r in read_topic(s, topics.PROPENSITY) if r["customer_id"] in VICTIM_IDS]
    assert all(r["timestamp"].timestamp() < requested - 0.5 for r in changes), changes
    hooks = [r for r in receivers.of("/hook") if r["at"] > requested and b'"victim' in r["body"]]
    assert hooks == []
    listed = call(s, "GET", "/admin/v1/forget", headers=ADMIN)[1]["data"]
    assert [(r["customer_id"], r["type"], r["state"]) for r in listed] == [("victim", "SUPPRESS_WITH_DELETE", "completed")]


def test_a_customerio_delete_erases_the_history_and_the_person_may_come_back(forget_stack):
    s = forget_stack
    cio = {"Authorization": "Basic WU9VUi1TSVRFLUlELUhFUkU6WU9VUi1TRUNSRVQtQVBJLUtFWS1IRVJF"}
    assert call(s, "PUT", "/api/v1/customers/leaver", {"email": "l@x.example"}, cio)[0] == 200
    assert call(s, "POST", "/api/v1/customers/leaver/events", {"name": "opened"}, cio)[0] == 200
    wait_for(lambda: s.sql("SELECT count() FROM events WHERE customer_id = 'leaver'").strip() == "1", timeout=60)
    assert call(s, "DELETE", "/api/v1/customers/leaver", None, cio)[0] == 200
    wait_for(lambda: any(r["customer_id"] == "leaver" and r["state"] == "completed"
                         for r in call(s, "GET", "/admin/v1/forget", headers=ADMIN)[1]["data"]), timeout=60)
    assert s.sql("SELECT count() FROM events WHERE customer_id = 'leaver'").strip() == "0"
    assert s.sql("SELECT count() FROM customers WHERE customer_id = 'leaver'").strip() == "0"
    # Not suppressed: sending again creates them again, from nothing.
    assert call(s, "POST", "/api/v1/customers/leaver/events", {"name": "back"}, cio)[0] == 200
    wait_for(lambda: s.sql("SELECT name FROM events WHERE customer_id = 'leaver'").strip() == "back", timeout=60)
