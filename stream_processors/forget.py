"""Forgetting a person: the executor of data-subject regulations (GDPR art. 17, CCPA).

Flow: ``Regulator.request(workspace, customer_id, suppress, requested_by)`` -> a ``pending``
row in ``regulations`` (in force in this process at once, in every other part within
``regulations.REFRESH_S``: from then on the sinks store nothing for the id that was received
up to the request, and nothing at all when it is suppressed) -> run in the background, one
regulation at a time:
  1. the person's ids: the id, what it was merged into (the person it is now part of), every id
     merged or aliased into that person, and the anonymous ids identified as them -> ``running``
     with those ids (so every part now blocks them all);
  2. a sweep of every table, with ClickHouse's own lightweight ``DELETE`` (a server and chDB
     alike): the rollups first (rebuilt from what remains), then scores, goal state, webhook
     attempts and deliveries, dead letters that quote them, merges, customers, events;
  3. after ``settle_s`` (longer than a refresh plus a batch in flight), a second sweep takes
     what a batch that was already past its check stored meanwhile;
  4. ``completed`` with the rows removed per table, or ``failed`` with the error (retried at
     the next start, like one that a stop interrupted: every step can run again).

The ``regulations`` row is the audit trail: who asked, when, the ids, counts per table, when
it completed. It holds no personal data beyond the ids.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import nullcontext
from typing import Any, Callable

from schemas import model
from schemas.regulations import REFRESH_S, Forgotten, quoted
from schemas.stopping import bounded
from schemas.warehouse import WarehouseError

from . import retry as retries
from .errors import retriable

log = logging.getLogger("goalstream.forget")

SETTLE_S = 2 * REFRESH_S + 3.0
MAX_ROUNDS = 8  # merges of merges followed this deep
STOP_S = 5.0
REGULATION_COLUMNS = (
    "id", "workspace", "customer_id", "ids", "suppress", "requested_by", "requested_at", "state", "removed",
    "completed_at", "error", "version",
)
WS_IDS = "workspace = {ws:String} AND customer_id IN {ids:Array(String)}"
# Up to the request: what a person sends after a plain forget is theirs anew (suppressed, it
# is never stored at all). Derived rows (scores, goal state, deliveries) are all swept: nothing
# is scored or sent for the person while the regulation runs.
UPTO = "{at:DateTime64(3, 'UTC')}"
# (table, what of it is the person's): in the order they are swept. Webhook attempts and dead
# letters are found through what they belong to (``_sweep``); the rollups are rebuilt.
TABLES = (
    ("propensity_scores", WS_IDS),
    ("goal_aggregates", WS_IDS),
    ("goal_status", WS_IDS),
    ("webhook_attempts", "workspace = {ws:String} AND delivery_id IN {deliveries:Array(String)}"),
    ("webhook_deliveries", WS_IDS),
    ("deadletters", "id IN {letters:Array(String)}"),
    ("customer_merges", "workspace = {ws:String} AND (customer_id IN {ids:Array(String)} OR merged_id IN {ids:Array(String)}) "
                        f"AND merged_at <= {UPTO}"),
    ("customers", f"{WS_IDS} AND updated_at <= {UPTO}"),
    # person_id: the customer id, else the anonymous id. An event another customer sent from a
    # device the person also used is that customer's, and stays.
    ("events", f"workspace = {{ws:String}} AND person_id IN {{ids:Array(String)}} AND received_at <= {UPTO}"),
)
# The rollups are not the person's rows: their rows rebuilt are reported apart.
REBUILT = {"events_daily_state": "events_daily_state (rebuilt)", "goal_cohorts_daily_state": "goal_cohorts_daily_state (rebuilt)"}
SWEPT = tuple(t for t, _ in TABLES) + tuple(REBUILT.values())

_UP_SQL = "SELECT customer_id FROM customer_identities WHERE workspace = {ws:String} AND merged_id = {id:String}"
_MERGED_SQL = "SELECT merged_id AS id FROM customer_identities WHERE workspace = {ws:String} AND customer_id IN {ids:Array(String)}"
_ANON_SQL = (
    "SELECT DISTINCT anonymous_id AS id FROM events WHERE workspace = {ws:String} AND customer_id IN {ids:Array(String)} "
    "AND anonymous_id != ''"
)
_DELIVERIES_SQL = "SELECT DISTINCT delivery_id FROM webhook_deliveries WHERE " + WS_IDS
# Dead letters that may quote the person: the ids as substrings of the key or the value (Avro
# and JSON keep strings as they are), and every request the gateway refused (its payload may be
# base64); each is then read (``regulations.quoted``) before it is removed.
_LETTERS_SQL = (
    "SELECT id, stage, key, value, headers FROM deadletters WHERE failed_at <= {at:DateTime64(3, 'UTC')} AND ("
    "(stage LIKE 'gateway:%' AND (key IS NULL OR startsWith(key, concat({ws:String}, ':')))) "
    "OR multiSearchAny(ifNull(key, ''), {ids:Array(String)}) OR multiSearchAny(ifNull(value, ''), {ids:Array(String)}))"
)
_MINE = "person_id IN {ids:Array(String)} AND received_at <= {at:DateTime64(3, 'UTC')}"
_EVENT_DAYS_SQL = "SELECT DISTINCT name, toDate(timestamp) AS day FROM events WHERE workspace = {ws:String} AND " + _MINE
_COHORT_DAYS_SQL = "SELECT DISTINCT goal, toDate(entered_at) AS day FROM goal_status WHERE " + WS_IDS


def _public(row: dict[str, Any]) -> dict[str, Any]:
    """A regulation as the admin API and ``goalstream forget --list`` show it."""
    def iso(ms: int | None) -> str | None:
        return None if ms is None else time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"

    removed = dict(row.get("removed") or {})
    return {
        "object": "regulation", "id": row["id"], "workspace": row["workspace"], "customer_id": row["customer_id"],
        "type": "SUPPRESS_WITH_DELETE" if row["suppress"] else "DELETE_ONLY",
        "suppress": bool(row["suppress"]), "state": row["state"], "ids": list(row.get("ids") or []),
        "requested_by": row["requested_by"], "requested_at": iso(row["requested_ms"]),
        "completed_at": iso(row.get("completed_ms")), "removed": removed,
        "rows_removed": sum(n for t, n in removed.items() if not t.endswith("(rebuilt)")),
        "error": row.get("error") or None,
    }


_LIST_SQL = (
    "SELECT id, workspace, customer_id, ids, suppress, requested_by, toUnixTimestamp64Milli(requested_at) AS requested_ms, "
    "state, removed, toUnixTimestamp64Milli(completed_at) AS completed_ms, error FROM regulations FINAL"
)


class Regulator:
    """Takes regulations and carries them out (see the module's docstring). ``warehouse``:
    a ``Warehouse`` (or the stack's, over IPC) that can read, insert and run commands."""

    def __init__(self, warehouse: Any, forgotten: Forgotten, *, settle_s: float = SETTLE_S,
                 quiesce: Callable[[], Any] | None = None):
        """``settle_s``: the wait before the first sweep (capped at two refreshes: every part
        then has the ids) and between the two sweeps; 0 where nothing else can store (the
        CLI on an embedded data dir). ``quiesce()``: an async context manager during which
        this process's events sink stores nothing (``goalstream up``), so the rebuilt daily
        rollup counts every event exactly once; without one, an event stored for the same
        day during the rebuild (a fraction of a second) may count twice in ``events_daily``."""
        self.warehouse = warehouse
        self.forgotten = forgotten
        self.settle_s = settle_s
        self.quiesce = quiesce
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()
        self._version = 0

    # -- the API's side -------------------------------------------------------------------

    async def request(self, workspace: str, customer_id: str, *, suppress: bool, requested_by: str) -> dict[str, Any]:
        row = {
            "id": str(uuid.uuid4()), "workspace": workspace, "customer_id": customer_id, "ids": [customer_id],
            "suppress": int(bool(suppress)), "requested_by": requested_by[:200], "requested_ms": model.now_ms(),
            "state": "pending", "removed": {}, "completed_ms": None, "error": "",
        }
        await self._save(row)  # durable before it is acknowledged: a restart carries it out
        self._spawn(row)
        return _public(row)

    async def list(self, workspace: str | None = None, regulation: str | None = None) -> list[dict[str, Any]]:
        sql, params = _LIST_SQL, {}
        where = []
        if workspace is not None:
            where.append("workspace = {ws:String}")
            params["ws"] = workspace
        if regulation is not None:
            where.append("id = {id:String}")
            params["id"] = regulation
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = await self.warehouse.rows(sql + " ORDER BY requested_at DESC, id", params)
        return [_public(r) for r in rows]

    async def wait(self, regulation: str, timeout_s: float) -> dict[str, Any] | None:
        """The regulation once it completed or failed, or as it is after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            found = await self.list(regulation=regulation)
            if not found or found[0]["state"] in ("completed", "failed") or time.monotonic() >= deadline:
                return found[0] if found else None
            await asyncio.sleep(0.2)

    # -- lifecycle ---------------------------------------------------------------------------

    async def resume(self) -> int:
        """Carry out what a stop or a failure left undone; returns how many."""
        try:
            rows = await self.warehouse.rows(_LIST_SQL + " WHERE state != 'completed' ORDER BY requested_at")
        except WarehouseError as exc:
            log.warning("could not read the regulations left undone (%s); they run at the next start", exc)
            return 0
        for row in rows:
            log.info("regulation %s was left %s; carrying it out", row["id"], row["state"])
            self._spawn(dict(row))
        return len(rows)

    async def stop(self) -> None:
        tasks, self._tasks = set(self._tasks), set()
        for t in tasks:
            t.cancel()
        if tasks:
            await bounded("the regulations", asyncio.gather(*tasks, return_exceptions=True), STOP_S, logger=log)

    def _spawn(self, row: dict[str, Any]) -> None:
        task = asyncio.create_task(self._carry_out(row), name=f"goalstream-regulation-{row['id']}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- carrying it out ---------------------------------------------------------------------

    async def _save(self, row: dict[str, Any]) -> None:
        # Versions only grow, also within one millisecond and across restarts.
        self._version = max(self._version + 1, time.time_ns())
        values = [
            row["id"], row["workspace"], row["customer_id"], list(row["ids"]), int(row["suppress"]), row["requested_by"],
            model.from_ms(row["requested_ms"]), row["state"], dict(row["removed"]),
            None if row.get("completed_ms") is None else model.from_ms(row["completed_ms"]), row.get("error") or "",
            self._version,
        ]
        # The insert first: the list this process obeys never runs ahead of the table.
        await retries.retry(
            lambda: self.warehouse.insert("regulations", [values], REGULATION_COLUMNS),
            what=f"storing regulation {row['id']}", backoff=retries.Backoff(attempts=6), retriable=retriable, logger=log,
        )
        self.forgotten.add({**row, "ids": list(row["ids"])})

    async def _carry_out(self, row: dict[str, Any]) -> None:
        async with self._lock:  # one at a time: two sweeps of one table never race
            started = time.monotonic()
            try:
                await retries.retry(
                    lambda: self._steps(row), what=f"regulation {row['id']}", backoff=retries.Backoff(first=2.0, attempts=5),
                    retriable=retriable, logger=log,
                )
            except asyncio.CancelledError:
                raise  # left as it is: carried out at the next start
            except Exception as exc:
                log.error("regulation %s failed: %s", row["id"], exc)
                row.update(state="failed", error=f"{type(exc).__name__}: {exc}"[:500])
                await self._save(row)
                return
            row.update(state="completed", completed_ms=model.now_ms(), error="")
            await self._save(row)
            log.info("regulation %s completed in %.1fs: %d rows removed", row["id"], time.monotonic() - started,
                     sum(row["removed"].values()))

    async def _steps(self, row: dict[str, Any]) -> None:
        ws = row["workspace"]
        ids = await person_ids(self.warehouse, ws, row["customer_id"], known=row["ids"])
        row.update(state="running", ids=sorted(ids))
        await self._save(row)
        # Every part has the ids within a refresh (so none folds old state into a new row
        # after the sweep); what a sink had already checked is caught by the second sweep.
        await asyncio.sleep(min(self.settle_s, 2 * REFRESH_S))
        # Suppressed, nothing of theirs may stay, whenever it was received; a plain forget
        # leaves what they send after the request.
        upto = row["requested_ms"] + (100 * 365 * 86_400_000 if row["suppress"] else 0)
        removed = await self.sweep(ws, sorted(ids), upto)
        await asyncio.sleep(self.settle_s)
        again = await self.sweep(ws, sorted(ids), upto)
        row["removed"] = {t: removed.get(t, 0) + again.get(t, 0) for t in SWEPT}

    async def sweep(self, ws: str, ids: list[str], upto_ms: int) -> dict[str, int]:
        """Remove every row of ``ids`` in workspace ``ws`` received up to ``upto_ms`` from every
        table; rows per table. Each statement can run again: a sweep cut short is done again.
        The whole sweep runs quiesced: an event of the person stored between the rollup's
        rebuild and the events' delete would otherwise stay counted in the rollup."""
        async with self.quiesce() if self.quiesce is not None else nullcontext():
            return await self._sweep(ws, ids, upto_ms)

    async def _sweep(self, ws: str, ids: list[str], upto_ms: int) -> dict[str, int]:
        w = self.warehouse
        removed: dict[str, int] = {}
        at = model.from_ms(upto_ms)
        params: dict[str, Any] = {"ws": ws, "ids": ids, "at": at}
        # The rollups first, rebuilt without the person while their rows still say which days
        # hold them (after the events were gone, nothing would).
        removed[REBUILT["events_daily_state"]] = await self._rebuild(
            _EVENT_DAYS_SQL, params, "events_daily_state", ("name", "day"),
            "SELECT workspace, name, toDate(timestamp) AS day, count() AS events, uniqState(person_id) AS people FROM events "
            "WHERE workspace = {ws:String} AND (name, toDate(timestamp)) IN {keys:Array(Tuple(String, Date))} "
            "AND NOT (" + _MINE + ") GROUP BY workspace, name, day",
        )
        # Distinct counts only: a goal state stored twice meanwhile changes nothing.
        removed[REBUILT["goal_cohorts_daily_state"]] = await self._rebuild(
            _COHORT_DAYS_SQL, params, "goal_cohorts_daily_state", ("goal", "cohort_day"),
            "SELECT workspace, goal, toDate(entered_at) AS cohort_day, uniqExactState(customer_id) AS entered, "
            "uniqExactStateIf(customer_id, status = 'reached') AS reached FROM goal_status "
            "WHERE workspace = {ws:String} AND (goal, toDate(entered_at)) IN {keys:Array(Tuple(String, Date))} "
            "AND customer_id NOT IN {ids:Array(String)} GROUP BY workspace, goal, cohort_day",
        )
        params["deliveries"] = [r["delivery_id"] for r in await w.rows(_DELIVERIES_SQL, params)]
        params["letters"] = await self._letters(ws, ids, at)
        for table, where in TABLES:
            if (table == "webhook_attempts" and not params["deliveries"]) or (table == "deadletters" and not params["letters"]):
                removed[table] = 0
                continue
            removed[table] = await self._delete(table, where, params)
        return removed

    async def _delete(self, table: str, where: str, params: dict[str, Any]) -> int:
        rows = await self.warehouse.rows(f"SELECT count() AS n FROM {table} WHERE {where}", params)
        n = int(rows[0]["n"]) if rows else 0
        if n:
            # Lightweight DELETE: the rows are gone for every query at once and from disk at the
            # parts' next merge (a server and chDB alike; a mutation would rewrite whole parts).
            await self.warehouse.command(f"DELETE FROM {table} WHERE {where}", params)
        return n

    async def _rebuild(self, days_sql: str, params: dict[str, Any], state: str, key: tuple[str, str], select: str) -> int:
        """Rebuild ``state``'s rows whose (``key``) ``days_sql`` names from ``select``; the rows replaced."""
        column, day = key
        keys = [(r[column], r["day"]) for r in await self.warehouse.rows(days_sql, params)]
        if not keys:
            return 0
        p = {**params, "keys": keys}
        where = f"workspace = {{ws:String}} AND ({column}, {day}) IN {{keys:Array(Tuple(String, Date))}}"
        n = await self._delete(state, where, p)
        await self.warehouse.command(f"INSERT INTO {state} {select}", p)
        return n

    async def _letters(self, ws: str, ids: list[str], at: Any) -> list[str]:
        found: list[str] = []
        wanted = set(ids)
        for start in range(0, len(ids), 200):  # multiSearchAny takes at most 255 needles
            chunk = ids[start : start + 200]
            for r in await self.warehouse.rows(_LETTERS_SQL, {"ids": chunk, "at": at, "ws": ws}):
                workspace, quoted_ids, _ = quoted(r)
                if workspace in (ws, None) and quoted_ids & wanted:
                    found.append(r["id"])
        return sorted(set(found))


async def person_ids(reader: Any, ws: str, customer_id: str, known: Any = ()) -> set[str]:
    """Every id that is this person: what ``customer_id`` was merged into (the person it is
    part of now), every id merged or aliased into them (merges of merges too), and the
    anonymous ids their events were identified with; ``known``: ids found before (a run
    resumed after a stop keeps what it had found)."""
    ids = {customer_id, *known}
    current = customer_id
    for _ in range(MAX_ROUNDS):
        rows = await reader.rows(_UP_SQL, {"ws": ws, "id": current})
        up = rows[0]["customer_id"] if rows else None
        if not up or up in ids:
            break
        ids.add(up)
        current = up
    frontier = set(ids)
    for _ in range(MAX_ROUNDS):
        p = {"ws": ws, "ids": sorted(frontier)}
        found = {r["id"] for r in await reader.rows(_MERGED_SQL, p)} | {r["id"] for r in await reader.rows(_ANON_SQL, p)}
        frontier = {i for i in found if i and i not in ids}
        if not frontier:
            break
        ids |= frontier
    return ids
