"""The ClickHouse schema, previous against current, on one generated data set in one run.

What flows: the previous schema (migrations 1-5, as a data dir written by the last release
holds them) gets N events (default 10M, ``layout.generate_sql``), plus resends: 1% of the
messages again with the client's clock a month later, as after a restart, stored as the
old sink stored them (the copies land in another partition). Then score history, webhook
deliveries and attempts (``--scores``, ``--webhooks`` rows, realistic widths). Every table
is merged (OPTIMIZE FINAL: as after background merges, the old schema's fairest case), the
analyst queries and per-customer reads run (``layout.queries``: old as the README said, with
FINAL, and without), then migration 6 is applied exactly as ``goalstream up`` applies it
(each statement timed) and the same queries run on the new tables, without FINAL, plus the
daily rollup and the typed view. Reported: time (best of ``--repeat``), rows read, what
``EXPLAIN indexes=1`` kept, answers checked against old-with-FINAL, raw row counts, sizes on
disk per table, and what the default retention (a TTL) leaves of the history tables.

Usage: ``python tests/bench/schema.py [--events 10000000] [--repeat 3] [--json F]``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from chdb import session

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))
from layout import CUSTOMERS, generate_sql, pruning, queries, run  # noqa: E402
from schemas.settings import CommonSettings  # noqa: E402
from schemas.warehouse import RETENTION_COLUMNS, migrations  # noqa: E402
from stream_processors.storedids import EXISTING_SQL, SEED_SQL as STORED_SEED_SQL, StoredIds  # noqa: E402

TABLES = ("events", "propensity_scores", "webhook_deliveries", "webhook_attempts")
PLAN = "JSONExtractString(properties, 'plan')"


def resends_sql(pct: int) -> str:
    # What the old sink stored for a resend after a restart (its window empty): the same
    # message, the client's clock a month on, so another partition.
    return f"""
INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source, inserted_at)
SELECT message_id, workspace, customer_id, anonymous_id, name, timestamp + toIntervalDay(31), received_at + toIntervalDay(31),
       properties, source, inserted_at + toIntervalSecond(1)
FROM events WHERE cityHash64(message_id) % 100 < {pct}
"""


def history_sql(scores: int, webhooks: int, end: str) -> list[str]:
    span = 180 * 86_400_000
    return [f"""
INSERT INTO propensity_scores
SELECT ['ws_a', 'ws_b', 'ws_c'][1 + number % 3], ['trial_to_paid', 'reactivate'][1 + number % 2],
       concat('cust_', toString(cityHash64(number, 3) % {CUSTOMERS})),
       toDateTime64('{end}', 3, 'UTC') - toIntervalMillisecond({span} - intDiv(number * {span}, {scores})),
       (cityHash64(number, 4) % 10000) / 10000, if(number % 4 = 0, NULL, (cityHash64(number, 5) % 10000) / 10000),
       number % 3 = 0, 'active', concat('gbt-2026-11-', toString(1 + number % 5)), 'gbt',
       ['event', 'model', 'expiry'][1 + number % 3],
       concat('[{{"feature":"Product Viewed","contribution":', toString((cityHash64(number, 6) % 1000) / 1000),
              '}},{{"feature":"Order Completed","contribution":', toString((cityHash64(number, 7) % 1000) / 1000),
              '}},{{"feature":"days_since_signup","contribution":-0.', toString(cityHash64(number, 8) % 1000), '}}]'),
       toString(generateUUIDv4(number))
FROM numbers({scores})
""", f"""
INSERT INTO webhook_deliveries
SELECT concat(toString(intDiv(number, 2)), '-d') AS d, ['ws_a', 'ws_b', 'ws_c'][1 + number % 3], concat('ep_', toString(number % 4)),
       concat('https://hooks.example.com/goalstream/', toString(number % 4)), 'goal_propensity',
       concat('cust_', toString(cityHash64(intDiv(number, 2), 3) % {CUSTOMERS})), toString(generateUUIDv4(intDiv(number, 2))),
       concat('{{"object":"goal_propensity","customer_id":"cust_', toString(cityHash64(intDiv(number, 2), 3) % {CUSTOMERS}),
              '","goal":"trial_to_paid","likelihood":0.', toString(cityHash64(number, 4) % 10000),
              ',"previous_likelihood":0.', toString(cityHash64(number, 5) % 10000),
              ',"drivers":[{{"feature":"Product Viewed","contribution":0.31}},{{"feature":"Order Completed","contribution":0.12}}],',
              '"recommended_next_actions":[{{"action":"Checkout Started","uplift":0.08}}]}}'),
       'goalstream.propensity', toInt32(number % 4), toInt64(number),
       repeat('x', 180), map('goalstream-schema', 'goalstream.GoalPropensityChange', 'goalstream-schema-version', '1'),
       toUInt16(number % 2), toDateTime64('{end}', 3, 'UTC'), if(number % 2 = 0, 'pending', 'delivered'), '',
       toDateTime64('{end}', 3, 'UTC') - toIntervalMillisecond({span} - intDiv(number * {span}, {webhooks})),
       toDateTime64('{end}', 3, 'UTC') - toIntervalMillisecond({span} - intDiv(number * {span}, {webhooks})),
       number % 2 + 1
FROM numbers({webhooks})
""", f"""
INSERT INTO webhook_attempts
SELECT concat(toString(number), '-d'), ['ws_a', 'ws_b', 'ws_c'][1 + number % 3], concat('ep_', toString(number % 4)),
       concat('https://hooks.example.com/goalstream/', toString(number % 4)), toString(generateUUIDv4(number)),
       toUInt16(1 + number % 3),
       toDateTime64('{end}', 3, 'UTC') - toIntervalMillisecond({span} - intDiv(number * {span}, {webhooks})),
       (cityHash64(number, 2) % 5000) / 10, if(number % 10 = 0, NULL, 200), if(number % 10 = 0, 'retry', 'delivered'),
       if(number % 10 = 0, 'ConnectionRefusedError: [Errno 111] Connect call failed (hooks.example.com, 443)', ''),
       NULL
FROM numbers({webhooks})
"""]


def q(s: session.Session, sql: str) -> str:
    return s.query(sql, "TSV").bytes().decode().strip()


def sizes(s: session.Session) -> dict[str, dict[str, int]]:
    out = {}
    for t in TABLES + ("events_daily_state", "goal_cohorts_daily_state"):
        line = q(s, f"SELECT sum(rows), sum(bytes_on_disk) FROM system.parts WHERE database = 'bench' AND table = '{t}' AND active")
        rows, size = (int(x or 0) for x in line.split("\t"))
        if rows or t in TABLES:
            out[t] = {"rows": rows, "bytes": size}
    return out


def measure(s, label, final, extra, month, last30, customer, ids, repeat) -> dict:
    qs = queries("events", PLAN, month, last30, customer, ids, final)
    qs.update(extra)
    res = {}
    for name, sql in qs.items():
        secs, rows, out = run(s, sql, repeat)
        res[name] = {"ms": secs * 1000, "rows_read": rows, "pruning": pruning(s, sql), "answer": out}
        print(f"{label}: {name} {secs * 1000:,.0f} ms", file=sys.stderr, flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--resend-pct", type=int, default=1)
    ap.add_argument("--scores", type=int, default=4_000_000)
    ap.add_argument("--webhooks", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--end", default="2026-11-30 00:00:00")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    path = Path(tempfile.mkdtemp(prefix="gs-schema-"))
    s = session.Session(str(path / "ch"))
    out: dict = {"events": args.events}
    try:
        s.query("CREATE DATABASE bench")
        s.query("USE bench")
        s.query("SET mutations_sync = 2")  # the ALTERs' rewrites done before sizes are read
        ms = migrations()
        for v, _, sts in ms:
            if v <= 5:
                for st in sts:
                    s.query(st)
        t0 = time.perf_counter()
        s.query(generate_sql("events", args.events, args.end))
        s.query(resends_sql(args.resend_pct))
        for st in history_sql(args.scores, args.webhooks, args.end):
            s.query(st)
        print(f"generated in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        for t in TABLES:
            s.query(f"OPTIMIZE TABLE {t} FINAL")
        end = args.end[:10]
        hi = end[:8] + "01"
        lo = time.strftime("%Y-%m-01", time.gmtime(time.mktime(time.strptime(hi, "%Y-%m-%d")) - 86400))
        last30 = time.strftime("%Y-%m-%d", time.gmtime(time.mktime(time.strptime(end, "%Y-%m-%d")) - 30 * 86400))
        rng = random.Random(7)
        ids = [f"cust_{rng.randrange(CUSTOMERS)}" for _ in range(1000)]
        month, customer = (lo, hi), ids[0]
        count_sql = "SELECT count() FROM events"
        typed = (f"SELECT count() FROM events_typed WHERE workspace = 'ws_a' AND timestamp >= '{last30}'")
        # Q3 through the typed view: the properties parsed as JSON per query.
        typed_q3 = (f"SELECT toString(props.plan) AS plan, uniqExact(customer_id) FROM events_typed WHERE workspace = 'ws_a' "
                    f"AND timestamp >= '{last30}' AND customer_id != '' GROUP BY plan ORDER BY plan")
        out["old"] = {"sizes": sizes(s), "raw_rows": int(q(s, count_sql)), "final_rows": int(q(s, count_sql + " FINAL")),
                      "distinct_ids": int(q(s, "SELECT uniqExact(workspace, message_id) FROM events"))}
        out["old FINAL"] = {"queries": measure(s, "old FINAL", True, {"T1 events_typed, 30 days": typed, "T2 Q3 through events_typed.props": typed_q3}, month, last30, customer, ids, args.repeat)}
        out["old"]["queries"] = measure(s, "old", False, {}, month, last30, customer, ids, args.repeat)

        steps = []
        for v, _, sts in ms:
            if v == 6:
                for st in sts:
                    t0 = time.perf_counter()
                    s.query(st)
                    steps.append((st.split("\n")[0][:70], time.perf_counter() - t0))
        out["migration_s"] = sum(t for _, t in steps)
        out["migration_steps"] = steps
        print(f"migration 6 in {out['migration_s']:.1f} s", file=sys.stderr, flush=True)
        for t in TABLES:
            s.query(f"OPTIMIZE TABLE {t} FINAL")
        rollup = {"Q1 from events_daily (rollup)": (
            f"SELECT day, name, events FROM events_daily WHERE workspace = 'ws_a' AND day >= '{lo}' AND day < '{hi}' ORDER BY day, name"),
            "T1 events_typed, 30 days": typed, "T2 Q3 through events_typed.props": typed_q3}
        out["new"] = {"sizes": sizes(s), "raw_rows": int(q(s, count_sql)),
                      "distinct_ids": int(q(s, "SELECT uniqExact(workspace, message_id) FROM events")),
                      "queries": measure(s, "new", False, rollup, month, last30, customer, ids, args.repeat),
                      "partitions": int(q(s, "SELECT uniqExact(partition) FROM system.parts WHERE database = 'bench' AND table = 'events' AND active"))}
        # The exact dedup's costs at this size: the filter's seed (query + build) at a start or
        # rebalance, and the lookup of the ids it may hold (a batch's ~0.3% false positives;
        # a whole replayed batch) through the bloom-filter skip index on message_id.
        t0 = time.perf_counter()
        seed = s.query(STORED_SEED_SQL, "RowBinary").bytes()
        t1 = time.perf_counter()
        f = StoredIds(np.frombuffer(seed, dtype="<u4"))
        t2 = time.perf_counter()
        some = q(s, "SELECT groupArray(message_id) FROM (SELECT message_id FROM events WHERE workspace = 'ws_a' "
                    "ORDER BY cityHash64(message_id) LIMIT 5000) FORMAT JSONCompactEachRow".replace(" FORMAT JSONCompactEachRow", ""))
        idl = some.strip("[]").split(",")
        look = {}
        for k in (50, 5000):
            sql = EXISTING_SQL.replace("{ws:String}", "'ws_a'").replace("{ids:Array(String)}", "[" + ",".join(idl[:k]) + "]")
            secs, rows, _ = run(s, sql, args.repeat)
            look[k] = {"ms": secs * 1000, "rows_read": rows}
        out["exact_dedup"] = {"seed_query_s": t1 - t0, "seed_build_s": t2 - t1, "filter_mib": f.nbytes / 2**20, "lookup": look}
        # The default retention, as `goalstream up` sets it, with its rows dropped now.
        kept = {}
        for table, days in CommonSettings().retention.items():
            if days and table in TABLES:
                s.query(f"ALTER TABLE {table} MODIFY TTL toDateTime({RETENTION_COLUMNS[table]}) + toIntervalDay({days})")
                s.query(f"OPTIMIZE TABLE {table} FINAL")
                kept[table] = days
        out["retention_days"] = kept
        out["new_after_retention"] = {"sizes": sizes(s)}
        ref = out["old FINAL"]["queries"]
        for label in ("old", "new"):
            for name, r in out[label]["queries"].items():
                want = ref.get({"Q1 from events_daily (rollup)": "Q1 per day and name, a month",
                                "T2 Q3 through events_typed.props": "Q3 distinct customers per plan, 30 days"}.get(name, name))
                r["same_as_old_final"] = want is not None and sorted(r["answer"].splitlines()) == sorted(want["answer"].splitlines())
        render(out)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            strip = lambda d: {k: {kk: vv for kk, vv in v.items() if kk != "answer"} for k, v in d.items()}  # noqa: E731
            for label in ("old FINAL", "old", "new"):
                out[label]["queries"] = strip(out[label]["queries"])
            args.json.write_text(json.dumps(out, indent=2))
    finally:
        s.close()
        shutil.rmtree(path, ignore_errors=True)
    return 0


def render(out: dict) -> None:
    o, n = out["old"], out["new"]
    print(f"events generated {out['events']:,}; old raw rows {o['raw_rows']:,} (FINAL {o['final_rows']:,}, "
          f"distinct ids {o['distinct_ids']:,}); new raw rows {n['raw_rows']:,} (distinct ids {n['distinct_ids']:,}); "
          f"new partitions {n['partitions']}; migration 6 took {out['migration_s']:.1f} s")
    print("query | old FINAL ms / rows read | old ms / rows read | new ms / rows read | answer = old FINAL's: old, new")
    names = list(dict.fromkeys(list(out["old FINAL"]["queries"]) + list(n["queries"])))
    for name in names:
        cells = [name]
        for label in ("old FINAL", "old", "new"):
            r = out[label]["queries"].get(name)
            cells.append(f"{r['ms']:,.0f} / {r['rows_read']:,}" if r else "-")
        cells.append(", ".join(("yes" if r["same_as_old_final"] else "NO") if (r := out[label]["queries"].get(name)) else "-"
                               for label in ("old", "new")))
        print(" | ".join(cells))
    print("pruning (EXPLAIN indexes=1):")
    for label in ("old FINAL", "old", "new"):
        for name, r in out[label]["queries"].items():
            print(f"  {label:9s} {name:40s} {r['pruning']}")
    print("table | old rows / MiB | new rows / MiB | new after retention rows / MiB")
    for t in n["sizes"]:
        cells = [t]
        for d in (o["sizes"], n["sizes"], out["new_after_retention"]["sizes"]):
            x = d.get(t)
            cells.append(f"{x['rows']:,} / {x['bytes'] / 2**20:,.1f}" if x else "-")
        print(" | ".join(cells))
    x = out["exact_dedup"]
    print(f"exact dedup: filter seed {x['seed_query_s']:.2f} s query + {x['seed_build_s']:.2f} s build, {x['filter_mib']:.0f} MiB; "
          + "; ".join(f"lookup of {k} ids {v['ms']:,.0f} ms / {v['rows_read']:,} rows" for k, v in x["lookup"].items()))
    print("migration steps: " + "; ".join(f"{a} {t:.1f}s" for a, t in out["migration_steps"] if t >= 0.5))


if __name__ == "__main__":
    sys.exit(main())
