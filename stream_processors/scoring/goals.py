"""Goals: each customer's state in each goal, derived from ClickHouse, and what a score says.

Flow: customer ids (touched by a batch of the sinks, a retrain, or an API read) ->
``load_states`` reads their sign-up and attributes (``customers``), the ids merged into
them (``customer_identities``) and their event counts (``events``) -> one ``GoalState``
per goal of the workspace and customer -> ``assess`` with the goal's model (``ModelStore``)
-> the likelihood, this customer's drivers and the recommended next actions.

Nothing here is kept only in memory: a state is recomputed from ClickHouse each time, so
a replayed batch counts nothing twice and a broker restart with empty topics changes
nothing. A customer enters each goal at its ``created_at`` and stays ``window_days``; the
goal is reached when ``target_event`` occurs inside the window, expired when the window
ends first. Events of ids merged into a customer (Customer.io merges, Segment aliases,
anonymous ids included) count for that customer.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import orjson

from schemas.config import Goal, GoalstreamConfig
from schemas.warehouse import Warehouse

from . import propensity

DAY_MS = 86_400_000
MAX_MERGE_DEPTH = 8


@dataclass(slots=True)
class GoalState:
    workspace: str
    goal: Goal
    customer_id: str
    entered_at_ms: int
    attributes: dict[str, Any]
    window_counts: dict[str, int] = field(default_factory=dict)
    total_counts: dict[str, int] = field(default_factory=dict)
    reached_at_ms: int | None = None

    @property
    def window_end_ms(self) -> int:
        return self.entered_at_ms + self.goal.window_days * DAY_MS

    def status(self, now_ms: int) -> str:
        if self.reached_at_ms is not None:
            return "reached"
        return "expired" if now_ms >= self.window_end_ms else "active"

    def days_left(self, now_ms: int) -> int:
        return max(0, math.ceil((self.window_end_ms - now_ms) / DAY_MS))

    def features(self, now_ms: int) -> propensity.Features:
        days = min(max(0.0, (now_ms - self.entered_at_ms) / DAY_MS), float(self.goal.window_days))
        return propensity.Features(counts=dict(self.window_counts), days_since_entry=days, attributes=self.attributes)


async def identity_groups(warehouse: Warehouse, workspace: str, ids: Iterable[str]) -> dict[str, set[str]]:
    """Each primary customer of ``ids`` with every id merged into it (itself included)."""
    parent: dict[str, str] = {}
    seen = set(ids)
    frontier = set(seen)
    for _ in range(MAX_MERGE_DEPTH):
        rows = await warehouse.rows(
            "SELECT merged_id, customer_id FROM customer_identities WHERE workspace = {ws:String} "
            "AND (merged_id IN {f:Array(String)} OR customer_id IN {f:Array(String)})",
            {"ws": workspace, "f": sorted(frontier)},
        )
        new: set[str] = set()
        for r in rows:
            parent[r["merged_id"]] = r["customer_id"]
            for x in (r["merged_id"], r["customer_id"]):
                if x not in seen:
                    seen.add(x)
                    new.add(x)
        if not new:
            break
        frontier = new

    def root(x: str) -> str:
        for _ in range(MAX_MERGE_DEPTH):  # bounded: a merge cycle must not hang the scorer
            if x not in parent or parent[x] == x:
                break
            x = parent[x]
        return x

    groups: dict[str, set[str]] = {}
    for x in seen:
        groups.setdefault(root(x), set()).add(x)
    return groups


class Known:
    """What ``load_states`` read about customers that changes only with a record on
    ``goalstream.customers``: each id's identity group and each primary's sign-up and
    attributes. The scoring stage ``forget``s whatever such a record touches, so a round
    triggered by events alone reads only the events (bounded: cleared when full)."""

    def __init__(self, limit: int = 200_000):
        self.limit = limit
        self.root: dict[tuple[str, str], str] = {}  # id -> its primary
        self.members: dict[tuple[str, str], set[str]] = {}  # primary -> ids merged in (itself too)
        self.customer: dict[tuple[str, str], dict[str, Any] | None] = {}  # primary -> row (None: none)

    def forget(self, workspace: str, ids: Iterable[str]) -> None:
        for i in ids:
            root = self.root.pop((workspace, i), i)
            for m in self.members.pop((workspace, root), ()):
                self.root.pop((workspace, m), None)
            self.customer.pop((workspace, root), None)
            self.customer.pop((workspace, i), None)

    def groups(self, workspace: str, ids: set[str]) -> dict[str, set[str]] | None:
        roots = [self.root.get((workspace, i)) for i in ids]
        if any(r is None for r in roots):
            return None
        return {r: self.members[(workspace, r)] for r in roots}  # type: ignore[index]

    def keep(self, workspace: str, groups: dict[str, set[str]], rows: dict[str, dict[str, Any]]) -> None:
        if len(self.root) > self.limit:
            self.root.clear()
            self.members.clear()
            self.customer.clear()
        for root, members in groups.items():
            self.members[(workspace, root)] = members
            for m in members:
                self.root[(workspace, m)] = root
            self.customer[(workspace, root)] = rows.get(root)


async def load_states(
    warehouse: Warehouse, config: GoalstreamConfig, workspace: str, ids: Iterable[str], now_ms: int | None = None,
    known: Known | None = None,
) -> list[GoalState]:
    """The goal states of the (primary customers of) ``ids``; customers that do not exist
    (yet) or are deleted are in no goal. ``known``: identities and customer rows read before."""
    goals = config.goals_of(workspace)
    ids = {i for i in ids if i}
    if not goals or not ids:
        return []
    groups = known.groups(workspace, ids) if known is not None else None
    if groups is None:
        groups = await identity_groups(warehouse, workspace, ids)
    rows_by_id: dict[str, dict[str, Any]] = {}
    missing = sorted(groups) if known is None else sorted(r for r in groups if (workspace, r) not in known.customer)
    if missing:
        fetched = await warehouse.rows(
            "SELECT customer_id, toUnixTimestamp64Milli(created_at) AS entered, attributes FROM customers FINAL "
            "WHERE workspace = {ws:String} AND customer_id IN {ids:Array(String)} AND is_deleted = 0",
            {"ws": workspace, "ids": missing},
        )
        rows_by_id = {r["customer_id"]: r for r in fetched}
        for r in fetched:  # parsed once, kept with the row in ``known``
            r["attrs"] = _attributes(r["attributes"])
        if known is not None:
            known.keep(workspace, {r: groups[r] for r in missing}, rows_by_id)
    if known is not None:
        rows_by_id.update({r: row for r in groups if (row := known.customer.get((workspace, r))) is not None})
    customers = list(rows_by_id.values())
    if not customers:
        return []
    entered = {r["customer_id"]: int(r["entered"]) for r in customers}
    members: dict[str, str] = {m: p for p in entered for m in groups.get(p, {p})}
    windows = sorted({g.window_days for g in goals})
    # Per (member, event name): all-time count, and per window length the count inside the
    # window and the first time inside it. transform() maps each member to its primary's
    # sign-up through a hash table, so the cost does not grow with the number of ids.
    cols = ["count() AS total"]
    for i, w in enumerate(windows):
        inside = f"t >= e AND t < e + {w * DAY_MS}"
        cols += [f"countIf({inside}) AS n{i}", f"minIf(t, {inside}) AS first{i}"]
    mids = sorted(members)
    rows = await warehouse.rows(
        f"SELECT who, name, {', '.join(cols)} FROM ("
        "  SELECT if(customer_id = '', anonymous_id, customer_id) AS who, name, toUnixTimestamp64Milli(timestamp) AS t,"
        "         transform(who, {mids:Array(String)}, {entries:Array(Int64)}, toInt64(0)) AS e"
        "  FROM events WHERE workspace = {ws:String} AND customer_id IN {mids:Array(String)}"
        # Apart, not OR-ed: each half then reads only its customers' granules (the sort key
        # starts with workspace, customer_id; anonymous events are the customer_id = '' range).
        "  UNION ALL"
        "  SELECT anonymous_id AS who, name, toUnixTimestamp64Milli(timestamp) AS t,"
        "         transform(who, {mids:Array(String)}, {entries:Array(Int64)}, toInt64(0)) AS e"
        "  FROM events WHERE workspace = {ws:String} AND customer_id = '' AND anonymous_id IN {mids:Array(String)}"
        ") GROUP BY who, name",
        {"ws": workspace, "mids": mids, "entries": [entered[members[m]] for m in mids]},
    )
    attributes = {r["customer_id"]: r["attrs"] for r in customers}
    states = {
        (g.name, cid): GoalState(workspace, g, cid, ent, attributes[cid]) for g in goals for cid, ent in entered.items()
    }
    for r in rows:
        primary = members.get(r["who"])
        if primary is None:
            continue
        for g in goals:
            s = states[(g.name, primary)]
            i = windows.index(g.window_days)
            n = int(r[f"n{i}"])
            name = r["name"]
            s.total_counts[name] = s.total_counts.get(name, 0) + int(r["total"])
            if n:
                s.window_counts[name] = s.window_counts.get(name, 0) + n
                if name == g.target_event:
                    first = int(r[f"first{i}"])
                    s.reached_at_ms = first if s.reached_at_ms is None else min(s.reached_at_ms, first)
    return list(states.values())


def _attributes(raw: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


async def labelled(
    warehouse: Warehouse, workspace: str, goal: Goal, now_ms: int, limit: int = 200_000
) -> list[propensity.Labelled]:
    """The goal's customers whose window is over (so the outcome is known either way), newest
    sign-ups first up to ``limit``, with their events inside the window (merged ids' included)."""
    customers = await warehouse.rows(
        "SELECT customer_id, toUnixTimestamp64Milli(created_at) AS entered, attributes FROM customers FINAL "
        "WHERE workspace = {ws:String} AND is_deleted = 0 AND created_at <= fromUnixTimestamp64Milli({now:Int64}) "
        "ORDER BY created_at DESC LIMIT {n:UInt32}",
        {"ws": workspace, "now": now_ms, "n": limit},
    )
    if not customers:
        return []
    window = goal.window_days * DAY_MS
    first = min(int(r["entered"]) for r in customers)
    rows = await warehouse.rows(
        "SELECT cid, name, groupArray(t) AS ts FROM ("
        "  SELECT if(i.customer_id = '', if(e.customer_id = '', e.anonymous_id, e.customer_id), i.customer_id) AS cid,"
        "         e.name AS name, toUnixTimestamp64Milli(e.timestamp) AS t"
        "  FROM events AS e"
        "  LEFT JOIN customer_identities AS i"
        "    ON i.workspace = e.workspace AND i.merged_id = if(e.customer_id = '', e.anonymous_id, e.customer_id)"
        "  WHERE e.workspace = {ws:String} AND e.timestamp >= fromUnixTimestamp64Milli({first:Int64})"
        ") GROUP BY cid, name SETTINGS join_use_nulls = 0",
        {"ws": workspace, "first": first},
    )
    by_customer: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        by_customer.setdefault(r["cid"], {})[r["name"]] = [int(t) for t in r["ts"]]
    out = []
    for c in customers:
        entered = int(c["entered"])
        end = entered + window
        events = by_customer.get(c["customer_id"], {})
        inside = {name: sorted(t for t in ts if entered <= t < end) for name, ts in events.items()}
        targets = inside.pop(goal.target_event, [])
        if now_ms < end:
            # Only customers whose window is over: taking the early converters of open
            # windows but not their peers who have not converted yet would bias the model up.
            continue
        reached = targets[0] if targets else None
        out.append(
            propensity.Labelled(
                customer_id=c["customer_id"],
                entered_at_ms=entered,
                window_end_ms=end,
                reached_at_ms=reached,
                attributes=_attributes(c["attributes"]),
                events={name: ts for name, ts in inside.items() if ts},
            )
        )
    return out


@dataclass(slots=True)
class Assessment:
    """What the scorer publishes and the API answers for one customer and goal."""

    likelihood: float
    status: str
    model_version: str
    model_kind: str
    drivers: list[dict[str, Any]]
    actions: list[dict[str, Any]]
    goal_days_left: int


def assess(state: GoalState, model: propensity.Model, now_ms: int) -> Assessment:
    status = state.status(now_ms)
    days_left = state.days_left(now_ms)
    if status == "active":
        f = state.features(now_ms)
        likelihood = float(model.likelihood(f))
        drivers = model.drivers(f)
        names = [a.event_name for a in state.goal.actions]
        importance = propensity.importance(model.action_gains(f, names)) if names else {}
        version, kind = model.version, model.kind
    else:
        # The outcome is known: no model needed, and nothing left to recommend for.
        likelihood = 1.0 if status == "reached" else 0.0
        drivers, importance = [], {a.event_name: 0.0 for a in state.goal.actions}
        version, kind = f"outcome:{status}", "outcome"
    actions = [
        {
            "event_name": a.event_name,
            "goal_num_completed": state.window_counts.get(a.event_name, 0),
            "total_num_completed": state.total_counts.get(a.event_name, 0),
            "goal_days_left": days_left,
            "importance": float(importance.get(a.event_name, 0.0)),
            "message_plaintext": a.message_plaintext,
            "message_html": a.message_html,
        }
        for a in state.goal.actions
    ]
    actions.sort(key=lambda a: -a["importance"])  # stable: config order breaks ties
    return Assessment(likelihood, status, version, kind, drivers, actions, days_left)


class ModelStore:
    """The model each goal is scored with: the newest in ``propensity_models``, else the
    goal's base rate (from the outcomes known so far). Cached for ``ttl_s``, so a model
    trained elsewhere (``goalstream train`` against a ClickHouse server) is picked up."""

    def __init__(self, warehouse: Warehouse, ttl_s: float = 10.0):
        self.warehouse = warehouse
        self.ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, propensity.Model]] = {}

    def put(self, model: propensity.Model) -> None:
        self._cache[(model.workspace, model.goal)] = (time.monotonic(), model)

    def cached(self, workspace: str, goal: str) -> propensity.Model | None:
        hit = self._cache.get((workspace, goal))
        return hit[1] if hit else None

    async def get(self, workspace: str, goal: Goal) -> propensity.Model:
        hit = self._cache.get((workspace, goal.name))
        if hit and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        model = await self.load(workspace, goal)
        self._cache[(workspace, goal.name)] = (time.monotonic(), model)
        return model

    async def load(self, workspace: str, goal: Goal) -> propensity.Model:
        rows = await self.warehouse.rows(
            "SELECT model FROM propensity_models WHERE workspace = {ws:String} AND goal = {g:String} "
            "ORDER BY trained_at DESC LIMIT 1",
            {"ws": workspace, "g": goal.name},
        )
        if rows and rows[0]["model"]:
            stored = propensity.Model.from_json(rows[0]["model"])
            if stored.kind != "base_rate":
                return stored
        # No trained model (or only a base rate): the base rate as it is now.
        counts = await self.warehouse.rows(
            "SELECT countIf(status = 'reached') AS pos, countIf(status != 'active') AS known FROM goal_customers "
            "WHERE workspace = {ws:String} AND goal = {g:String}",
            {"ws": workspace, "g": goal.name},
        )
        pos, known = (int(counts[0]["pos"]), int(counts[0]["known"])) if counts else (0, 0)
        return propensity.base_rate_model(workspace, goal.name, pos, known)
