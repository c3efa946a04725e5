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
    # Raw row counts are what is checked: no background merge may fold the versions meanwhile
    # (other tests of this session's warehouse delete and insert in these tables too).
    for table in ("goal_status", "goal_aggregates"):
        await warehouse.command(f"SYSTEM STOP MERGES {table}")
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
        for table in ("goal_status", "goal_aggregates"):
            await warehouse.command(f"SYSTEM START MERGES {table}")
    current = await warehouse.rows(
        "SELECT event_name, window_count, total_count FROM goal_aggregates FINAL WHERE workspace = {ws:String} ORDER BY event_name",
        {"ws": ws})
    assert [(r["event_name"], r["window_count"], r["total_count"]) for r in current] == [("invite", 2, 2), ("login", 1, 1)]
    status = await warehouse.rows(
        "SELECT g.status AS status, g.plan AS plan, toUnixTimestamp64Milli(g.entered_at) = toUnixTimestamp64Milli(c.created_at) AS exact "
        "FROM goal_customers AS g JOIN customers AS c ON c.workspace = g.workspace AND c.customer_id = g.customer_id "
        "WHERE g.workspace = {ws:String}", {"ws": ws})
    assert status == [{"status": "active", "plan": "Pro", "exact": 1}]


async def test_a_large_round_publishes_in_parts_and_stores_only_once_all_are_acknowledged(warehouse, broker, tmp_path):
    from schemas.config import load_config
    from schemas.kafka import RecordProducer
    from schemas.settings import WorkerSettings
    from stream_processors.scoring import processor
    from stream_processors.scoring.processor import Scorer

    ws = f"w{uuid.uuid4().hex[:8]}"
    path = tmp_path / "goalstream.toml"
    path.write_text(GOAL_CONFIG.format(ws=ws))
    n = processor.PUBLISH_EVERY * 2 + 200
    await warehouse.command(
        "INSERT INTO customers (workspace, customer_id, created_at, updated_at, attributes, version) "
        "SELECT {ws:String}, concat('c', toString(number)), now64(3) - toIntervalDay(2), now64(3), '{}', 1 FROM numbers({n:UInt32})",
        {"ws": ws, "n": n})
    log: list[tuple[str, int]] = []

    class Recorded:  # the real producer and warehouse, with the order of their calls noted
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

    producer = RecordProducer(broker.bootstrap, idempotence=False)
    spy_producer, spy_warehouse = Recorded(producer), Recorded(warehouse)

    async def publish(records, batched=False):
        acked = await producer.publish(records, batched)
        log.append(("acked", len(records)))
        return acked

    async def insert(table, rows, *args, **kwargs):
        log.append((f"insert {table}", len(rows)))
        return await warehouse.insert(table, rows, *args, **kwargs)

    spy_producer.publish, spy_warehouse.insert = publish, insert
    await producer.start()
    try:
        scorer = Scorer(WorkerSettings(propensity_threshold=0), load_config(path), spy_warehouse, spy_producer)
        assert await scorer.score({ws: {f"c{i}" for i in range(n)}}, "event", "big", chunk=processor.LIVE_CHUNK) == n
    finally:
        await producer.stop()
    # Two records (change, recommendation) per active customer, sent in parts of PUBLISH_EVERY
    # customers, every part acknowledged before the first row is stored.
    assert [x for x in log if x[0] == "acked"] == [("acked", 2 * processor.PUBLISH_EVERY)] * 2 + [("acked", 400)]
    first_insert = next(i for i, x in enumerate(log) if x[0].startswith("insert"))
    assert all(x[0] == "acked" for x in log[:first_insert]) and all(x[0] != "acked" for x in log[first_insert:])
    scores = await warehouse.rows(
        "SELECT uniqExact(message_id) AS ids, countIf(published = 1) AS published FROM propensity_scores WHERE workspace = {ws:String}",
        {"ws": ws})
    assert scores == [{"ids": n, "published": n}]
