"""``goalstream up`` on a data dir written by the previous schema (migrations 1-5) upgrades it
and keeps its data: events once each in bounded partitions, the rollups filled from what was
there, retention set; then a resend of an old message, in another month, stays one raw row.

The old data dir is written by another process (chDB holds one path per process), through
``Warehouse.migrate(upto=5)`` and plain inserts, as the previous release stored them.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
import urllib.request

from schemas.warehouse import migrations
from tests.conftest import ROOT, StackProcess, wait_for

OLD_DATA = """
import asyncio, sys
from schemas.warehouse import Warehouse

async def main(dsn):
    w = await Warehouse(dsn).open()
    assert await w.migrate(upto=5)
    await w.command('''INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source) VALUES
        ('m1', 'acme', 'c1', '', 'Opened', '2026-10-31 23:00:00', '2026-10-31 23:00:01', '{"n":1}', 'segment'),
        ('m1', 'acme', 'c1', '', 'Opened', '2026-11-01 01:00:00', '2026-11-01 01:00:01', '{"n":1}', 'segment'),
        ('m2', 'acme', 'c2', '', 'Paid', '1971-01-01 00:00:00', '2026-11-02 00:00:00', '{"plan":"pro"}', 'segment'),
        ('m3', 'acme', '', 'anon-1', 'Opened', '2099-06-01 00:00:00', '2026-11-03 00:00:00', '{}', 'traitly'),
        ('m4', 'globex', 'g1', '', 'Opened', '2026-11-03 00:00:00', '2026-11-03 00:00:00', '{}', 'traitly')''')
    await w.command('''INSERT INTO customers (workspace, customer_id, created_at, updated_at, name, email, plan, attributes, message_id, version, is_deleted) VALUES
        ('acme', 'c1', '2026-10-01', '2026-10-01', 'Ann', 'a@x', 'free', '{}', 'u1', 1, 0),
        ('acme', 'c1', '2026-10-01', '2026-11-01', 'Ann', 'a@x', 'pro', '{}', 'u2', 2, 0),
        ('acme', 'c2', '2026-10-01', '2026-10-01', 'Bo', '', '', '{}', 'u3', 1, 0),
        ('acme', 'c2', '2026-10-01', '2026-11-01', 'Bo', '', '', '{}', 'u4', 2, 1)''')
    await w.command('''INSERT INTO propensity_scores (workspace, goal, customer_id, scored_at, likelihood, published, status, model_version, model_kind, trigger, drivers, message_id) VALUES
        ('acme', 'g', 'c1', '2026-11-01', 0.5, 1, 'active', 'v1', 'logistic', 'event', '[]', 's1')''')
    await w.command('''INSERT INTO goal_status (workspace, goal, customer_id, status, entered_at, window_end, plan, updated_at, version) VALUES
        ('acme', 'g', 'c1', 'active', '2026-11-01', '2026-12-01', 'pro', '2026-11-01', 1),
        ('acme', 'g', 'c1', 'reached', '2026-11-01', '2026-12-01', 'pro', '2026-11-05', 2),
        ('acme', 'g', 'c2', 'active', '2026-11-01', '2026-12-01', '', '2026-11-01', 1)''')
    await w.close()

asyncio.run(main(sys.argv[1]))
"""


def rows(stack: StackProcess, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in stack.sql(sql).splitlines() if line]


def test_up_on_a_data_dir_of_the_previous_schema_upgrades_it_and_keeps_its_data(tmp_path):
    workdir = tmp_path / "old"
    dsn = f"chdb://{workdir / 'var' / 'clickhouse'}"
    (workdir / "var").mkdir(parents=True)
    subprocess.run([sys.executable, "-c", textwrap.dedent(OLD_DATA), dsn], cwd=ROOT, check=True, timeout=120)

    stack = StackProcess(workdir).start()
    try:
        assert rows(stack, "SELECT max(version) FROM schema_migrations") == [[str(len(migrations()))]]
        # Every event kept, once: the copy m1 made in another month collapsed (raw rows, no FINAL).
        assert rows(stack, "SELECT message_id, count() FROM events GROUP BY message_id ORDER BY message_id") == [
            ["m1", "1"], ["m2", "1"], ["m3", "1"], ["m4", "1"]]
        # Timestamps kept as sent; partitions bounded to [received_at - 10 years, received_at + 1 day].
        assert rows(stack, "SELECT message_id, toString(timestamp), _partition_id FROM events ORDER BY message_id") == [
            ["m1", "2026-11-01 01:00:00.000", "202611"], ["m2", "1971-01-01 00:00:00.000", "201611"],
            ["m3", "2099-06-01 00:00:00.000", "202611"], ["m4", "2026-11-03 00:00:00.000", "202611"]]
        assert rows(stack, "SELECT toString(type) FROM system.columns WHERE database = currentDatabase() AND table = 'events' AND name = 'name'") == [
            ["LowCardinality(String)"]]
        # The rollups, filled from what was stored before.
        assert rows(stack, "SELECT workspace, name, toString(day), events, people FROM events_daily ORDER BY workspace, name, day") == [
            ["acme", "Opened", "2026-11-01", "1", "1"], ["acme", "Opened", "2099-06-01", "1", "1"],
            ["acme", "Paid", "1971-01-01", "1", "1"], ["globex", "Opened", "2026-11-03", "1", "1"]]
        assert rows(stack, "SELECT goal, toString(cohort_day), entered, reached, conversion_rate FROM goal_conversion_daily") == [
            ["g", "2026-11-01", "2", "1", "0.5"]]
        # Current customers without FINAL for the reader: c1's latest version, c2 deleted.
        assert rows(stack, "SELECT customer_id, plan FROM customers_current WHERE workspace = 'acme'") == [["c1", "pro"]]
        assert rows(stack, "SELECT count() FROM propensity_scores") == [["1"]]
        ttl = rows(stack, "SELECT name, engine_full LIKE '%TTL toDateTime(scored_at) + toIntervalDay(90)%' "
                          "FROM system.tables WHERE database = currentDatabase() AND name = 'propensity_scores'")
        assert ttl == [["propensity_scores", "1"]]

        # The client resends m1 now (its clock in another month): still one raw row, and a new one is stored.
        body = json.dumps({"batch": [
            {"type": "track", "userId": "c1", "event": "Opened", "messageId": "m1", "timestamp": "2026-12-01T10:00:00Z"},
            {"type": "track", "userId": "c1", "event": "Opened", "messageId": "m5", "timestamp": "2026-12-01T10:00:00Z"},
        ]}).encode()
        req = urllib.request.Request(f"{stack.url}/v1/batch", data=body, method="POST", headers={
            "Authorization": "Basic " + base64.b64encode(b"wk_1:").decode(), "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200
        wait_for(lambda: rows(stack, "SELECT count() FROM events WHERE message_id = 'm5'") == [["1"]], timeout=60)
        assert rows(stack, "SELECT count(), toString(max(timestamp)) FROM events WHERE message_id = 'm1'") == [
            ["1", "2026-11-01 01:00:00.000"]]
        assert rows(stack, "SELECT sum(events) FROM events_daily WHERE workspace = 'acme'") == [["4"]]
    finally:
        stack.close()
