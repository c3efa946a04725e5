"""Training features computed in ClickHouse: the snapshot rows of ``propensity.train``
without pulling a single event into Python.

Flow: ``design`` (two small queries: event totals inside the labelled customers' windows,
the plan attribute's values) -> ``propensity.Design`` -> ``snapshot_rows``, one SQL that per
labelled customer draws ``propensity.SNAPSHOTS`` snapshot times t = entered + window *
u**SNAPSHOT_POWER, u from a hash of (customer id, k) (``snapshot_u``, the same in Python),
drops the snapshots at/after the conversion, and returns per snapshot the count of each of
the design's events with ts < t, the days since entry, the plan's level and the label,
streamed in column blocks into numpy arrays (``propensity.Snapshots``) -> ``propensity.fit``,
the fit ``propensity.train`` ends in: both model kinds, the choice and the quality report.

What a labelled customer is, which events count for them and when the goal is reached are
exactly ``goals.labelled``'s rules (customers FINAL, not deleted, signed up by now, newest
``limit`` first, window over; events of merged ids through ``customer_identities``;
events inside [entered, entered + window); the first target event inside it is the
conversion; the target itself is no feature). ``tests/integration/test_train_features.py``
checks the rows against ``propensity._snapshots`` on ``goals.labelled``'s objects.

Differences from ``propensity.train`` by design: snapshot times come from the hash, not
numpy's generator (so the same data give the same rows on any machine and in any order),
and customers are ordered by id for the split. The model is fitted, chosen and
stored by the same code.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import orjson

from schemas.config import Goal
from schemas.warehouse import Warehouse

from . import propensity as pr

DAY_MS = pr.DAY_MS
MAX_PLAN_VALUES = 1000  # distinct raw plan values read for the levels (the rest are OTHER)
# The reads of a training run: more threads than the scorer's 1 (a server has its own cores;
# embedded, a training run is rare and short).
SETTINGS = {"max_threads": 2, "join_use_nulls": 0}

_U_SQL = "bitShiftRight(reinterpretAsUInt64(substring(MD5(concat(cid, ':', toString(k))), 1, 8)), 11) / 9007199254740992"


def snapshot_u(customer_id: str, k: int) -> float:
    """Snapshot k's uniform draw for a customer: what the SQL computes (``_U_SQL``)."""
    x = int.from_bytes(hashlib.md5(f"{customer_id}:{k}".encode()).digest()[:8], "little")
    return (x >> 11) / 9007199254740992


def _labelled_sql() -> str:
    """The labelled customers (as ``goals.labelled``): cid, entered, plan_raw."""
    return (
        "SELECT cid, entered, plan_raw FROM ("
        "  SELECT customer_id AS cid, toUnixTimestamp64Milli(created_at) AS entered,"
        "         JSONExtractRaw(attributes, 'plan') AS plan_raw"
        "  FROM customers FINAL WHERE workspace = {ws:String} AND is_deleted = 0"
        "    AND created_at <= fromUnixTimestamp64Milli({now:Int64})"
        "  ORDER BY created_at DESC LIMIT {n:UInt32}"
        ") WHERE entered + {window:Int64} <= {now:Int64}"
    )


def _inside_sql() -> str:
    """Every event inside a labelled customer's window: cid, name, t (ms)."""
    return (
        "SELECT ev.cid AS cid, ev.name AS name, ev.t AS t FROM ("
        "  SELECT if(i.customer_id = '', if(e.customer_id = '', e.anonymous_id, e.customer_id), i.customer_id) AS cid,"
        "         e.name AS name, toUnixTimestamp64Milli(e.timestamp) AS t"
        "  FROM events AS e"
        "  LEFT JOIN customer_identities AS i"
        "    ON i.workspace = e.workspace AND i.merged_id = if(e.customer_id = '', e.anonymous_id, e.customer_id)"
        "  WHERE e.workspace = {ws:String}"
        "    AND e.timestamp >= fromUnixTimestamp64Milli({first:Int64})"
        "    AND e.timestamp < fromUnixTimestamp64Milli({last:Int64})"
        f") AS ev INNER JOIN ({_labelled_sql()}) AS l ON ev.cid = l.cid"
        " WHERE ev.t >= l.entered AND ev.t < l.entered + {window:Int64}"
    )


def _plan_level(raw: str) -> str:
    """A raw JSON value of ``attributes.plan`` as ``propensity`` levels it."""
    if raw == "":
        return pr._level(None)
    try:
        return pr._level(orjson.loads(raw))
    except orjson.JSONDecodeError:
        return pr._level(None)


@dataclass
class Population:
    """What ``design`` read: the design and the query parameters of the snapshot SQL."""

    design: pr.Design
    params: dict[str, Any]
    plan_raws: list[str]  # raw plan values with a level of their own ...
    plan_index: list[int]  # ... and that level's index in design.levels["plan"]
    n: int  # labelled customers


async def labelled_count(warehouse: Warehouse, goal: Goal, now_ms: int, limit: int = 200_000) -> int:
    """How many labelled customers the goal's training would read."""
    params = {"ws": goal.workspace, "now": int(now_ms), "n": limit, "window": goal.window_days * DAY_MS}
    rows = await warehouse.rows(f"SELECT count() AS n FROM ({_labelled_sql()})", params)
    return int(rows[0]["n"]) if rows else 0


async def design(warehouse: Warehouse, goal: Goal, now_ms: int, limit: int = 200_000) -> Population:
    """The design ``propensity._design`` would make of ``goals.labelled``'s customers."""
    window = goal.window_days * DAY_MS
    params: dict[str, Any] = {"ws": goal.workspace, "now": int(now_ms), "n": limit, "window": window}
    span = await warehouse.rows(
        f"SELECT count() AS n, min(entered) AS first, max(entered) AS last FROM ({_labelled_sql()})", params)
    n = int(span[0]["n"]) if span else 0
    params["first"] = int(span[0]["first"]) if n else 0
    params["last"] = int(span[0]["last"]) + window if n else 0
    plans = await warehouse.rows(
        f"SELECT plan_raw, count() AS c FROM ({_labelled_sql()}) GROUP BY plan_raw ORDER BY c DESC, plan_raw "
        f"LIMIT {MAX_PLAN_VALUES}", params)
    totals = await warehouse.rows(
        f"SELECT name, count() AS c FROM ({_inside_sql()}) WHERE name != {{target:String}} GROUP BY name",
        {**params, "target": goal.target_event},
    ) if n else []
    # As propensity._design: the actions, then the most frequent other events.
    actions = [a.event_name for a in goal.actions]
    others = [r["name"] for r in sorted(totals, key=lambda r: (-int(r["c"]), r["name"])) if r["name"] not in actions]
    events = tuple(dict.fromkeys(actions)) + tuple(others[: pr.MAX_OTHER_EVENTS])
    seen: Counter[str] = Counter()
    level_of = {}
    for r in plans:
        level_of[r["plan_raw"]] = lv = _plan_level(r["plan_raw"])
        seen[lv] += int(r["c"])
    min_level = max(5, n // 100)
    common = [v for v, c in seen.most_common() if c >= min_level and v != pr.OTHER][: pr.MAX_LEVELS]
    levels = {"plan": tuple(common) + (pr.OTHER,)}
    if tuple(pr.CATEGORICAL) != ("plan",):  # the SQL levels the plan only
        raise NotImplementedError(f"ClickHouse features level {pr.CATEGORICAL}, not only plan")
    knots = tuple(round(f * goal.window_days, 6) for f in pr.KNOT_FRACTIONS)
    d = pr.Design(events=events, caps=(math.inf,) * len(events), window_days=float(goal.window_days), knots=knots, levels=levels)
    raws = [raw for raw, lv in level_of.items() if lv in common]
    return Population(d, {**params, "target": goal.target_event}, raws, [common.index(level_of[r]) for r in raws], n)


def _snapshot_sql(events: Sequence[str]) -> str:
    arrays = "".join(f", groupArrayIf(t, name = {{e{j}:String}}) AS a{j}" for j in range(len(events)))
    counts = "".join(f", toUInt32(arrayCount(x -> toFloat64(x) < ts, a{j})) AS n{j}" for j in range(len(events)))
    carry = "".join(f", A.a{j} AS a{j}" for j in range(len(events)))
    return (
        # One extra row per customer (k = SNAPSHOTS, never dropped): its label and plan, for
        # the split by customer and the counts of customers and positives.
        f"SELECT ord, toUInt8(k = {pr.SNAPSHOTS}) AS is_customer, toUInt8(reached > 0) AS label,"
        "        (ts - toFloat64(entered)) / 86400000 AS days, toUInt8(plan) AS plan" + counts +
        " FROM ("
        f"  SELECT *, k, {_U_SQL} AS u, toFloat64(entered) + pow(u, {{power:Float64}}) * toFloat64({{window:Int64}}) AS ts"
        "   FROM ("
        "    SELECT L.cid AS cid, L.entered AS entered, row_number() OVER (ORDER BY L.cid) - 1 AS ord,"
        "           transform(L.plan_raw, {raws:Array(String)}, {idx:Array(UInt8)}, {other:UInt8}) AS plan,"
        "           A.reached AS reached" + carry +
        f"    FROM ({_labelled_sql()}) AS L"
        "     LEFT JOIN ("
        "      SELECT cid, minIf(t, name = {target:String}) AS reached" + arrays +
        f"      FROM ({_inside_sql()}) GROUP BY cid"
        "     ) AS A ON A.cid = L.cid"
        "   )"
        f"  ARRAY JOIN range({pr.SNAPSHOTS + 1}) AS k"
        " )"
        f" WHERE k = {pr.SNAPSHOTS} OR reached = 0 OR ts < reached"
    )


async def snapshot_rows(warehouse: Warehouse, pop: Population) -> pr.Snapshots:
    """One row per snapshot (``propensity._snapshots``'s), customers ordered by id."""
    import numpy as np

    events = pop.design.events
    params = {
        **pop.params,
        **{f"e{j}": e for j, e in enumerate(events)},
        "power": float(pr.SNAPSHOT_POWER),
        "raws": pop.plan_raws,
        "idx": pop.plan_index,
        "other": len(pop.design.levels["plan"]) - 1,
    }
    cols = await warehouse.columns(_snapshot_sql(events), params, SETTINGS) if pop.n else {}

    def col(name: str, dtype: Any) -> Any:
        return np.asarray(cols.get(name, np.array([], dtype=dtype)), dtype=dtype)

    is_customer = col("is_customer", np.uint8).astype(bool)
    ordinal = col("ord", np.int64)
    snap = ~is_customer
    order = np.argsort(ordinal[is_customer], kind="stable")
    counts = np.empty((int(snap.sum()), len(events)), dtype=np.uint32)
    for j in range(len(events)):
        counts[:, j] = col(f"n{j}", np.uint32)[snap]
    label, plan = col("label", np.uint8), col("plan", np.uint8)
    return pr.Snapshots(
        customer=ordinal[snap], counts=counts, days=col("days", np.float64)[snap],
        levels=plan[snap].reshape(-1, 1), label=label[snap], customer_label=label[is_customer][order],
    )


async def train(
    warehouse: Warehouse, goal: Goal, *, now_ms: int, limit: int = 200_000, seed: int = 0,
    timings: dict[str, float] | None = None,
) -> pr.Model:
    """``goals.labelled`` + ``propensity.train``, with the features computed in ClickHouse."""
    import asyncio
    import time

    t0 = time.perf_counter()
    pop = await design(warehouse, goal, now_ms, limit)
    t1 = time.perf_counter()
    rows = await snapshot_rows(warehouse, pop)
    t2 = time.perf_counter()
    if timings is not None:
        timings.update(design_query_s=t1 - t0, snapshot_query_s=t2 - t1)
    loop = asyncio.get_running_loop()
    # CPU-bound: off the event loop.
    return await loop.run_in_executor(
        None, lambda: pr.fit(goal.workspace, goal.name, pop.design, rows, seed=seed, now_ms=now_ms, timings=timings)
    )
