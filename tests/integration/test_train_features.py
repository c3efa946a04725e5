"""The ClickHouse training features (``scoring.features``) against the Python path
(``goals.labelled`` + ``propensity._snapshots`` / ``_design`` / ``Design.row``) on a small
hand-made population in real chDB: the same customers, the same design, the same snapshots
(with the hash's snapshot times fed to ``_snapshots``) and the same counts per snapshot, so
the two paths cannot drift apart."""

from __future__ import annotations

import uuid

import numpy as np
import orjson
import pytest

from schemas.config import Action, Goal
from stream_processors.scoring import features, goals, propensity as pr

DAY = pr.DAY_MS
NOW = 1_800_000_000_000


class _HashRng:
    """Stands in for numpy's generator in ``_snapshots``: customer i's draws are the hash's."""

    def __init__(self, labelled):
        self._next = iter(labelled)

    def random(self, n):
        c = next(self._next)
        return np.array([features.snapshot_u(c.customer_id, k) for k in range(n)])


async def _population(warehouse, ws: str) -> None:
    customers = []  # (id, entered days before NOW, attributes, deleted)
    for i in range(14):
        attrs = {"plan": "Pro" if i % 2 else "Free"} if i < 11 else ({"plan": 3} if i == 11 else {})
        customers.append((f"c{i:02d}", 40 + i, orjson.dumps(attrs).decode(), 0))
    customers += [("c_bad_json", 45, "{not json", 0), ("c_list", 46, "[1, 2]", 0),
                  ("c_deleted", 50, "{}", 1), ("c_open", 5, '{"plan": "Pro"}', 0)]
    await warehouse.command(
        "INSERT INTO customers (workspace, customer_id, created_at, updated_at, attributes, version, is_deleted) "
        "SELECT {ws:String}, c.1, fromUnixTimestamp64Milli(toInt64({now:Int64} - c.2 * 86400000)), now64(3), c.3, 1, c.4 "
        "FROM (SELECT arrayJoin({rows:Array(Tuple(String, Int64, String, UInt8))}) AS c)",
        {"ws": ws, "now": NOW, "rows": customers},
    )
    entered = {cid: NOW - d * DAY for cid, d, _, _ in customers}
    events = []  # (customer_id, anonymous_id, name, ms)

    def ev(cid: str, name: str, day: float, anon: str = "") -> None:
        events.append(("" if anon else cid, anon, name, int(entered[cid] + day * DAY)))

    for i in range(14):
        cid = f"c{i:02d}"
        for j in range(i % 5 + 1):  # the action, spread over the window
            ev(cid, "act", 0.3 + j * 2.1 + i * 0.07)
        for j in range(i % 3):
            ev(cid, "other", 1.1 + j * 3.3)
        ev(cid, "rare", 0.0)  # at the entry instant: counts only for t > entered
        ev(cid, "act", -1.0)  # before the window
        ev(cid, "act", 30.5)  # after it
        if i % 3 == 0:  # converts on day 2 + i/4 (twice: the first counts)
            ev(cid, "buy", 2 + i / 4)
            ev(cid, "buy", 20)
            ev(cid, "act", 2.5 + i / 4)  # after the conversion
    ev("c05", "act", 1.7, anon="anon5")  # an anonymous id merged into c05
    ev("c05", "other", 3.9, anon="anon5")
    ev("c07", "buy", 35.0)  # a conversion after the window: not reached
    ev("c_bad_json", "other", 4.0)
    ev("c_list", "buy", 1.0)
    ev("c_deleted", "act", 1.0)
    ev("c_open", "act", 1.0)
    await warehouse.command(
        "INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties) "
        "SELECT generateUUIDv4(), {ws:String}, e.1, e.2, e.3, fromUnixTimestamp64Milli(e.4), now64(3), '{}' "
        "FROM (SELECT arrayJoin({rows:Array(Tuple(String, String, String, Int64))}) AS e)",
        {"ws": ws, "rows": events},
    )
    await warehouse.command(
        "INSERT INTO customer_merges (workspace, customer_id, merged_id, kind, source, message_id, merged_at) "
        "VALUES ({ws:String}, 'c05', 'anon5', 'alias', 'test', 'm1', now64(3))", {"ws": ws})


@pytest.fixture
async def population(warehouse):
    ws = f"f{uuid.uuid4().hex[:8]}"
    await _population(warehouse, ws)
    goal = Goal(workspace=ws, name="g", window_days=30, target_event="buy", actions=[Action(event_name="act")])
    return ws, goal


async def test_clickhouse_snapshot_rows_equal_the_python_snapshots(warehouse, population):
    ws, goal = population
    labelled = await goals.labelled(warehouse, ws, goal, NOW)
    pop = await features.design(warehouse, goal, NOW)
    rows = await features.snapshot_rows(warehouse, pop)

    # The same customers and outcomes.
    ids = sorted(c.customer_id for c in labelled)
    assert pop.n == len(labelled) == 16  # c00..c13, c_bad_json, c_list; not deleted, not open
    by_id = {c.customer_id: c for c in labelled}
    assert rows.customer_label.tolist() == [int(by_id[i].reached_at_ms is not None) for i in ids]
    assert sum(rows.customer_label) == 6  # c00, c03, c06, c09, c12 and c_list

    # The same design (before caps).
    expected = pr._design(labelled, goal.window_days, ["act"])
    assert pop.design == expected
    assert pop.design.levels == {"plan": ("Free", "Pro", pr.OTHER)}

    # The same snapshots, counts per snapshot included.
    snaps = pr._snapshots(labelled, pop.design.events, _HashRng(labelled))
    mine = sorted(
        (ids[o], round(d, 9), int(lab), tuple(int(x) for x in cnt))
        for o, d, lab, cnt in zip(rows.customer, rows.days, rows.label, rows.counts)
    )
    theirs = sorted(
        (labelled[s.customer].customer_id, round(s.days, 9), s.label, tuple(s.counts[e] for e in pop.design.events))
        for s in snaps
    )
    assert len(mine) == len(theirs) > 100
    assert mine == theirs
    assert any(c[3] and c[3][0] for c in mine)  # counts are not all zero

    # And the same matrices: Design.matrix is design.row (tree_row) of every snapshot (caps included).
    design = pr.Design(pop.design.events, (2.0,) + (np.inf,) * (len(pop.design.events) - 1),
                       pop.design.window_days, pop.design.knots, pop.design.levels)
    X, T = design.matrix(rows), design.matrix(rows, trees=True)
    for o, d, cnt, x, t in zip(rows.customer, rows.days, rows.counts, X, T):
        c = by_id[ids[o]]
        counts = dict(zip(design.events, (int(v) for v in cnt)))
        assert x.tolist() == pytest.approx(design.row(counts, d, c.attributes), abs=1e-12)
        assert t.tolist() == pytest.approx(design.tree_row(counts, d, c.attributes), abs=1e-12)


async def test_train_through_clickhouse_gives_the_model_kind_and_counts(warehouse, population):
    ws, goal = population
    m = await features.train(warehouse, goal, now_ms=NOW)
    # 16 customers are fewer than train's minimum: the base rate, with the same counts.
    assert (m.kind, m.n_customers, m.n_positive) == ("base_rate", 16, 6)
    labelled = await goals.labelled(warehouse, ws, goal, NOW)
    old = pr.train(ws, goal.name, goal.window_days, ["act"], labelled, now_ms=NOW)
    assert (old.kind, old.n_customers, old.n_positive) == (m.kind, m.n_customers, m.n_positive)
