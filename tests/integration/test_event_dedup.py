"""A resend after a restart is stored once: the events sink remembers what ClickHouse stored last.

Real chDB (the session's warehouse); the Kafka messages are built in memory as the consumer
hands them over (topic, partition, offset, value, headers), both of the sink's paths.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from schemas import codec, model, topics
from stream_processors.runtime import Item
from stream_processors.sinks import EventsSink

NOV = int(datetime(2026, 11, 30, 23, 0, tzinfo=timezone.utc).timestamp() * 1000)
DEC = int(datetime(2026, 12, 1, 1, 0, tzinfo=timezone.utc).timestamp() * 1000)


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes
    headers: Any
    key: bytes | None = None


def msg(ws: str, message_id: str, ts: int, offset: int) -> Msg:
    rec = model.event(workspace=ws, customer_id="c1", name="opened", properties={"o": offset}, source="retainly",
                      timestamp_ms=ts, message_id=message_id)
    value, headers = codec.encode(rec.schema, rec.value)
    return Msg(topics.EVENTS, 0, offset, value, list(headers), rec.key)


async def stored(warehouse, ws: str) -> dict[str, int]:
    rows = await warehouse.rows(
        "SELECT message_id, count() AS n FROM events WHERE workspace = {ws:String} GROUP BY message_id", {"ws": ws})
    return {r["message_id"]: int(r["n"]) for r in rows}


async def test_a_resend_after_a_restart_with_a_timestamp_in_another_month_leaves_one_raw_row(warehouse):
    ws = f"dedup-{uuid.uuid4().hex[:8]}"
    first = EventsSink(warehouse, dedup_window=1000)
    await first.write_raw([(m, codec.schema_of(m.headers)) for m in (msg(ws, "m1", NOV, 0), msg(ws, "m2", NOV, 1))])
    # A restart: a new sink with an empty memory, and the broker's offsets start again, so the
    # batch (and its insert token) differ. The client resends with its clock in December.
    again = EventsSink(warehouse, dedup_window=1000)
    resent = [msg(ws, "m1", DEC, 0), msg(ws, "m3", DEC, 1)]
    await again.write_raw([(m, codec.schema_of(m.headers)) for m in resent])
    # The decoding path (what the runtime falls back to) after another restart.
    third = EventsSink(warehouse, dedup_window=1000)
    await third.write([Item(m, model.EVENT, codec.decode(m.value, m.headers)[1]) for m in [msg(ws, "m2", DEC, 7)]])
    assert await stored(warehouse, ws) == {"m1": 1, "m2": 1, "m3": 1}  # raw rows, no FINAL
    months = await warehouse.rows(
        "SELECT message_id, toYYYYMM(timestamp) AS month FROM events WHERE workspace = {ws:String} ORDER BY message_id",
        {"ws": ws})
    assert [(r["message_id"], int(r["month"])) for r in months] == [("m1", 202611), ("m2", 202611), ("m3", 202612)]


async def test_an_assignment_makes_the_sink_read_what_another_worker_stored(warehouse):
    ws = f"dedup-{uuid.uuid4().hex[:8]}"
    mine, other = EventsSink(warehouse, dedup_window=1000), EventsSink(warehouse, dedup_window=1000)
    await mine.write_raw([(m, codec.schema_of(m.headers)) for m in [msg(ws, "a", NOV, 0)]])
    await other.write_raw([(m, codec.schema_of(m.headers)) for m in [msg(ws, "b", NOV, 0)]])  # another worker
    mine.reseed({"events-0"})  # the rebalance hands it that worker's partition
    await mine.write_raw([(m, codec.schema_of(m.headers)) for m in [msg(ws, "b", DEC, 5)]])
    assert await stored(warehouse, ws) == {"a": 1, "b": 1}
