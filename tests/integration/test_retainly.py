"""Retainly end to end through ``goalstream up``: the seed's curl examples as printed (host
changed) land in ClickHouse with their types; array semantics (upsert by id, append without,
delete by ids, missing customer created, unknown customer/field harmless) as stored rows;
10,000-item requests (each count limit just under is accepted and lands, just over is 422);
and, in process against the real broker, that 10,000 customers are one ``publish`` call."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway.app import create_app
from schemas.config import parse_config
from schemas.kafka import RecordProducer
from schemas.settings import GatewaySettings
from tests.conftest import globex_config, wait_for

# The seed's curl examples, copied into the repository (tests/fixtures/retainly-seed-curls.txt).
SEED = Path(__file__).resolve().parent.parent / "fixtures" / "retainly-seed-curls.txt"
ACME = {"key": "your_api_key", "secret": "your_api_secret", "Content-Type": "application/json"}


def seed_curls() -> list[tuple[str, str, list[str], str]]:
    """(method, path, headers, body) of each curl example, exactly as the seed prints them."""
    out = []
    for m in re.finditer(r"curl -X '(\w+)' \\\n'([^']+)' \\\n((?:-H '[^']*' \\\n)*)-d '(.*?)'", SEED.read_text(), re.S):
        method, url, headers, body = m.groups()
        out.append((method, "/" + url.split("retainly.app/")[1], re.findall(r"-H '([^']*)'", headers), body))
    return out


def curl(method: str, url: str, headers: list[str], body: str) -> tuple[int, bytes]:
    args = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]
    for h in headers:
        args += ["-H", h]
    out = subprocess.run([*args, "-d", body], capture_output=True, timeout=60)
    raw, _, code = out.stdout.rpartition(b"\n")
    return int(code), raw


def send(url: str, method: str, body: object, headers: dict[str, str] = ACME, timeout: float = 120) -> tuple[int, object]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw, status = r.read(), r.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    return status, json.loads(raw) if raw else None


def rows(stack, query: str) -> list[dict]:
    return [json.loads(line) for line in stack.sql(query, "JSONEachRow").splitlines()]


def attributes(stack, customer_id: str) -> dict | None:
    r = rows(stack, f"SELECT attributes FROM customers FINAL WHERE workspace = 'acme' AND customer_id = '{customer_id}' AND is_deleted = 0")
    return json.loads(r[0]["attributes"]) if r else None


def test_seed_examples_as_printed_land_typed(stack):
    examples = seed_curls()
    assert [(m, p) for m, p, _, _ in examples] == [
        ("POST", "/customers"), ("POST", "/arrays"), ("DELETE", "/customers"), ("DELETE", "/arrays"), ("POST", "/events"),
    ]
    answers = [curl(m, stack.url + p, h, b) for m, p, h, b in examples]
    assert answers == [
        (200, b'"2 customer(s) created or updated"'),
        (200, b'"2 array record(s) saved"'),
        (400, b'"Invalid JSON data in request body: Syntax error"'),  # ids with leading zeros are not JSON
        (200, b'"2 array record(s) deleted"'),
        (200, b""),  # the seed: "No response body"
    ]

    # Customer 2 as stored: every type kept (dates typed by the view), the nested array too.
    def customer2():
        r = rows(stack, """
            SELECT dynamicType(attrs.customer_field_string) AS s, dynamicType(attrs.customer_field_boolean) AS b,
                   dynamicType(attrs.customer_field_number) AS n, dynamicType(attrs.customer_field_date) AS d,
                   dynamicType(attrs.customer_field_date_time) AS dt, attrs.customer_field_date AS date,
                   attributes
            FROM customers_typed WHERE workspace = 'acme' AND customer_id = '2'""")
        return r and "booking" in json.loads(r[0]["attributes"]) and r[0]
    c2 = wait_for(customer2)
    assert (c2["s"], c2["b"], c2["n"], c2["d"], c2["date"]) == ("String", "Bool", "Int64", "Date", "2022-02-25")
    assert c2["dt"].startswith("DateTime64")
    a2 = json.loads(c2["attributes"])
    assert a2["customer_field_array_with_objects"][0]["object_field_array_with_nested_array"] == [
        {"nested_array_object_field_string": "value", "nested_array_object_field_boolean": True}
    ]
    # /arrays on customer 2: the item without an id appended, the one with id 2 added.
    assert a2["booking"] == [{"booking_number": 123}, {"id": 2, "booking_number": 123}]

    # Customer 1: its linear array kept; purchases 1 and 2 upserted, then deleted by DELETE /arrays.
    def customer1():
        a = attributes(stack, "1")
        return a and a.get("purchases") == [] and a
    a1 = wait_for(customer1)
    assert a1["customer_field_array_with_linears"] == ["one", "two", "three"]
    assert a1["customer_field_boolean"] is True and a1["customer_field_number"] == 1

    # The event, its properties typed, the array of objects kept.
    def event():
        r = rows(stack, """
            SELECT customer_id, name, dynamicType(props.param1) AS t, props.param1 AS p1, properties
            FROM events_typed WHERE workspace = 'acme' AND source = 'retainly' AND name = 'event'""")
        return r and r[0]
    e = wait_for(event)
    assert (e["customer_id"], e["t"], e["p1"]) == ("unique customer id", "String", "value1")
    assert json.loads(e["properties"])["nested_event_array_param"] == [{"nested_array_param1": "value1"}, {"nested_array_param1": "value2"}]
    # The refused DELETE stored nothing: customers 1 and 2 are there, no odd ids appeared.
    assert rows(stack, "SELECT count() AS n FROM customers WHERE workspace = 'acme' AND customer_id LIKE '%1010011%'") == [{"n": 0}]


def test_forbidden_before_anything(stack):
    code, raw = curl("POST", f"{stack.url}/customers", ["key: your_api_key", "secret: wrong"], "not json")
    assert (code, json.loads(raw)) == (403, {"message": "forbidden"})
    code, raw = curl("POST", f"{stack.url}/events", ["api-key: rk_globex", "api-secret: your_api_secret"], '{"customer_id":1,"event":"e"}')
    assert (code, json.loads(raw)) == (403, {"message": "forbidden"})


def test_array_semantics_in_clickhouse(stack):
    url = stack.url
    # A missing customer is created by its first array upsert.
    assert send(f"{url}/arrays", "POST", {"records": [
        {"customer_id": "arr-1", "field": "purchases", "data": [{"id": 1, "amount": 1}, {"id": "2", "amount": 2}, {"amount": 3}]},
    ]}) == (200, "1 array record(s) saved")
    # id 1 upserted in place (an id given as "1" or 1 is the same item), an item without id appended.
    assert send(f"{url}/arrays", "POST", {"records": [
        {"customer_id": "arr-1", "field": "purchases", "data": [{"id": "1", "amount": 10}, {"amount": 4}]},
    ]})[0] == 200
    # Deletes by ids; an unknown customer and an unknown field are 200 and change nothing.
    assert send(f"{url}/arrays", "DELETE", {"records": [
        {"customer_id": "arr-1", "field": "purchases", "ids": [2]},
        {"customer_id": "arr-ghost", "field": "purchases", "ids": [1]},
        {"customer_id": "arr-1", "field": "no_such_field", "ids": [1]},
    ]}) == (200, "3 array record(s) deleted")
    assert send(f"{url}/customers", "DELETE", {"customers_ids": ["arr-never-was"]}) == (200, "1 customer(s) deleted")
    # A customer upsert after the arrays keeps them (attributes merge).
    assert send(f"{url}/customers", "POST", {"customers": [{"id": "arr-1", "plan": "pro"}]})[0] == 200

    expected = [{"id": "1", "amount": 10}, {"amount": 3}, {"amount": 4}]
    final = wait_for(lambda: (a := attributes(stack, "arr-1")) and a.get("plan") == "pro" and a)
    assert final == {"purchases": expected, "plan": "pro"}
    assert attributes(stack, "arr-ghost") is None
    assert rows(stack, "SELECT count() AS n FROM customers_typed WHERE customer_id IN ('arr-ghost', 'arr-never-was')") == [{"n": 0}]


def test_count_limits_10000_under_and_over(stack):
    url, n = stack.url, 10_000
    people = [
        {
            "id": f"bulk-{i}",
            "email": f"user{i}@example.com",
            "name": f"User {i}",
            "plan": ["free", "pro", "team"][i % 3],
            "signed_up": "2022-02-25",
            "last_seen": "2024-05-01T10:00:00.000Z",
            "spend": i * 1.5,
            "orders_count": i % 40,
            "newsletter": i % 2 == 0,
            "tags": ["a", "b"],
        }
        for i in range(n)
    ]
    body = {"customers": people}
    size = len(json.dumps(body))
    assert size < GatewaySettings().max_body_bytes

    status, answer = send(f"{url}/customers", "POST", {"customers": [*people, {"id": "bulk-extra"}]})
    assert status == 422 and answer["detail"][0]["type"] == "too_long"

    t0 = time.perf_counter()
    assert send(f"{url}/customers", "POST", body) == (200, f"{n} customer(s) created or updated")
    answered = time.perf_counter() - t0
    count = "SELECT count() AS n FROM customers_typed WHERE workspace = 'acme' AND startsWith(customer_id, 'bulk-')"
    wait_for(lambda: rows(stack, count) == [{"n": n}], timeout=120, interval=0.5)
    stored = time.perf_counter() - t0
    print(f"\n10,000 customers: body {size / 1e6:.2f} MB, 200 after {answered:.2f} s, all in ClickHouse after {stored:.2f} s")
    typed = rows(stack, "SELECT dynamicType(attrs.signed_up) AS d, dynamicType(attrs.spend) AS f FROM customers_typed "
                        "WHERE workspace = 'acme' AND customer_id = 'bulk-3'")
    assert typed == [{"d": "Date", "f": "Float64"}]

    records = [{"customer_id": f"bulk-{i}", "field": "orders", "data": [{"id": 1, "total": i}]} for i in range(n)]
    assert send(f"{url}/arrays", "POST", {"records": [*records, records[0]]})[0] == 422
    assert send(f"{url}/arrays", "POST", {"records": records}) == (200, f"{n} array record(s) saved")
    with_orders = "SELECT count() AS n FROM customers FINAL WHERE workspace = 'acme' AND startsWith(customer_id, 'bulk-') AND JSONLength(attributes, 'orders') = 1"
    wait_for(lambda: rows(stack, with_orders) == [{"n": n}], timeout=120, interval=0.5)

    deletes = [{"customer_id": f"bulk-{i}", "field": "orders", "ids": [1]} for i in range(n)]
    assert send(f"{url}/arrays", "DELETE", {"records": [*deletes, deletes[0]]})[0] == 422
    assert send(f"{url}/arrays", "DELETE", {"records": deletes}) == (200, f"{n} array record(s) deleted")
    wait_for(lambda: rows(stack, with_orders) == [{"n": 0}], timeout=120, interval=0.5)

    ids = [f"bulk-{i}" for i in range(n)]
    assert send(f"{url}/customers", "DELETE", {"customers_ids": [*ids, "bulk-extra"]})[0] == 422
    assert send(f"{url}/customers", "DELETE", {"customers_ids": ids}) == (200, f"{n} customer(s) deleted")
    wait_for(lambda: rows(stack, count) == [{"n": 0}], timeout=120, interval=0.5)
    # The refused requests stored nothing: "bulk-extra" never existed.
    assert rows(stack, "SELECT count() AS n FROM customers WHERE customer_id = 'bulk-extra'") == [{"n": 0}]


class CountingProducer(RecordProducer):
    """The real producer, counting publish calls and records (not a mock: it sends)."""

    calls: list[int]

    async def publish(self, records):
        self.calls.append(len(records))
        await super().publish(records)


@pytest.fixture
async def counted(broker, warehouse):
    settings = GatewaySettings(kafka=broker.bootstrap, clickhouse=warehouse.dsn)
    producer = CountingProducer(broker.bootstrap)
    producer.calls = []
    app = create_app(settings, parse_config(globex_config()), warehouse=warehouse, producer=producer)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, producer
    await client.close()


async def test_10000_customers_are_one_publish(counted):
    client, producer = counted
    body = {"customers": [{"id": i, "email": f"u{i}@example.com", "score": i / 3} for i in range(10_000)]}
    t0 = time.perf_counter()
    resp = await client.post("/customers", json=body, headers={"key": "your_api_key", "secret": "your_api_secret"})
    elapsed = time.perf_counter() - t0
    assert resp.status == 200, await resp.text()
    assert producer.calls == [10_000]
    print(f"\n10,000 customers in process: one publish of 10,000 records, acknowledged in {elapsed:.2f} s")
