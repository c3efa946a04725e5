"""``Warehouse.insert_rows_avro``: rows sent as one Avro container land as ``insert`` would
store them (timestamps as datetimes or epoch ms, nulls, low-cardinality strings), a type
without an Avro mapping takes ``insert``, and the dedup token still makes a repeat a no-op."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from schemas.warehouse import _avro_type

COLUMNS = ("workspace", "goal", "customer_id", "status", "entered_at", "window_end", "reached_at", "plan", "updated_at", "version")


def test_column_types_map_to_what_clickhouse_reads_from_avro():
    assert _avro_type("LowCardinality(String)") == "string"
    assert _avro_type("DateTime64(3, 'UTC')") == {"type": "long", "logicalType": "timestamp-millis"}
    assert _avro_type("Nullable(DateTime64(3, 'UTC'))") == ["null", {"type": "long", "logicalType": "timestamp-millis"}]
    assert _avro_type("UInt32") == "long"  # above Avro int's range
    assert _avro_type("Nullable(Float64)") == ["null", "double"]
    assert _avro_type("Array(String)") is None
    assert _avro_type("DateTime64(6, 'UTC')") is None  # not milliseconds


async def test_rows_land_as_insert_stores_them_and_a_repeat_is_a_no_op(warehouse):
    ws = f"avro-{uuid.uuid4().hex[:8]}"
    ms = 1_764_650_000_123
    rows = [
        [ws, "g", "a", "active", ms, ms + 1000, None, "Pro", ms, 7],
        [ws, "g", "b", "reached", datetime.fromtimestamp(ms / 1000, tz=timezone.utc), ms, ms + 5, "", ms, 8],
    ]
    for _ in range(2):
        await warehouse.insert_rows_avro("goal_status", rows, COLUMNS, f"tok-{ws}")
    got = await warehouse.rows(
        "SELECT customer_id, status, toUnixTimestamp64Milli(entered_at) AS e, toUnixTimestamp64Milli(reached_at) AS r, plan, version FROM goal_status "
        "WHERE workspace = {ws:String} ORDER BY customer_id",
        {"ws": ws},
    )
    assert [(r["customer_id"], r["status"], r["e"], r["plan"], r["version"]) for r in got] == [
        ("a", "active", ms, "Pro", 7), ("b", "reached", ms, "", 8)]
    assert got[0]["r"] is None and got[1]["r"] == ms + 5


async def test_a_table_with_a_type_avro_does_not_map_takes_insert(warehouse):
    name = f"avro_fallback_{uuid.uuid4().hex[:8]}"
    await warehouse.command(f"CREATE TABLE {name} (k String, tags Array(String)) ENGINE = MergeTree ORDER BY k")
    await warehouse.insert_rows_avro(name, [["x", ["a", "b"]]], ("k", "tags"))
    assert await warehouse.rows(f"SELECT k, tags FROM {name}") == [{"k": "x", "tags": ["a", "b"]}]


# -- the scorer writes goal_status / goal_aggregates rows only when they change ---------------

GOAL_CONFIG = """
[[workspaces]]
name = "{ws}"
traitly_token = "tk_{ws}"

[[goals]]
workspace = "{ws}"
name = "conv"
window_days = 30
target_event = "purchase"
[[goals.actions]]
event_name = "invite"
message_plaintext = "Invite"
message_html = "<p>Invite</p>"
"""


async def test_the_scorer_rewrites_only_the_rows_that_changed_and_they_read_back_whole(warehouse, broker, tmp_path):
    from schemas.config import load_config
    from schemas.kafka import RecordProducer
    from schemas.settings import WorkerSettings
    from stream_processors.scoring.processor import Scorer

    ws = f"w{uuid.uuid4().hex[:8]}"
    path = tmp_path / "goalstream.toml"
    path.write_text(GOAL_CONFIG.format(ws=ws))
    config = load_config(path)
    await warehouse.command(
        "INSERT INTO customers (workspace, customer_id, created_at, updated_at, attributes, version) "
        "VALUES ({ws:String}, 'c1', now64(3) - toIntervalDay(2), now64(3), {a:String}, 1)", {"ws": ws, "a": '{"plan":"Pro"}'})

    async def event(name: str) -> None:
        await warehouse.command(
            "INSERT INTO events (message_id, workspace, customer_id, name, timestamp, received_at) "
            "VALUES (generateUUIDv4(), {ws:String}, 'c1', {n:String}, now64(3) - toIntervalHour(1), now64(3))", {"ws": ws, "n": name})

    async def count(table: str) -> int:
        rows = await warehouse.rows(f"SELECT count() AS n FROM {table} WHERE workspace = {{ws:String}}", {"ws": ws})
        return int(rows[0]["n"])

    await event("invite")
    await event("login")
    producer = RecordProducer(broker.bootstrap, idempotence=False)
    await producer.start()
    try:
        scorer = Scorer(WorkerSettings(propensity_threshold=0), config, warehouse, producer)
        await scorer.score({ws: {"c1"}}, "event", "r1")
        assert (await count("goal_status"), await count("goal_aggregates")) == (1, 2)
        await scorer.score({ws: {"c1"}}, "event", "r2")  # nothing changed: no row again
        assert (await count("goal_status"), await count("goal_aggregates")) == (1, 2)
        await event("invite")
        await scorer.score({ws: {"c1"}}, "event", "r3")  # one name's counts moved: that row only
        assert (await count("goal_status"), await count("goal_aggregates")) == (1, 3)
        assert await count("propensity_scores") == 3  # every score is kept
        # A restarted scorer knows nothing it wrote: it writes every row once more, harmlessly.
        again = Scorer(WorkerSettings(propensity_threshold=0), config, warehouse, producer)
        await again.score({ws: {"c1"}}, "event", "r4")
        assert (await count("goal_status"), await count("goal_aggregates")) == (2, 5)
    finally:
        await producer.stop()
    current = await warehouse.rows(
        "SELECT event_name, window_count, total_count FROM goal_aggregates FINAL WHERE workspace = {ws:String} ORDER BY event_name",
        {"ws": ws})
    assert [(r["event_name"], r["window_count"], r["total_count"]) for r in current] == [("invite", 2, 2), ("login", 1, 1)]
    status = await warehouse.rows("SELECT status, plan FROM goal_customers WHERE workspace = {ws:String}", {"ws": ws})
    assert status == [{"status": "active", "plan": "Pro"}]
