"""Forgetting a person (data-subject deletion), measured on one generated data set: what a
regulation costs at size, and that it removes the person's rows and nothing else.

What flows: a fresh chDB data dir (a temp dir, ``chdb:///...``) gets every migration
(``Warehouse.migrate``), then, generated in SQL (``INSERT ... SELECT FROM numbers(N)``, no
Python loop), a workspace ``acme`` with ``--events`` events (default 1M) over ``--customers``
customers (``c0`` ...; a tenth of the events anonymous), a customers row each, merges and
aliases for some, and for 1,000 of them (``c0, c50, ...``) goal state, goal aggregates, 50
propensity scores, 5 webhook deliveries with 2 attempts each; dead letters (10,000 quoting
customers, a few planted). The person to forget, ``victim``: 10,000 events, an id merged into
it (``victim-old1``, a ``merge`` row, 1,000 events of its own), an anonymous id aliased to it
(``victim-anon``: events with no customer id, an ``alias`` row, and victim's own events that
carry it), customers rows for both ids, the same derived rows as the 1,000, a dead letter keyed
``acme:victim`` and a gateway dead letter whose body quotes ``victim-anon``. Beside them, what
must survive: ``c8``'s events sent from victim's device (customer c8, anonymous ``victim-anon``:
c8's, by ``person_id``), a customer ``victim2`` (a superstring of the id) with events and a dead
letter, dead letters for ``acme:c7`` and a gateway one for ``c9``, and a workspace ``globex``
with its own ``victim`` (same ids, same kinds of rows). The daily rollups are kept by their
materialized views at insert. Every table is then merged (OPTIMIZE FINAL: the person's rows
spread over every part, as after background merges, the delete's worst case).

Then per table: the rows of the victim's ids (events by ``person_id``, merges by either id,
webhook attempts by the victim's delivery ids, dead letters by key or the planted ids), of
everyone else in acme, and of globex (count and a hash of the rows); then
``Regulator(...).request("acme", "victim", suppress=True)`` with ``settle_s=--settle``
(default 0: the time is the id lookup and both sweeps only; the default ``SETTLE_S`` adds that
many seconds of sleep between the sweeps), waited for, timed (the whole regulation, each
``sweep`` call, each statement it ran), and everything counted again.

Checks (exit status 1 if any fails): the regulation completed with ids {victim, victim-anon,
victim-old1}; every victim count is 0 after; everyone else's and globex's rows are the same
(count and hash); ``removed`` equals the counts before; ``events_daily`` for acme sums to
count() of acme's events before and after, and agrees per (name, day) with the events (count
and people); ``goal_conversion_daily`` agrees with goal_status per (goal, cohort day); globex's
rollups are unchanged; c8's events from victim's device stay; the ids are suppressed in the
``Forgotten`` list, in acme only.

Usage: ``python tests/bench/forget.py [--events 1000000] [--customers 50000] [--settle 0]
[--json FILE] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import asyncio
import calendar
import json
import re
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from layout import NAMES  # noqa: E402
from schemas.regulations import Forgotten  # noqa: E402
from schemas.warehouse import Warehouse  # noqa: E402
from stream_processors import forget  # noqa: E402
from stream_processors.forget import Regulator  # noqa: E402

WS, OTHER_WS = "acme", "globex"
VICTIM = "victim"
IDS = sorted(["victim", "victim-old1", "victim-anon"])
TRACKED = 1000  # other customers with goal state, scores and deliveries
DAYS = 90
GOALS = ("trial_to_paid", "reactivate")
# The planted dead letters: (id, stage, key, value, whose: victim / other / globex).
LETTERS = (
    ("dl-victim", "events-sink", "acme:victim", '{"type":"track","userId":"victim","event":"Order Completed"}', "victim"),
    ("dl-victim-gw", "gateway:segment", "acme:", '{"type":"track","anonymousId":"victim-anon","event":"Page Viewed"}', "victim"),
    ("dl-c7", "events-sink", "acme:c7", '{"type":"track","userId":"c7","event":"Order Completed"}', "other"),
    ("dl-c9-gw", "gateway:segment", "acme:", '{"type":"identify","userId":"c9"}', "other"),
    ("dl-victim2", "events-sink", "acme:victim2", '{"type":"track","userId":"victim2","event":"Logged In"}', "other"),
    ("dl-globex-victim", "events-sink", "globex:victim", '{"type":"track","userId":"victim","event":"Logged In"}', "globex"),
)
VICTIM_LETTERS = [i for i, *_, who in LETTERS if who == "victim"]
TABLES = (
    "events", "customers", "customer_merges", "goal_status", "goal_aggregates", "propensity_scores",
    "webhook_deliveries", "webhook_attempts", "deadletters",
)

EV = "INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source) "
NAMES_SQL = "[" + ", ".join(f"'{n}'" for n in NAMES) + "]"


def events_sql(prefix: str, ws: str, n: int, customer: str, anonymous: str, end: str) -> str:
    """``n`` events: ids ``prefix``N, names skewed by hash, timestamps over DAYS days up to
    ``end``, received a few seconds after (all before the request), a plan and price."""
    return EV + f"""
SELECT concat('{prefix}', toString(number)), '{ws}', {customer}, {anonymous},
       {NAMES_SQL}[1 + toUInt32(sqrt(cityHash64(number, 11) % {len(NAMES) ** 2}))],
       toDateTime64('{end}', 3, 'UTC') - toIntervalSecond(cityHash64('{prefix}', number, 12) % {DAYS * 86400}) AS ts,
       ts + toIntervalSecond(1 + cityHash64(number, 13) % 30),
       concat('{{"plan":"', ['free', 'pro', 'team'][1 + cityHash64(number, 14) % 3], '","price":',
              toString((cityHash64(number, 15) % 10000) / 100), ',"path":"/p/', toString(cityHash64(number, 16) % 500), '"}}'),
       'bench'
FROM numbers({n})"""


def generate(n_events: int, n_customers: int, end: str) -> list[str]:
    c = lambda ws, k: f"concat('c', toString(cityHash64('{ws}', number, {k}) % {n_customers}))"  # noqa: E731
    sql = [
        # acme: everyone else (a tenth anonymous, another tenth identified carrying a device id).
        events_sql("m", WS, n_events, f"if(number % 10 = 0, '', {c(WS, 1)})",
                   "if(number % 10 IN (0, 1), concat('a', toString(cityHash64(number, 2) % 20000)), '')", end),
        # The victim: its own events (a tenth from its device), the merged id's, the device's.
        events_sql("v", WS, 10_000, "'victim'", "if(number % 10 = 0, 'victim-anon', '')", end),
        events_sql("vo", WS, 1_000, "'victim-old1'", "''", end),
        events_sql("va", WS, 500, "''", "'victim-anon'", end),
        # Must stay: another customer on victim's device (c8's events), and a superstring id.
        events_sql("vs", WS, 20, "'c8'", "'victim-anon'", end),
        events_sql("v2", WS, 100, "'victim2'", "''", end),
        # globex: its own customers and its own victim with the same ids.
        events_sql("g", OTHER_WS, max(n_events // 50, 1000), f"if(number % 10 = 0, '', {c(OTHER_WS, 1)})",
                   "if(number % 10 = 0, concat('a', toString(cityHash64(number, 2) % 2000)), '')", end),
        events_sql("gv", OTHER_WS, 1_000, "'victim'", "if(number % 10 = 0, 'victim-anon', '')", end),
        events_sql("gvo", OTHER_WS, 100, "'victim-old1'", "''", end),
        events_sql("gva", OTHER_WS, 50, "''", "'victim-anon'", end),
        # Customers: everyone in acme, globex's first 1,000, both victims' two ids, victim2.
        f"""INSERT INTO customers (workspace, customer_id, created_at, updated_at, name, email, plan, attributes, message_id, version, is_deleted)
SELECT ws, id, toDateTime64('{end}', 3, 'UTC') - toIntervalDay(100 + cityHash64(id) % 200), toDateTime64('{end}', 3, 'UTC') - toIntervalDay(cityHash64(id) % 30),
       concat('Name ', id), concat(id, '@example.com'), ['free', 'pro', 'team'][1 + cityHash64(id, 1) % 3],
       concat('{{"email":"', id, '@example.com","company":"Co ', toString(cityHash64(id) % 999), '"}}'), concat('cm-', ws, '-', id), 1, 0
FROM (SELECT '{WS}' AS ws, concat('c', toString(number)) AS id FROM numbers({n_customers})
      UNION ALL SELECT '{OTHER_WS}', concat('c', toString(number)) FROM numbers(1000)
      UNION ALL SELECT t.1, t.2 FROM (SELECT arrayJoin([('{WS}', 'victim'), ('{WS}', 'victim-old1'), ('{WS}', 'victim2'),
                                                         ('{OTHER_WS}', 'victim'), ('{OTHER_WS}', 'victim-old1')]) AS t))""",
        # Merges: 1,000 of acme's customers each merged an old id and aliased a device id.
        f"""INSERT INTO customer_merges (workspace, customer_id, merged_id, kind, source, message_id, merged_at)
SELECT '{WS}', concat('c', toString(intDiv(number, 2) * 50)),
       if(number % 2 = 0, concat('c', toString(intDiv(number, 2) * 50), '-old'), concat('a', toString(intDiv(number, 2)))),
       if(number % 2 = 0, 'merge', 'alias'), 'customerio', concat('mm-', toString(number)),
       toDateTime64('{end}', 3, 'UTC') - toIntervalDay(number % 60)
FROM numbers(2000)""",
        f"""INSERT INTO customer_merges (workspace, customer_id, merged_id, kind, source, message_id, merged_at) VALUES
('{WS}', 'victim', 'victim-old1', 'merge', 'customerio', 'mv-1', toDateTime64('{end}', 3, 'UTC') - toIntervalDay(40)),
('{WS}', 'victim', 'victim-anon', 'alias', 'segment', 'mv-2', toDateTime64('{end}', 3, 'UTC') - toIntervalDay(80)),
('{OTHER_WS}', 'victim', 'victim-old1', 'merge', 'customerio', 'gmv-1', toDateTime64('{end}', 3, 'UTC') - toIntervalDay(40)),
('{OTHER_WS}', 'victim', 'victim-anon', 'alias', 'segment', 'gmv-2', toDateTime64('{end}', 3, 'UTC') - toIntervalDay(80))""",
        # Who has derived rows: acme's victim, victim-old1 and 1,000 others; globex's victim and 100.
        "CREATE TABLE bench_people (workspace String, customer_id String) ENGINE = MergeTree ORDER BY (workspace, customer_id)",
        f"""INSERT INTO bench_people SELECT '{WS}', concat('c', toString(number * 50)) FROM numbers({TRACKED})
UNION ALL SELECT '{OTHER_WS}', concat('c', toString(number)) FROM numbers(100)
UNION ALL SELECT a.w, b.id FROM (SELECT arrayJoin(['{WS}', '{OTHER_WS}']) AS w) AS a CROSS JOIN (SELECT arrayJoin(['victim', 'victim-old1']) AS id) AS b""",
        f"""INSERT INTO goal_status (workspace, goal, customer_id, status, entered_at, window_end, reached_at, plan, updated_at, version)
SELECT p.workspace, n.g, p.customer_id, if(cityHash64(p.customer_id, n.g) % 3 = 0, 'reached', 'active'),
       toDateTime64('{end}', 3, 'UTC') - toIntervalDay(30) - toIntervalSecond(cityHash64(p.customer_id, 21) % {60 * 86400}) AS e,
       e + toIntervalDay(30), if(cityHash64(p.customer_id, n.g) % 3 = 0, e + toIntervalDay(3), NULL), 'pro',
       toDateTime64('{end}', 3, 'UTC'), 1
FROM bench_people AS p CROSS JOIN (SELECT arrayJoin({list(GOALS)}) AS g) AS n""",
        f"""INSERT INTO goal_aggregates (workspace, goal, customer_id, event_name, window_count, total_count, updated_at, version)
SELECT p.workspace, {list(GOALS)}[1 + n.number % 2], p.customer_id, {NAMES_SQL}[1 + intDiv(n.number, 2)],
       cityHash64(p.customer_id, n.number) % 20, 20 + cityHash64(p.customer_id, n.number) % 50, toDateTime64('{end}', 3, 'UTC'), 1
FROM bench_people AS p CROSS JOIN numbers(10) AS n""",
        f"""INSERT INTO propensity_scores (workspace, goal, customer_id, scored_at, likelihood, previous_likelihood, published, status,
                               model_version, model_kind, trigger, drivers, message_id)
SELECT p.workspace, {list(GOALS)}[1 + n.number % 2], p.customer_id,
       toDateTime64('{end}', 3, 'UTC') - toIntervalSecond(cityHash64(p.customer_id, n.number, 31) % {DAYS * 86400}),
       (cityHash64(p.customer_id, n.number, 32) % 10000) / 10000, if(n.number < 2, NULL, (cityHash64(p.customer_id, n.number, 33) % 10000) / 10000),
       n.number % 3 = 0, 'active', 'gbt-2026-11-1', 'gbt', ['event', 'model', 'expiry'][1 + n.number % 3],
       '[{{"feature":"Product Viewed","contribution":0.31}},{{"feature":"Order Completed","contribution":0.12}}]',
       concat('ps-', p.workspace, '-', p.customer_id, '-', toString(n.number))
FROM bench_people AS p CROSS JOIN numbers(50) AS n""",
        f"""INSERT INTO webhook_deliveries (delivery_id, workspace, endpoint_id, url, object, customer_id, webhook_id, body, source_topic,
                                source_partition, source_offset, record, headers, attempts, next_attempt_at, status, last_error,
                                created_at, updated_at, version)
SELECT concat('d-', p.workspace, '-', p.customer_id, '-', toString(n.number)), p.workspace, concat('ep_', toString(n.number % 2)),
       concat('https://hooks.example.com/goalstream/', toString(n.number % 2)), 'goal_propensity', p.customer_id,
       toString(generateUUIDv4(cityHash64(p.customer_id, n.number))),
       concat('{{"object":"goal_propensity","customer_id":"', p.customer_id, '","goal":"trial_to_paid","likelihood":0.42}}'),
       'goalstream.propensity', 0, toInt64(cityHash64(p.customer_id, n.number) % 1000000), repeat('x', 180),
       map('goalstream-schema', 'goalstream.GoalPropensityChange'), 2, toDateTime64('{end}', 3, 'UTC'), 'delivered', '',
       toDateTime64('{end}', 3, 'UTC') - toIntervalDay(n.number), toDateTime64('{end}', 3, 'UTC') - toIntervalDay(n.number), 2
FROM bench_people AS p CROSS JOIN numbers(5) AS n""",
        f"""INSERT INTO webhook_attempts (delivery_id, workspace, endpoint_id, url, webhook_id, attempt, attempted_at, duration_ms, status_code,
                              outcome, error, next_attempt_at)
SELECT d.delivery_id, d.workspace, d.endpoint_id, d.url, d.webhook_id, toUInt16(1 + a.number), d.created_at + toIntervalSecond(a.number * 30),
       (cityHash64(d.delivery_id, a.number) % 5000) / 10, if(a.number = 0, 503, 200), if(a.number = 0, 'retry', 'delivered'),
       if(a.number = 0, 'HTTP 503', ''), if(a.number = 0, d.created_at + toIntervalSecond(30), NULL)
FROM webhook_deliveries AS d CROSS JOIN numbers(2) AS a""",
        f"""INSERT INTO deadletters (id, reason, stage, source_topic, source_partition, source_offset, key, value, headers, failed_at)
SELECT concat('dl-bg-', toString(number)), 'SchemaError: cannot decode', 'events-sink', 'goalstream.events', 0, toInt64(number),
       concat('acme:c', toString(cityHash64(number, 41) % {n_customers})),
       concat('{{"type":"track","userId":"c', toString(cityHash64(number, 41) % {n_customers}), '","event":"Page Viewed"}}'),
       map('goalstream-schema', 'goalstream.Event'), toDateTime64('{end}', 3, 'UTC') - toIntervalSecond(number * 60)
FROM numbers(10000)""",
        "INSERT INTO deadletters (id, reason, stage, source_topic, source_partition, source_offset, key, value, headers, failed_at) VALUES "
        + ", ".join(f"('{i}', 'bad', '{st}', 'goalstream.events', 0, 0, '{k}', '{v}', map(), toDateTime64('{end}', 3, 'UTC'))"
                    for i, st, k, v, _ in LETTERS),
    ]
    return sql


def conditions(table: str) -> tuple[str, str, str]:
    """(victim's, everyone else's in acme, globex's) rows of ``table``, as SQL conditions
    (parameters: ids, dels = victim's delivery ids, letters = the planted victim letters)."""
    acme, globex = f"workspace = '{WS}'", f"workspace = '{OTHER_WS}'"
    mine = {
        "events": "person_id IN {ids:Array(String)}",
        "customer_merges": "(customer_id IN {ids:Array(String)} OR merged_id IN {ids:Array(String)})",
        "webhook_attempts": "delivery_id IN {dels:Array(String)}",
    }.get(table, "customer_id IN {ids:Array(String)}")
    if table == "deadletters":
        v = (f"(ifNull(key, '') IN arrayMap(i -> concat('{WS}:', i), {{ids:Array(String)}}) "
             "OR id IN {letters:Array(String)})")
        g = f"startsWith(ifNull(key, ''), '{OTHER_WS}:')"
        return v, f"NOT {v} AND NOT {g}", g
    return f"{acme} AND {mine}", f"{acme} AND NOT {mine}", globex


async def census(w: Warehouse, params: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per table: victim's rows, everyone else's, globex's (counts, and hashes of the rows)."""
    out = {}
    for t in TABLES:
        v, o, g = conditions(t)
        r = (await w.rows(
            f"SELECT countIf({v}) AS victim, countIf({o}) AS others, countIf({g}) AS globex, "
            f"sumIf(cityHash64(*), {o}) AS others_hash, sumIf(cityHash64(*), {g}) AS globex_hash FROM {t}", params))[0]
        out[t] = {k: int(x) for k, x in r.items()}
    return out


async def rollups(w: Warehouse) -> dict[str, Any]:
    """The rollups against what they roll up, per workspace."""
    out: dict[str, Any] = {}
    for ws in (WS, OTHER_WS):
        p = {"ws": ws}
        total = (await w.rows("SELECT count() AS n FROM events WHERE workspace = {ws:String}", p))[0]["n"]
        daily = (await w.rows("SELECT sum(events) AS n FROM events_daily WHERE workspace = {ws:String}", p))[0]["n"]
        keys = (await w.rows(
            "SELECT count() AS keys, countIf(a.e != b.e) AS events_off, countIf(a.p != b.p) AS people_off FROM "
            "(SELECT name, day, sum(events) AS e, uniqMerge(people) AS p FROM events_daily_state WHERE workspace = {ws:String} "
            " GROUP BY name, day) AS a FULL OUTER JOIN "
            "(SELECT name, toDate(timestamp) AS day, count() AS e, uniq(person_id) AS p FROM events WHERE workspace = {ws:String} "
            " GROUP BY name, day) AS b USING (name, day)", p))[0]
        cohorts = (await w.rows(
            "SELECT count() AS keys, countIf(a.e != b.e OR a.r != b.r) AS off FROM "
            "(SELECT goal, cohort_day, uniqExactMerge(entered) AS e, uniqExactMerge(reached) AS r FROM goal_cohorts_daily_state "
            " WHERE workspace = {ws:String} GROUP BY goal, cohort_day) AS a FULL OUTER JOIN "
            "(SELECT goal, toDate(entered_at) AS cohort_day, uniqExact(customer_id) AS e, uniqExactIf(customer_id, status = 'reached') AS r "
            " FROM goal_status WHERE workspace = {ws:String} GROUP BY goal, cohort_day) AS b USING (goal, cohort_day)", p))[0]
        snapshot = await w.rows(
            "SELECT name, toString(day) AS day, sum(events) AS e, uniqMerge(people) AS p FROM events_daily_state "
            "WHERE workspace = {ws:String} GROUP BY name, day ORDER BY name, day", p)
        csnap = await w.rows(
            "SELECT goal, toString(cohort_day) AS d, uniqExactMerge(entered) AS e, uniqExactMerge(reached) AS r "
            "FROM goal_cohorts_daily_state WHERE workspace = {ws:String} GROUP BY goal, cohort_day ORDER BY goal, cohort_day", p)
        out[ws] = {
            "events": int(total), "events_daily_sum": int(daily), "daily_keys": int(keys["keys"]),
            "daily_events_off": int(keys["events_off"]), "daily_people_off": int(keys["people_off"]),
            "cohort_keys": int(cohorts["keys"]), "cohorts_off": int(cohorts["off"]),
            "snapshot": hash(tuple(tuple(r.values()) for r in snapshot) + tuple(tuple(r.values()) for r in csnap)),
        }
    return out


class Timed:
    """The warehouse as the regulator sees it, each call timed (what it ran, how long)."""

    def __init__(self, w: Warehouse):
        self.w = w
        self.calls: list[tuple[str, str, float]] = []

    async def _timed(self, kind: str, what: str, call):
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            self.calls.append((kind, re.sub(r"\s+", " ", what)[:110], time.perf_counter() - t0))

    async def rows(self, sql: str, parameters: dict[str, Any] | None = None):
        return await self._timed("rows", sql, self.w.rows(sql, parameters))

    async def command(self, sql: str, parameters: dict[str, Any] | None = None):
        return await self._timed("command", sql, self.w.command(sql, parameters))

    async def insert(self, table: str, rows, columns, *args, **kwargs):
        return await self._timed("insert", f"INSERT INTO {table}", self.w.insert(table, rows, columns, *args, **kwargs))

    def __getattr__(self, name: str):
        return getattr(self.w, name)


async def run(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"events": args.events, "customers": args.customers, "settle_s": args.settle}
    w = await Warehouse(f"chdb://{path}").open()
    try:
        await w.migrate()
        end = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - 3600))  # everything received before the request
        t0 = time.perf_counter()
        for sql in generate(args.events, args.customers, end):
            await w.command(sql)
        out["generate_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for t in TABLES + ("events_daily_state", "goal_cohorts_daily_state"):
            await w.command(f"OPTIMIZE TABLE {t} FINAL")
        out["optimize_s"] = time.perf_counter() - t0
        print(f"generated in {out['generate_s']:.1f} s, merged in {out['optimize_s']:.1f} s", file=sys.stderr, flush=True)

        dels = [r["delivery_id"] for r in await w.rows(
            "SELECT delivery_id FROM webhook_deliveries WHERE workspace = {ws:String} AND customer_id IN {ids:Array(String)}",
            {"ws": WS, "ids": IDS})]
        params = {"ids": IDS, "dels": dels, "letters": VICTIM_LETTERS}
        device_sql = "SELECT count() AS n FROM events WHERE workspace = 'acme' AND customer_id = 'c8' AND anonymous_id = 'victim-anon'"
        before = await census(w, params)
        roll_before = await rollups(w)
        device_before = int((await w.rows(device_sql))[0]["n"])

        timed = Timed(w)
        forgotten = Forgotten()
        reg = Regulator(timed, forgotten, settle_s=args.settle)
        sweeps: list[dict[str, Any]] = []
        sweep = reg.sweep

        async def timed_sweep(*a, **k):
            t = time.perf_counter()
            mark = len(timed.calls)
            removed = await sweep(*a, **k)
            sweeps.append({"s": time.perf_counter() - t, "removed": removed, "statements": len(timed.calls) - mark})
            return removed

        reg.sweep = timed_sweep  # the instance's attribute: _steps calls self.sweep
        t0 = time.perf_counter()
        made = await reg.request(WS, VICTIM, suppress=True, requested_by="bench:forget")
        acked = time.perf_counter() - t0
        done = await reg.wait(made["id"], args.timeout)
        wall = time.perf_counter() - t0
        await reg.stop()

        after = await census(w, params)
        roll_after = await rollups(w)
        device_after = int((await w.rows(device_sql))[0]["n"])
        reg_rows = int((await w.rows("SELECT count() AS n FROM regulations"))[0]["n"])

        def ms(iso: str | None) -> float | None:
            if not iso:
                return None
            return calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")) + int(iso[20:23]) / 1000

        own = (ms(done.get("completed_at")) - ms(done.get("requested_at"))) if done and done.get("completed_at") else None
        by_stmt: dict[str, list[float]] = defaultdict(list)
        for kind, what, s in timed.calls:
            by_stmt[f"{kind}: {what}"].append(s)
        out.update({
            "regulation": done, "ids": IDS, "victim_deliveries": len(dels),
            "time": {"request_ack_s": acked, "wall_s": wall, "requested_to_completed_s": own,
                     "sweeps_s": [s["s"] for s in sweeps], "statements": len(timed.calls),
                     "default_settle_s": forget.SETTLE_S},
            "sweeps": sweeps,
            "statements": sorted(([k, len(v), sum(v)] for k, v in by_stmt.items()), key=lambda x: -x[2]),
            "before": before, "after": after, "rollups_before": roll_before, "rollups_after": roll_after,
            "device_events": [device_before, device_after], "regulation_rows": reg_rows,
        })
        checks: list[tuple[str, bool, str]] = []
        state = (done or {}).get("state")
        checks.append(("regulation completed", state == "completed", f"state {state}, error {(done or {}).get('error')}"))
        checks.append(("ids found", sorted((done or {}).get("ids") or []) == IDS, f"{(done or {}).get('ids')}"))
        checks.append(("victim had rows in every table", all(before[t]["victim"] > 0 for t in TABLES),
                       ", ".join(f"{t}={before[t]['victim']}" for t in TABLES if not before[t]["victim"]) or "yes"))
        left = {t: after[t]["victim"] for t in TABLES if after[t]["victim"]}
        checks.append(("victim rows all 0 after", not left, f"left: {left}" if left else "0 in every table"))
        for who in ("others", "globex"):
            changed = [t for t in TABLES if (before[t][who], before[t][f"{who}_hash"]) != (after[t][who], after[t][f"{who}_hash"])]
            checks.append((f"{who}' rows unchanged (count and hash)", not changed, f"changed: {changed}" if changed else "yes"))
        removed = (done or {}).get("removed") or {}
        wrong = {t: (removed.get(t), before[t]["victim"]) for t in TABLES if removed.get(t) != before[t]["victim"]}
        checks.append(("removed = victim rows before", not wrong, f"(removed, before): {wrong}" if wrong else "yes"))
        for label, r in (("before", roll_before[WS]), ("after", roll_after[WS])):
            checks.append((f"events_daily sum = count() of acme events {label}", r["events_daily_sum"] == r["events"],
                           f"{r['events_daily_sum']:,} vs {r['events']:,}"))
            checks.append((f"events_daily per (name, day) = events {label}", not (r["daily_events_off"] or r["daily_people_off"]),
                           f"{r['daily_keys']} keys, events off {r['daily_events_off']}, people off {r['daily_people_off']}"))
            checks.append((f"goal_conversion_daily = goal_status {label}", not r["cohorts_off"],
                           f"{r['cohort_keys']} keys, off {r['cohorts_off']}"))
        checks.append(("acme events after = before - victim's", roll_after[WS]["events"] == roll_before[WS]["events"] - before["events"]["victim"],
                       f"{roll_after[WS]['events']:,} = {roll_before[WS]['events']:,} - {before['events']['victim']:,}"))
        checks.append(("globex rollups unchanged", roll_before[OTHER_WS] == roll_after[OTHER_WS], "yes"
                       if roll_before[OTHER_WS] == roll_after[OTHER_WS] else f"{roll_before[OTHER_WS]} -> {roll_after[OTHER_WS]}"))
        checks.append(("c8's events from victim's device stay", device_before == device_after > 0, f"{device_before} -> {device_after}"))
        sup = {i: forgotten.suppressed(WS, i) for i in IDS}
        checks.append(("ids suppressed in acme, not globex", all(sup.values()) and not forgotten.suppressed(OTHER_WS, VICTIM),
                       f"acme {sup}, globex victim {forgotten.suppressed(OTHER_WS, VICTIM)}"))
        out["checks"] = [{"check": c, "ok": ok, "detail": d} for c, ok, d in checks]
        out["ok"] = all(ok for _, ok, _ in checks)
        return out
    finally:
        await w.close()


def render(out: dict[str, Any]) -> None:
    b, a = out["before"], out["after"]
    print(f"acme: {out['events']:,} events over {out['customers']:,} customers (+ victim's); generated in {out['generate_s']:.1f} s, "
          f"OPTIMIZE FINAL {out['optimize_s']:.1f} s")
    print(f"forgetting acme/victim, ids {out['ids']}, {out['victim_deliveries']} webhook deliveries")
    print("table | victim rows before | after | others before | after | globex before | after")
    for t in TABLES:
        print(f"{t} | {b[t]['victim']:,} | {a[t]['victim']:,} | {b[t]['others']:,} | {a[t]['others']:,} | "
              f"{b[t]['globex']:,} | {a[t]['globex']:,}")
    for ws in (WS, OTHER_WS):
        rb, ra = out["rollups_before"][ws], out["rollups_after"][ws]
        print(f"{ws} events_daily: sum {rb['events_daily_sum']:,} -> {ra['events_daily_sum']:,} (events {rb['events']:,} -> "
              f"{ra['events']:,}); (name, day) keys {rb['daily_keys']} -> {ra['daily_keys']}; cohort keys {rb['cohort_keys']} -> {ra['cohort_keys']}")
    r, t = out["regulation"] or {}, out["time"]
    print(f"regulation {r.get('id')}: {r.get('state')} ({r.get('type')}), ids {r.get('ids')}, rows removed {r.get('rows_removed')}, "
          f"error {r.get('error')}")
    print("removed: " + json.dumps(r.get("removed") or {}))
    print(f"time: request acknowledged in {t['request_ack_s']:.3f} s; request -> wait() returned {t['wall_s']:.2f} s wall "
          f"(wait polls every 0.2 s); requested_at -> completed_at {t['requested_to_completed_s']}"
          f"{'' if t['requested_to_completed_s'] is None else ' s'}; settle_s {out['settle_s']}")
    for i, s in enumerate(out["sweeps"], 1):
        print(f"  sweep {i}: {s['s']:.2f} s, {s['statements']} statements, removed {sum(s['removed'].values()):,} rows")
    if out["settle_s"] == 0:
        print(f"  (settle 0: the time is the id lookup and both sweeps; with the default settle_s={t['default_settle_s']} "
              "the regulation sleeps that long between them, nothing else changes)")
    print(f"  statements: {t['statements']}; the slowest (calls, total s):")
    for what, n, s in out["statements"][:12]:
        print(f"    {s:7.2f} s  x{n:<3d} {what}")
    print(f"regulations rows: {out['regulation_rows']}; c8's events from victim's device {out['device_events'][0]} -> {out['device_events'][1]}")
    print("checks:")
    for c in out["checks"]:
        print(f"  [{'ok' if c['ok'] else 'FAIL'}] {c['check']}: {c['detail']}")
    print("ALL CHECKS PASSED" if out["ok"] else "SOME CHECKS FAILED")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--settle", type=float, default=0.0, help="the regulator's settle_s (its default: forget.SETTLE_S)")
    ap.add_argument("--timeout", type=float, default=900.0, help="how long to wait for the regulation")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--keep", type=Path, help="build the data dir here and keep it (default: a temp dir, removed)")
    args = ap.parse_args(argv)
    if args.keep:
        if args.keep.exists():
            ap.error(f"{args.keep} exists: give a fresh directory")
        path = args.keep.resolve()
    else:
        path = Path(tempfile.mkdtemp(prefix="gs-forget-")) / "ch"
    try:
        out = asyncio.run(run(args, path))
    finally:
        if not args.keep:
            shutil.rmtree(path.parent, ignore_errors=True)
    render(out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
