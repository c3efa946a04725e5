"""Who is forgotten: the data-subject regulations every part of the pipeline obeys.

Flow: ``goalstream forget`` / ``POST /admin/v1/forget`` -> a row in ClickHouse ``regulations``
(``stream_processors.forget.Regulator``) -> every part that could store or send something
about a person holds a ``Forgotten`` and refreshes it from that table every ``REFRESH_S``
(through whatever reads ClickHouse for it: the warehouse, or the stack over IPC) ->
- the gateway refuses (or accepts and discards) records for a *suppressed* person;
- the sinks drop every record for a forgotten person received up to the request (what was
  in flight: the broker's backlog, the spool, a replay of old raw records), and every later
  one too when the person is suppressed;
- the scorer and the webhook dispatcher hold back everything for the person while the
  regulation runs, and for ever when suppressed.

The table is the one source of truth: it is durable on the embedded stack (the embedded
broker forgets everything on a restart) and shared by every worker of a scaled-out one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, urlsplit

import orjson

from . import codec, model

log = logging.getLogger("goalstream.regulations")

REFRESH_S = 1.0  # how stale a part's list may be; the regulator's settle time is built on it
STATES = ("pending", "running", "completed", "failed")

# Every version of every regulation, newest first: small (one row per request), read whole.
LOAD_SQL = (
    "SELECT id, workspace, customer_id, ids, suppress, toUnixTimestamp64Milli(requested_at) AS requested_ms, state "
    "FROM regulations FINAL"
)


@dataclass(frozen=True)
class Entry:
    """One forgotten id's regulation: ``requested_ms`` when it was asked for; ``done`` once
    every store was swept."""

    regulation: str
    requested_ms: int
    suppress: bool
    done: bool


class Forgotten:
    """The forgotten ids per workspace, as of the last refresh (or a regulation made here).

    Checks are dictionary lookups and cost nothing while no regulation exists (``any``)."""

    def __init__(self) -> None:
        self.by_ws: dict[str, dict[str, Entry]] = {}
        self.rows: dict[str, dict[str, Any]] = {}  # the regulations it was built from, by id
        self.loaded = False  # read from the table at least once
        self.listeners: list[Callable[[dict[str, set[str]]], None]] = []
        self._task: asyncio.Task | None = None

    # -- what the parts ask -----------------------------------------------------------------

    @property
    def any(self) -> bool:
        return bool(self.by_ws)

    def entry(self, workspace: str, person: str) -> Entry | None:
        ids = self.by_ws.get(workspace)
        return ids.get(person) if ids and person else None

    def blocks(self, workspace: str, persons: Iterable[str], received_ms: int | None) -> bool:
        """Whether a record about ``persons`` received at ``received_ms`` must not be stored:
        one of them is suppressed, or was forgotten by a request made at or after it arrived
        (None: its arrival is unknown, so it counts as before the request)."""
        ids = self.by_ws.get(workspace)
        if not ids:
            return False
        for p in persons:
            e = ids.get(p) if p else None
            if e is not None and (e.suppress or received_ms is None or received_ms <= e.requested_ms):
                return True
        return False

    def holds(self, workspace: str, persons: Iterable[str], at_ms: int | None = None) -> bool:
        """Whether nothing about ``persons`` may be scored or sent now: suppressed, or their
        regulation is still running, or (``at_ms``: when the thing to send was made) it was
        made before the request."""
        ids = self.by_ws.get(workspace)
        if not ids:
            return False
        for p in persons:
            e = ids.get(p) if p else None
            if e is not None and (e.suppress or not e.done or (at_ms is not None and at_ms <= e.requested_ms)):
                return True
        return False

    def suppressed(self, workspace: str, person: str) -> bool:
        e = self.entry(workspace, person)
        return e is not None and e.suppress

    # -- keeping it fresh -------------------------------------------------------------------

    def on_forgotten(self, listener: Callable[[dict[str, set[str]]], None]) -> None:
        """``listener({workspace: ids})`` with every id newly forgotten (caches drop them)."""
        self.listeners.append(listener)

    def update(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace the list with ``rows`` (LOAD_SQL's); tell the listeners what is new."""
        rows = {r["id"]: r for r in rows}
        if rows == self.rows:
            return  # every part refreshes every second: nothing changed, nothing to rebuild
        self.rows = rows
        by_ws: dict[str, dict[str, Entry]] = {}
        for r in self.rows.values():
            entry = Entry(r["id"], int(r["requested_ms"]), bool(r["suppress"]), r["state"] == "completed")
            ids = by_ws.setdefault(r["workspace"], {})
            for person in {r["customer_id"], *r["ids"]}:
                if not person:
                    continue
                old = ids.get(person)
                # Of two regulations of one id: suppression wins, then the later request.
                if old is None or (entry.suppress, entry.requested_ms) > (old.suppress, old.requested_ms):
                    ids[person] = entry
        new: dict[str, set[str]] = {}
        for ws, ids in by_ws.items():
            before = self.by_ws.get(ws, {})
            fresh = {p for p, e in ids.items() if p not in before or before[p].regulation != e.regulation}
            if fresh:
                new[ws] = fresh
        self.by_ws = by_ws
        for listener in self.listeners if new else ():
            try:
                listener(new)
            except Exception:  # a listener's bug must not stop the list from being kept
                log.exception("a forgotten-ids listener failed")

    def add(self, row: dict[str, Any]) -> None:
        """A regulation made (or moved on) in this process: in force here at once."""
        self.update([*(r for i, r in self.rows.items() if i != row["id"]), row])

    async def refresh(self, reader: Any) -> None:
        self.update(await reader.rows(LOAD_SQL))
        self.loaded = True

    async def ready(self, reader: Any) -> None:
        """Read the table now unless it was read before (a part about to store or send its
        first record calls this: it raises, and so waits, while ClickHouse is away)."""
        if not self.loaded:
            await self.refresh(reader)

    def start(self, reader: Any, interval_s: float = REFRESH_S) -> None:
        """Refresh from ``reader`` every ``interval_s`` until ``stop`` (a failed read keeps the
        last list: a forgotten id is never un-forgotten by an outage)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(reader, interval_s), name="goalstream-forgotten")

    async def _run(self, reader: Any, interval_s: float) -> None:
        warned = False
        while True:
            try:
                await self.refresh(reader)
                warned = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not warned:
                    log.warning("could not read the regulations (%s); keeping the last list", type(exc).__name__)
                    warned = True
            await asyncio.sleep(interval_s)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# -- what a record or a dead letter is about ------------------------------------------------

def persons_of(record: dict[str, Any]) -> list[str]:
    """The ids a canonical record (event, customer record, merge) is about."""
    return [p for p in (record.get("customer_id"), record.get("anonymous_id"), record.get("merged_id")) if p]


def record_persons(schema: str, record: dict[str, Any]) -> tuple[str, ...]:
    """The ids a record counts for: an event, its customer (else its anonymous id: the
    events' ``person_id``); a customer record, its customer and a merge's merged id."""
    if schema == model.EVENT:
        return (record.get("customer_id") or record.get("anonymous_id") or "",)
    return tuple(persons_of(record))


# Keys under which the dialects' payloads name a person (Segment, Customer.io, Traitly,
# Retainly, trigger.ly), compared lower-case without "_" and "$".
_ID_KEYS = {"customerid", "userid", "anonymousid", "previousid", "mergedid", "distinctid", "id", "cioid", "primary", "secondary"}


def _strings_under_id_keys(obj: Any, out: set[str], depth: int = 0) -> None:
    if depth > 12:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (str, int)) and not isinstance(v, bool) and isinstance(k, str):
                if k.lower().replace("_", "").replace("$", "") in _ID_KEYS:
                    out.add(str(v))
            else:
                _strings_under_id_keys(v, out, depth + 1)
    elif isinstance(obj, list):
        for v in obj:
            _strings_under_id_keys(v, out, depth + 1)


def _json_ids(text: bytes | str, out: set[str]) -> bool:
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    _strings_under_id_keys(obj, out)
    return True


def quoted(letter: dict[str, Any]) -> tuple[str | None, set[str], int | None]:
    """What a dead letter quotes: (workspace, ids, when the quoted record was received).

    From its key (``workspace:customer_id``), its value decoded with the schema its headers
    name, or, for a refused request kept by the gateway, its JSON body or its query string
    (trigger.ly's base64 ``data`` too)."""
    ids: set[str] = set()
    workspace: str | None = None
    received: int | None = None
    key = letter.get("key")
    if isinstance(key, str):
        key = key.encode(errors="surrogateescape")
    if (parts := model.key_parts(key)) is not None:
        workspace = parts[0]
        if parts[1]:
            ids.add(parts[1])
    value = letter.get("value")
    if isinstance(value, str):
        value = value.encode(errors="surrogateescape")
    headers = letter.get("headers") or {}
    if value:
        hdrs = [(k, v.encode(errors="surrogateescape") if isinstance(v, str) else v) for k, v in headers.items()]
        try:
            _, record = codec.decode(value, hdrs, logical=False)
        except Exception:  # not one of our records: a raw request, or bytes nobody can read
            record = None
        if isinstance(record, dict):
            workspace = record.get("workspace") or workspace
            ids.update(persons_of(record))
            r = record.get("received_at")
            received = r if isinstance(r, int) else None
        elif not _json_ids(value, ids):
            _query_ids(value, ids)
    stage = letter.get("stage") or ""
    path_qs = headers.get("path_qs")
    if stage.startswith("gateway:") and path_qs:
        _query_ids(path_qs.encode(errors="surrogateescape") if isinstance(path_qs, str) else path_qs, ids)
    return workspace, ids, received


def _query_ids(raw: bytes, out: set[str]) -> None:
    try:
        text = raw.decode("utf-8", errors="replace")
        query = urlsplit(text).query or (text if "=" in text else "")
        for k, v in parse_qsl(query, keep_blank_values=True):
            if k.lower().replace("_", "") in _ID_KEYS:
                out.add(v)
            if not v:
                continue
            if v.lstrip().startswith(("{", "[")):
                _json_ids(v, out)
                continue
            try:
                decoded = base64.b64decode(v + "=" * (-len(v) % 4), altchars=b"-_" if ("-" in v or "_" in v) else None)
            except (binascii.Error, ValueError):
                continue
            if decoded.lstrip().startswith((b"{", b"[")):
                _json_ids(decoded, out)
    except Exception:  # a dead letter is whatever failed: reading it must never fail the sweep
        return
