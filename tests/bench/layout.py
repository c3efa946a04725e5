"""The ``events`` table's layout, measured: analyst queries and the project's own per-customer
reads on one generated data set, the current schema against candidate layouts, in one run.

What flows: a generator (SQL inside chDB, no Python loop: ``INSERT ... SELECT FROM numbers(N)``)
writes N events (default 10M) into the current ``events`` layout (``0001_init.sql``); every
candidate gets the same rows (``INSERT INTO cand SELECT ... FROM current``), then each query
runs ``--repeat`` times on each layout; the table gives the fastest time, the rows read from
storage (chDB's ``storage_rows_read``), and, per layout, its size on disk and what
``EXPLAIN indexes=1`` says the partition and primary-key conditions kept.

The data: 3 workspaces (70/25/5%), 200k customers each (ids hashed per event, so each
customer's events spread over the whole span), a fifth of the events anonymous, 20 event
names with a skewed frequency, timestamps spread in order over 180 days ending at ``--end``
(as events arrive), properties JSON with a ``plan`` per customer, a price and a path.

Queries: Q1 events per day and name over a month; Q2 a two-step funnel (windowFunnel) over a
month; Q3 distinct customers per plan over 30 days (the plan is a property); R1 one customer's
latest 50 events (the Traitly reads); R2 the scorer's goal state: per customer and name, count
and first time, for 1,000 customers.

Usage: ``python tests/bench/layout.py [--events 10000000] [--repeat 3] [--keep DIR]``.
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

from chdb import session

ROOT = Path(__file__).resolve().parents[2]

NAMES = [
    "Page Viewed", "Product Viewed", "Product Added", "Cart Viewed", "Checkout Started", "Order Completed",
    "Signed Up", "Logged In", "Search Performed", "Style Widget", "Support Ticket", "Coupon Applied",
    "Wishlist Added", "Review Posted", "Video Played", "Share Clicked", "Newsletter Joined", "Plan Upgraded",
    "Invite Sent", "Account Deleted",
]
CUSTOMERS = 200_000
DAYS = 180

sys.path.insert(0, str(ROOT))
from schemas.warehouse import migrations  # noqa: E402

# The current layout: migration 1's events table, as applied.
OLD = next(st for _, _, sts in migrations() for st in sts if st.startswith("CREATE TABLE IF NOT EXISTS events"))

# Every candidate's columns: the current ones, ``name`` as LowCardinality, ``plan`` materialized.
_CANDIDATE = """
CREATE TABLE {{t}}
(
    message_id   String,
    workspace    LowCardinality(String),
    customer_id  String,
    anonymous_id String,
    name         LowCardinality(String),
    timestamp    DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC'),
    properties   String CODEC(ZSTD(3)),
    source       LowCardinality(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3),
    plan         LowCardinality(String) MATERIALIZED JSONExtractString(properties, 'plan'){extra}
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY {order}{settings}
"""


def _candidate(order: str, extra: str = "", settings: str = "") -> tuple[str, str]:
    return _CANDIDATE.format(order=order, extra=extra, settings=settings), "plan"


# name -> (DDL with {t} for the table name, expression of the plan property).
CANDIDATES: dict[str, tuple[str, str]] = {
    # Customer first, then time: the per-customer reads stay point reads; a month is a partition.
    "cust_time": _candidate("(workspace, customer_id, timestamp)"),
    # As above, name before time within a customer: a customer's events of one name are together.
    "cust_name_time": _candidate("(workspace, customer_id, name, timestamp)"),
    # The same with 1,024-row granules: a read of 1,000 scattered customers touches fewer rows.
    "cust_name_time g1024": _candidate("(workspace, customer_id, name, timestamp)", settings="\nSETTINGS index_granularity = 1024"),
    # Time first (PostHog's shape), plus a projection in customer order for the per-customer reads.
    "time_name+proj": _candidate(
        "(workspace, toDate(timestamp), name, cityHash64(customer_id))",
        extra=",\n    PROJECTION by_customer (SELECT * ORDER BY workspace, customer_id, timestamp)"),
}

def generate_sql(table: str, n: int, end: str) -> str:
    names = "[" + ",".join(f"'{x}'" for x in NAMES) + "]"
    span_ms = DAYS * 86_400_000
    return f"""
INSERT INTO {table} (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source)
SELECT message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source FROM (
SELECT
    toString(generateUUIDv4(number)) AS message_id,
    ['ws_a', 'ws_b', 'ws_c'][1 + (cityHash64(number, 1) % 100 >= 70) + (cityHash64(number, 1) % 100 >= 95)] AS workspace,
    concat('cust_', toString(cityHash64(number, 3) % {CUSTOMERS})) AS who,
    if(cityHash64(number, 2) % 5 = 0, '', who) AS customer_id,
    concat('anon_', toString(cityHash64(who, 4) % 1000000)) AS anonymous_id,
    {names}[1 + toUInt32(pow((cityHash64(number, 5) % 10000) / 10000, 2) * {len(NAMES)})] AS name,
    toDateTime64('{end}', 3, 'UTC') - toIntervalMillisecond({span_ms} - intDiv(number * {span_ms}, {n})) AS timestamp,
    timestamp + toIntervalMillisecond(cityHash64(number, 7) % 5000) AS received_at,
    concat('{{"plan":"', ['free', 'pro', 'team', 'enterprise'][1 + cityHash64(who, 8) % 4],
           '","price":', toString((cityHash64(number, 9) % 10000) / 100),
           ',"path":"/p/', toString(cityHash64(number, 10) % 500), '"}}') AS properties,
    'traitly' AS source
FROM numbers({n}))
SETTINGS max_insert_threads = 2
"""


def queries(t: str, plan: str, month: tuple[str, str], last30: str, customer: str, ids: list[str], final: bool) -> dict[str, str]:
    f = " FINAL" if final else ""
    lo, hi = month
    idlist = "[" + ",".join(f"'{i}'" for i in ids) + "]"
    return {
        "Q1 per day and name, a month": (
            f"SELECT toDate(timestamp) AS day, name, count() FROM {t}{f} WHERE workspace = 'ws_a' "
            f"AND timestamp >= '{lo}' AND timestamp < '{hi}' GROUP BY day, name ORDER BY day, name"),
        "Q2 funnel of two events, a month": (
            f"SELECT level, count() FROM (SELECT customer_id, windowFunnel(86400)(toDateTime(timestamp), "
            f"name = 'Product Viewed', name = 'Order Completed') AS level FROM {t}{f} WHERE workspace = 'ws_a' "
            f"AND timestamp >= '{lo}' AND timestamp < '{hi}' AND customer_id != '' "
            f"AND name IN ('Product Viewed', 'Order Completed') GROUP BY customer_id) GROUP BY level ORDER BY level"),
        "Q3 distinct customers per plan, 30 days": (
            f"SELECT {plan} AS plan, uniqExact(customer_id) FROM {t}{f} WHERE workspace = 'ws_a' "
            f"AND timestamp >= '{last30}' AND customer_id != '' GROUP BY plan ORDER BY plan"),
        "R1 a customer's latest 50 events": (
            f"SELECT name, timestamp, properties FROM {t}{f} WHERE workspace = 'ws_a' AND customer_id = '{customer}' "
            f"ORDER BY timestamp DESC LIMIT 50"),
        "R2 goal state of 1,000 customers": (
            f"SELECT customer_id, name, count(), min(timestamp) FROM {t}{f} WHERE workspace = 'ws_a' "
            f"AND customer_id IN {idlist} GROUP BY customer_id, name"),
    }


def run(s: session.Session, sql: str, repeat: int) -> tuple[float, int, str]:
    best, rows, out = float("inf"), 0, ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = s.query(sql, "TSV")
        dt = time.perf_counter() - t0
        if dt < best:
            best, rows, out = dt, r.storage_rows_read(), r.bytes().decode()
    return best, rows, out


def pruning(s: session.Session, sql: str) -> str:
    """What ``EXPLAIN indexes=1`` kept of each read: the parts the min-max/partition indexes
    left and the granules the primary key left, e.g. ``parts 1/6, granules 3/4``."""
    text = s.query("EXPLAIN indexes = 1 " + sql, "TSV").bytes().decode().replace("\\n", "\n")
    reads, kind = [], None
    for line in text.splitlines():
        line = line.strip("│├└─ \t")
        if line.startswith("ReadFromMergeTree"):
            reads.append({"table": line.split("(", 1)[-1].rstrip(")")})
        elif line in ("Min-Max", "Partition", "PrimaryKey", "Skip") or line.startswith("Skip"):
            kind = line
        elif reads and kind and (line.startswith("Parts:") or line.startswith("Granules:")):
            reads[-1].setdefault(kind, {})[line.split(":")[0]] = line.split(":", 1)[1].strip()
    out = []
    for r in reads:
        parts = (r.get("Partition") or r.get("Min-Max") or {}).get("Parts", "?")
        if "Min-Max" in r and "Partition" in r:
            parts = r["Min-Max"].get("Parts", parts)
        granules = (r.get("PrimaryKey") or {}).get("Granules", "?")
        out.append(f"parts {parts}, granules {granules}" + ("" if r["table"].startswith("bench.") else f" (projection {r['table']})"))
    return "; ".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--end", default="2026-11-30 00:00:00")
    ap.add_argument("--keep", type=Path, help="keep the generated data in DIR (default: a temporary dir, removed)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    path = args.keep or Path(tempfile.mkdtemp(prefix="gs-layout-"))
    s = session.Session(str(path / "ch"))
    try:
        s.query("CREATE DATABASE IF NOT EXISTS bench")
        s.query("USE bench")
        s.query("DROP TABLE IF EXISTS old")
        s.query(OLD.replace("CREATE TABLE IF NOT EXISTS events", "CREATE TABLE old", 1))
        t0 = time.perf_counter()
        s.query(generate_sql("old", args.events, args.end))
        print(f"generated {args.events:,} events in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        s.query("OPTIMIZE TABLE old FINAL")  # as after background merges: the fairest old case
        layouts = {"old FINAL": ("old", "JSONExtractString(properties, 'plan')", True),
                   "old": ("old", "JSONExtractString(properties, 'plan')", False)}
        cols = "message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source, inserted_at"
        for name, (ddl, plan) in CANDIDATES.items():
            t = "c_" + "".join(ch if ch.isalnum() else "_" for ch in name)
            s.query(f"DROP TABLE IF EXISTS {t}")
            s.query(ddl.format(t=t))
            t0 = time.perf_counter()
            s.query(f"INSERT INTO {t} ({cols}) SELECT {cols} FROM old SETTINGS max_insert_threads = 2")
            s.query(f"OPTIMIZE TABLE {t} FINAL")
            print(f"{name}: filled in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
            layouts[name] = (t, plan, False)
        end = args.end[:10]
        hi = end[:8] + "01"
        lo = time.strftime("%Y-%m-01", time.gmtime(time.mktime(time.strptime(hi, "%Y-%m-%d")) - 86400))
        last30 = time.strftime("%Y-%m-%d", time.gmtime(time.mktime(time.strptime(end, "%Y-%m-%d")) - 30 * 86400))
        rng = random.Random(7)
        ids = [f"cust_{rng.randrange(CUSTOMERS)}" for _ in range(1000)]
        customer = ids[0]
        results: dict[str, dict] = {}
        for lname, (t, plan, final) in layouts.items():
            size = s.query(
                f"SELECT sum(bytes_on_disk) FROM system.parts WHERE database = 'bench' AND table = '{t}' AND active", "TSV"
            ).bytes().decode().strip()
            proj = s.query(
                f"SELECT sum(bytes_on_disk) FROM system.projection_parts WHERE database = 'bench' AND table = '{t}' AND active",
                "TSV").bytes().decode().strip()
            columns = dict(
                line.split("\t") for line in s.query(
                    f"SELECT name, data_compressed_bytes FROM system.columns WHERE database = 'bench' AND table = '{t}'",
                    "TSV").bytes().decode().splitlines())
            results[lname] = {"table": t, "bytes": int(size or 0), "projection_bytes": int(proj or 0),
                              "column_bytes": {k: int(v) for k, v in columns.items()}, "queries": {}}
            answers = {}
            for qname, sql in queries(t, plan, (lo, hi), last30, customer, ids, final).items():
                secs, rows, out = run(s, sql, args.repeat)
                answers[qname] = out
                results[lname]["queries"][qname] = {"ms": secs * 1000, "rows_read": rows, "pruning": pruning(s, sql)}
            results[lname]["answers"] = answers
        ref = results["old FINAL"]["answers"]
        for lname, r in results.items():
            r["same_answers"] = all(sorted(r["answers"][q].splitlines()) == sorted(ref[q].splitlines()) for q in ref)
        render(results)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "answers"} for k, v in results.items()}, indent=2))
    finally:
        s.close()
        if not args.keep:
            shutil.rmtree(path, ignore_errors=True)
    return 0


def render(results: dict[str, dict]) -> None:
    qnames = list(next(iter(results.values()))["queries"])
    print("layout sizes: " + ", ".join(
        f"{k} {v['bytes'] / 2**20:,.0f} MiB" + (f" (projections {v['projection_bytes'] / 2**20:,.0f})" if v['projection_bytes'] else "")
        for k, v in results.items() if k != "old FINAL"))
    print("column sizes, MiB compressed: " + "; ".join(
        k + " " + ", ".join(f"{c} {b / 2**20:.0f}" for c, b in sorted(v["column_bytes"].items(), key=lambda x: -x[1])[:6])
        for k, v in results.items() if k != "old FINAL"))
    print("answers as old FINAL: " + ", ".join(f"{k} {'yes' if v['same_answers'] else 'NO'}" for k, v in results.items()))
    head = ["query"] + [f"{k} ms / rows" for k in results]
    print(" | ".join(head))
    for q in qnames:
        cells = [q] + [f"{r['queries'][q]['ms']:,.0f} / {r['queries'][q]['rows_read']:,}" for r in results.values()]
        print(" | ".join(cells))
    print("pruning (EXPLAIN indexes=1):")
    for k, r in results.items():
        for q in qnames:
            print(f"  {k:16s} {q:40s} {r['queries'][q]['pruning']}")


if __name__ == "__main__":
    sys.exit(main())
