"""The golden-fixture runner, shared by its two lanes.

Each file in tests/fixtures/<dialect>/ is one request, the response the seed says it
gets, and the canonical records that must appear on Kafka because of it (read back and
decoded with the writer's schema named in the headers). ``"<any>"`` matches any value.

A fixture file::

    {"about": "...",
     "request": {"method", "path" (query string included),
                 "headers"?: {...}, "auth"?: [user, password] (HTTP Basic),
                 one body at most: "body" (text as sent) | "body_json" (any JSON value)
                 | "body_base64" (raw bytes, e.g. gzip) | "form" ([[key, value], ...])},
     "response": {"status", then "json" (matched) | "text" | "body_base64" (exact),
                  "headers"?: {name: value} (each must be present, "<any>" allowed)},
     "records": [{"schema", "topic", "key", "value"}, ...]}

JSON-in-a-string fields of a record (properties, attributes, items) are compared parsed.
Records are listed by topic, then partition (two in tests), then offset.

Two lanes replay them through ``create_app()`` with this one ``replay``:
- contract (tests/unit/test_golden_contract.py, in ``make check``): every fixture that
  reads nothing from ClickHouse, with the in-memory producer of tests/memory.py (same
  codec, size check and partitioner as the real one) and a warehouse that fails the test
  if anything reads it;
- integration (tests/integration/test_golden.py): the fixtures in ``READS_CLICKHOUSE``,
  against the real broker and chDB.
A fixture belongs to exactly one lane; a new one lands in the contract lane, and if it
reads ClickHouse the contract lane says so and it goes into ``READS_CLICKHOUSE``.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Protocol
from urllib.parse import urlencode

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from schemas import codec, topics

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ANY = "<any>"
CASES = sorted(FIXTURES.glob("*/*.json"))

# The fixtures whose answer is read from ClickHouse (the rest only publish or refuse).
READS_CLICKHOUSE = frozenset({
    "customerio/17-merge-by-email",  # resolves the secondary person by email
    "traitly/06-list-events",
    "traitly/07-list-customers",
})


def case_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def lane(name: str) -> list[Path]:
    """The fixtures of lane ``"contract"`` or ``"integration"``; together, all of them."""
    reads = {"contract": False, "integration": True}[name]
    return [c for c in CASES if (case_id(c) in READS_CLICKHOUSE) == reads]


# (topic, key, value, headers) of one message, as the broker holds it.
Message = tuple[str, bytes, bytes, Iterable[tuple[str, bytes]]]


class Log(Protocol):
    """Where a lane's records land: ``mark()`` now, and ``after(mark)`` -- every message
    published since, by topic, then partition, then offset."""

    async def mark(self) -> Any: ...

    async def after(self, mark: Any) -> list[Message]: ...


def matches(expected, actual, path="$"):
    if expected == ANY:
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected an object, got {actual!r}"
        assert set(expected) == set(actual), f"{path}: keys {sorted(actual)} != {sorted(expected)}"
        for k, v in expected.items():
            matches(v, actual[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{path}: {actual!r} != {expected!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            matches(e, a, f"{path}[{i}]")
    elif isinstance(actual, bytes) and isinstance(expected, str):
        # A bytes field (a dead letter's key) is written in a fixture as its text.
        assert expected == actual.decode(errors="surrogateescape"), f"{path}: {actual!r} != {expected!r}"
    else:
        assert expected == actual, f"{path}: {actual!r} != {expected!r}"


def decoded(topic: str, key: bytes, value: bytes, headers: Iterable[tuple[str, bytes]]) -> dict[str, Any]:
    """One message as a fixture lists it: decoded with the writer's schema from its headers."""
    schema, record = codec.decode(value, headers)
    for field in ("properties", "attributes", "items"):
        if field in record:
            record[field] = orjson.loads(record[field])
    for field in ("timestamp", "received_at", "created_at", "failed_at"):
        if hasattr(record.get(field), "timestamp"):
            record[field] = int(record[field].timestamp() * 1000)
    return {"schema": schema, "topic": topic, "key": key.decode(), "value": record}


def build_request(req: dict) -> tuple[dict, bytes | None]:
    headers = dict(req.get("headers", {}))
    if "auth" in req:
        user, password = req["auth"]
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    body: bytes | None = None
    if "body" in req:
        body = req["body"].encode()
    elif "body_json" in req:
        body = json.dumps(req["body_json"]).encode()
    elif "body_base64" in req:
        body = base64.b64decode(req["body_base64"])
    elif "form" in req:
        body = urlencode(req["form"]).encode()
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    return headers, body


async def serve(app: web.Application) -> TestClient:
    """``app`` on a local port, as `goalstream up` serves it: content codings are decoded
    (with limits) by read_body, not by aiohttp."""
    c = TestClient(TestServer(app))
    await c.server.start_server(auto_decompress=False)
    await c.start_server()
    return c


async def replay(fixture: Path, client: TestClient, log: Log, after_response: Callable[[], Awaitable[None]] | None = None) -> None:
    """Send the fixture's request; check the response and the records it published."""
    case = json.loads(fixture.read_text())
    since = await log.mark()
    req, expected = case["request"], case["response"]
    headers, body = build_request(req)
    resp = await client.request(req["method"], req["path"], headers=headers, data=body)
    raw = await resp.read()
    if after_response is not None:
        await after_response()
    assert resp.status == expected["status"], raw[:2000]
    for name, value in expected.get("headers", {}).items():
        assert name in resp.headers, f"missing response header {name}"
        matches(value, resp.headers[name], f"headers.{name}")
    if "json" in expected:
        assert resp.headers["Content-Type"].startswith("application/json"), resp.headers["Content-Type"]
        matches(expected["json"], json.loads(raw), "body")
    elif "text" in expected:
        assert raw.decode() == expected["text"]
    elif "body_base64" in expected:
        assert raw == base64.b64decode(expected["body_base64"])
    got = [decoded(*m) for m in await log.after(since)]
    matches(case["records"], got, "records")
    if resp.status >= 400:
        # A refused request reaches Kafka only as a dead letter (pixels, whose senders cannot see errors).
        assert all(r["topic"] == topics.DEADLETTER for r in got), "a refused request must not reach Kafka"
