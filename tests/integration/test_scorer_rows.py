"""The scorer's rows in ClickHouse: goal_status and goal_aggregates rows are written only
when they change and read back whole; timestamps go in as epoch ms and come back exact."""

from __future__ import annotations

import uuid

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
            # properties as the sink writes them (JSON): other tests' analyst queries parse them
            "INSERT INTO events (message_id, workspace, customer_id, name, timestamp, received_at, properties) "
            "VALUES (generateUUIDv4(), {ws:String}, 'c1', {n:String}, now64(3) - toIntervalHour(1), now64(3), '{}')", {"ws": ws, "n": name})

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
        # Nor does one whose partitions were taken away meanwhile (another may have written).
        scorer.rebalanced()
        await scorer.score({ws: {"c1"}}, "event", "r5")
        assert (await count("goal_status"), await count("goal_aggregates")) == (3, 7)
    finally:
        await producer.stop()
    current = await warehouse.rows(
        "SELECT event_name, window_count, total_count FROM goal_aggregates FINAL WHERE workspace = {ws:String} ORDER BY event_name",
        {"ws": ws})
    assert [(r["event_name"], r["window_count"], r["total_count"]) for r in current] == [("invite", 2, 2), ("login", 1, 1)]
    status = await warehouse.rows(
        "SELECT g.status AS status, g.plan AS plan, toUnixTimestamp64Milli(g.entered_at) = toUnixTimestamp64Milli(c.created_at) AS exact "
        "FROM goal_customers AS g JOIN customers AS c ON c.workspace = g.workspace AND c.customer_id = g.customer_id "
        "WHERE g.workspace = {ws:String}", {"ws": ws})
    assert status == [{"status": "active", "plan": "Pro", "exact": 1}]
