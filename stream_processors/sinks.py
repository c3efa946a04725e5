"""The Sinks: decoded batches into ClickHouse, one writer per table.

``EventsSink``: ``goalstream.events`` items -> ``events``.
``CustomersSink``: ``goalstream.customers`` items -> customer state (``customers.apply``
and ``customers.merge``) -> ``customers`` and ``customer_merges``.
``DeadLettersSink``: ``goalstream.deadletter`` items -> ``deadletters`` (the embedded
broker keeps nothing across restarts; ClickHouse does).

Every insert carries an ``insert_deduplication_token`` derived from the batch's offsets
and message ids (``batch_token``): a batch replayed after a crash is not stored twice, and
a broker restart that reuses offsets (the embedded broker keeps nothing) cannot collide
with an earlier batch because the message ids differ. Scoring is not here: the scoring
stage (``scoring.stage``) reads the same topics and rescores what these sinks stored.

Customer state is cached in memory per worker and rebuilt from ClickHouse on a miss (the
latest version, deleted or not), never from Kafka, so a broker restart with empty topics
cannot make merges go wrong. The owner drops the cache (``clear``) whenever partitions
are revoked.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import OrderedDict
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import orjson

from schemas import codec, metrics, model
from schemas.regulations import Forgotten, persons_of, quoted, record_persons
from schemas.warehouse import Warehouse

from . import customers as cust
from .errors import BadRecord
from .runtime import Item, headers_of
from .storedids import EXISTING_SQL, SEED_SQL as STORED_SEED_SQL, StoredIds, key_hashes

_LEADING = ("message_id", "workspace")
EVENT_COLUMNS = ("message_id", "workspace", "customer_id", "anonymous_id", "name", "timestamp", "received_at", "properties", "source")
MERGE_COLUMNS = ("workspace", "customer_id", "merged_id", "kind", "source", "message_id", "merged_at")
DEADLETTER_COLUMNS = (
    "id", "reason", "stage", "source_topic", "source_partition", "source_offset", "key", "value", "headers", "failed_at",
)

def batch_token(stage: str, messages: Sequence[Any], ids: Iterable[str]) -> str:
    # Unchanged across versions (a test pins it): a batch stored before an upgrade and
    # replayed after it must still be recognised.
    h = hashlib.blake2b(digest_size=16)
    for m in messages:
        h.update(f"{m.topic}/{m.partition}/{m.offset};".encode())
    for i in ids:
        h.update(i.encode())
        h.update(b"\0")
    return f"{stage}-{h.hexdigest()}"


def _resent(message: Any) -> bool:
    return any(k == codec.RESENT_HEADER for k, _ in headers_of(message))


class RecentIds:
    """The last ``limit``..``limit``/2 ids added, in two generations of sets: membership and
    adding are C-speed set operations (an OrderedDict trimmed one by one cost 13% of the
    events sink); when the newer generation is full it becomes the older one."""

    def __init__(self, limit: int):
        self.half = max(1, limit // 2)
        self.new: set = set()
        self.old: set = set()

    def __contains__(self, key: object) -> bool:
        return key in self.new or key in self.old

    def __len__(self) -> int:
        return len(self.new) + len(self.old)

    def update(self, keys: Iterable) -> None:
        self.new.update(keys)
        if len(self.new) >= self.half:
            self.old, self.new = self.new, set()


def _trim(cache: OrderedDict, limit: int) -> None:
    while len(cache) > limit:
        cache.popitem(last=False)


def _forgotten_dropped(stage: str, n: int) -> None:
    if n:
        metrics.FORGOTTEN_RECORDS.labels(stage).inc(n)


# What a sink that starts (or is handed partitions) remembers first: the ids ClickHouse stored
# last, whichever worker stored them, so a resend or a replay is recognised across restarts.
# The day bound keeps the sort to recent rows; the window's size bounds what is kept.
SEED_SQL = (
    "SELECT workspace, message_id FROM events WHERE inserted_at >= now64(3) - INTERVAL 1 DAY "
    "ORDER BY inserted_at DESC LIMIT {n:UInt32}"
)


class EventsSink:
    """One row per (workspace, message_id) in ``events``: an id is dropped when this batch
    already has it, when it was stored recently (``seen``, the last ``dedup_window`` ids,
    exact and free), or when ``events`` holds it from any time before (``stored``, a Bloom
    filter of every id stored, confirmed in ClickHouse: ``storedids``)."""

    def __init__(self, warehouse: Warehouse, *, dedup_window: int, exact: bool = True, forgotten: Forgotten | None = None):
        self.warehouse = warehouse
        self.forgotten = forgotten  # records of a forgotten person are dropped here, before anything else
        self.dedup_window = dedup_window
        self.exact = exact
        self.seen = RecentIds(dedup_window)  # recent (workspace, message_id)
        self.stored: StoredIds | None = None
        self._seeded = not (dedup_window or exact)
        # Held by a regulation while it rebuilds the daily rollup (``forget.Regulator.quiesce``):
        # no batch is stored meanwhile, so no event is counted twice.
        self.paused = asyncio.Lock()

    def reseed(self, _assigned: Any = None) -> None:
        """Read the stored ids again before the next write (partitions were assigned: what
        they carry next may resend what another worker stored)."""
        self._seeded = not (self.dedup_window or self.exact)

    async def _seed(self) -> None:
        # Inside the write, so a ClickHouse that is away fails the batch into the runtime's retries.
        if self.dedup_window:
            raw = await self.warehouse.raw(SEED_SQL, "JSONCompactEachRow", {"n": self.dedup_window})
            keys = [tuple(orjson.loads(line)) for line in raw.splitlines() if line]
            keys.reverse()  # oldest first: the newest stay longest
            self.seen.update(keys)
        if self.exact:
            hashes = np.frombuffer(await self.warehouse.raw(STORED_SEED_SQL, "RowBinary"), dtype="<u4")
            capacity = 2 * self.stored.count if self.stored is not None and self.stored.full else 0
            # ~2 s for 10M ids: off the loop.
            self.stored = await asyncio.get_running_loop().run_in_executor(
                None, lambda: StoredIds(hashes, capacity=capacity)
            )
        self._seeded = True

    async def _absent(self, kept: list[Any], fresh: dict[tuple[str, str], None]) -> tuple[list[Any], dict[tuple[str, str], None], Any]:
        """Of ``_unseen``'s payloads and ids, those ``events`` does not hold, and their hashes
        (``_remember`` adds them to ``stored`` once inserted)."""
        if self.stored is None or not fresh:
            return kept, fresh, None
        keys = list(fresh)
        hashes = key_hashes(keys)
        maybe = self.stored.maybe(hashes)
        if not maybe.any():
            return kept, fresh, hashes
        by_ws: dict[str, list[str]] = {}
        for (ws, mid), m in zip(keys, maybe.tolist()):
            if m:
                by_ws.setdefault(ws, []).append(mid)
        found = set()
        for ws, mids in by_ws.items():
            rows = await self.warehouse.rows(EXISTING_SQL, {"ws": ws, "ids": mids})
            found.update((ws, r["message_id"]) for r in rows)
        if not found:
            return kept, fresh, hashes
        keep = [k not in found for k in keys]
        self.seen.update(found)  # a resend of a resend needs no lookup
        return (
            [p for p, k in zip(kept, keep) if k],
            {key: None for key, k in zip(keys, keep) if k},
            hashes[np.array(keep, dtype=bool)],
        )

    def _unseen(self, keyed: Iterable[tuple[tuple[str, str], Any]]) -> tuple[list[Any], dict[tuple[str, str], None]]:
        """A client that resends (same Segment messageId, Customer.io event id) gets its event
        stored once: of (``(workspace, message_id)``, payload) pairs, the payloads whose ids were
        not seen recently nor earlier in this batch, and those ids (``_remember`` them once stored)."""
        seen, fresh, kept = self.seen, {}, []
        for k, payload in keyed:
            if k in seen or k in fresh:
                continue
            fresh[k] = None
            kept.append(payload)
        return kept, fresh

    def _remember(self, fresh: dict[tuple[str, str], None], hashes: Any) -> None:
        if self.dedup_window:
            self.seen.update(fresh)
        if self.stored is not None and hashes is not None:
            self.stored.add(hashes)
            if self.stored.full:
                self._seeded = False  # rebuilt at twice the size before the next write

    async def write(self, batch: Sequence[Item]) -> None:
        async with self.paused:
            await self._write(batch)

    async def _write(self, batch: Sequence[Item]) -> None:
        if not self._seeded:
            await self._seed()
        if self.forgotten is not None:
            await self.forgotten.ready(self.warehouse)
        items: Sequence[Item] = batch
        if (f := self.forgotten) is not None and f.any:
            items = [i for i in batch
                     if not f.blocks(i.record["workspace"], record_persons(model.EVENT, i.record), model.to_ms(i.record["received_at"]))]
            _forgotten_dropped("events-sink", len(batch) - len(items))
        kept, fresh = self._unseen(((i.record["workspace"], i.record["message_id"]), i.record) for i in items)
        kept, fresh, hashes = await self._absent(kept, fresh)
        # The token covers the whole batch, so a replay of it is recognised however it filters.
        token = batch_token("events", [i.message for i in batch], (i.record["message_id"] for i in batch))
        if kept:
            # Column by column (no transposition in the client); timestamps stay int ms.
            columns = [[r[c] for r in kept] for c in EVENT_COLUMNS]
            await self.warehouse.insert("events", columns, EVENT_COLUMNS, token, column_oriented=True)
        self._remember(fresh, hashes)

    async def write_raw(self, batch: Sequence[tuple[Any, codec.Schema]]) -> None:
        async with self.paused:
            await self._write_raw(batch)

    async def _write_raw(self, batch: Sequence[tuple[Any, codec.Schema]]) -> None:
        """The same, with ClickHouse decoding the Avro (``FORMAT Avro`` over the messages'
        own bytes): only ``message_id`` and ``workspace`` are read here, for the dedup."""
        schema = batch[0][1]
        if any(s is not schema for _, s in batch[1:]) or not codec.leads_with_strings(schema, _LEADING):
            raise BadRecord("not one events schema leading with message_id, workspace: decode it")
        if not self._seeded:
            await self._seed()
        if self.forgotten is not None:
            await self.forgotten.ready(self.warehouse)
        ids: list[str] = []
        f = self.forgotten if self.forgotten is not None and self.forgotten.any else None
        dropped = 0

        def keyed() -> Iterator[tuple[tuple[str, str], bytes]]:
            # One pass reads each id, notes it for the token and offers it to the dedup (no
            # intermediate lists: this is the drain's hot loop).
            nonlocal dropped
            read = codec.leading_strings
            for m, _ in batch:
                message_id, workspace = read(m.value, 2)
                ids.append(message_id)
                if f is not None and workspace in f.by_ws and self._forgotten_raw(f, workspace, m.value, schema):
                    dropped += 1
                    continue
                yield (workspace, message_id), m.value

        try:
            kept, fresh = self._unseen(keyed())
        except codec.SchemaError as exc:
            raise BadRecord(str(exc)) from None
        _forgotten_dropped("events-sink", dropped)
        kept, fresh, hashes = await self._absent(kept, fresh)
        # What ``write`` derives for the same batch.
        token = batch_token("events", [m for m, _ in batch], ids)
        if kept:
            await self.warehouse.insert_avro("events", codec.container(schema, kept), EVENT_COLUMNS, token, rows=len(kept))
        self._remember(fresh, hashes)


    @staticmethod
    def _forgotten_raw(f: Forgotten, workspace: str, value: bytes, schema: codec.Schema) -> bool:
        """Whether an event of a workspace with forgotten ids is one of theirs (the rest of
        the record is decoded only when its person is on the list)."""
        _, _, customer_id, anonymous_id = codec.leading_strings(value, 4)
        person = customer_id or anonymous_id
        if f.entry(workspace, person) is None:
            return False
        record = codec.decode_as(schema, value, logical=False)
        return f.blocks(workspace, (person,), model.to_ms(record["received_at"]))


class CustomersSink:
    def __init__(self, warehouse: Warehouse, *, cache_size: int, forgotten: Forgotten | None = None):
        self.warehouse = warehouse
        self.cache_size = cache_size
        self.cache: OrderedDict[tuple[str, str], cust.CustomerState] = OrderedDict()
        self.forgotten = forgotten
        if forgotten is not None:
            forgotten.on_forgotten(self.drop)

    def clear(self) -> None:
        self.cache.clear()

    def drop(self, forgotten: dict[str, set[str]]) -> None:
        """Forgotten customers leave the cache: a later record must not bring back their state."""
        for ws, ids in forgotten.items():
            for i in ids:
                self.cache.pop((ws, i), None)

    async def _load(self, keys: set[tuple[str, str]]) -> dict[tuple[str, str], cust.CustomerState]:
        by_ws: dict[str, list[str]] = {}
        for ws, cid in keys:
            by_ws.setdefault(ws, []).append(cid)
        found: dict[tuple[str, str], cust.CustomerState] = {}
        for ws, ids in by_ws.items():
            rows = await self.warehouse.rows(
                f"SELECT {', '.join(cust.COLUMNS)} FROM customers WHERE workspace = {{ws:String}} "
                "AND customer_id IN {ids:Array(String)} ORDER BY version DESC LIMIT 1 BY customer_id",
                {"ws": ws, "ids": ids},
            )
            for row in rows:
                found[(ws, row["customer_id"])] = cust.CustomerState.from_row(row)
        return found

    async def write(self, batch: Sequence[Item]) -> None:
        token = batch_token("customers", [i.message for i in batch], (r["message_id"] for _, _, r in batch))
        f = self.forgotten
        if f is not None:
            await f.ready(self.warehouse)
        if f is not None and f.any:
            items = [i for i in batch if not f.blocks(i.record["workspace"], persons_of(i.record), model.to_ms(i.record["received_at"]))]
            _forgotten_dropped("customers-sink", len(batch) - len(items))
            batch = items
        keys = {(r["workspace"], r["customer_id"]) for _, _, r in batch}
        # A merge also changes the merged customer, which may live on another partition.
        keys |= {(r["workspace"], r["merged_id"]) for _, schema, r in batch if schema == model.CUSTOMER_MERGE}
        states: dict[tuple[str, str], cust.CustomerState | None] = {k: self.cache.get(k) for k in keys}
        # A person being forgotten who sends again starts from nothing: what ClickHouse still
        # holds of them is about to be swept, and must not be folded into the new state.
        anew = {k for k in keys if f is not None and (e := f.entry(*k)) is not None and not e.done} if f is not None and f.any else set()
        for k in anew:
            states[k] = None
        missing = {k for k, v in states.items() if v is None and k not in anew}
        if missing:
            states.update(await self._load(missing))
        touched: dict[tuple[str, str], cust.CustomerState] = {}
        merges: list[list[Any]] = []
        for _msg, schema, r in batch:
            k = (r["workspace"], r["customer_id"])
            if schema == model.CUSTOMER_MERGE:
                if r["merged_id"] == r["customer_id"]:
                    continue
                m = (r["workspace"], r["merged_id"])
                primary, secondary = cust.merge(states.get(k), states.get(m), r)
                states[k] = touched[k] = primary
                if secondary is not None:
                    states[m] = touched[m] = secondary
                merges.append([r["workspace"], r["customer_id"], r["merged_id"], r["kind"], r["source"], r["message_id"], r["received_at"]])
                continue
            if schema == model.CUSTOMER_ARRAYS and _resent(_msg) and cust.applied(states.get(k), r):
                # Appending an item without an id twice would double it; everything else is
                # idempotent when the spool sends a suffix of the customer's records again.
                continue
            new = cust.apply(states.get(k), schema, r)
            if new is not None:
                states[k] = touched[k] = new
        if touched:
            await self.warehouse.insert("customers", [s.row() for s in touched.values()], cust.COLUMNS, token)
        if merges:
            # After the customers: a replay re-sends both, and each insert is deduplicated by its token.
            await self.warehouse.insert("customer_merges", merges, MERGE_COLUMNS, token + "-merges")
        # Only now, with the rows stored, does the cache move forward.
        for k, state in touched.items():
            self.cache[k] = state
            self.cache.move_to_end(k)
        _trim(self.cache, self.cache_size)


class DeadLettersSink:
    """Dead letters into ClickHouse. There is nowhere further to send one that fails, so
    the runtime retries until ClickHouse takes the batch; a message that is not a
    DeadLetter record is stored too, raw, with that as its reason (``rescue``)."""

    def __init__(self, warehouse: Warehouse, forgotten: Forgotten | None = None):
        self.warehouse = warehouse
        self.forgotten = forgotten

    def _quotes_forgotten(self, record: dict[str, Any]) -> bool:
        assert self.forgotten is not None
        workspace, ids, received = quoted(record)
        if workspace is None or not ids:
            return False
        return self.forgotten.blocks(workspace, ids, received if received is not None else model.to_ms(record["failed_at"]))

    @staticmethod
    def rescue(message: Any, reason: str) -> Item:
        # A deterministic id, so a replayed batch keeps its deduplication token.
        raw_id = hashlib.blake2b((message.value or b"") + f"/{message.partition}/{message.offset}".encode(), digest_size=16).hexdigest()
        record = {
            "id": raw_id, "reason": f"undecodable dead letter: {reason}", "stage": "deadletters-sink",
            "source_topic": message.topic, "source_partition": message.partition, "source_offset": message.offset,
            "key": message.key, "value": message.value, "headers": dict(headers_of(message)), "failed_at": model.now_ms(),
        }
        return Item(message, model.DEAD_LETTER, record)

    async def write(self, batch: Sequence[Item]) -> None:
        rows = [[r[c] for c in DEADLETTER_COLUMNS] for _, _, r in batch]
        token = batch_token("deadletters", [i.message for i in batch], (str(r[0]) for r in rows))
        if self.forgotten is not None:
            await self.forgotten.ready(self.warehouse)
        if self.forgotten is not None and self.forgotten.any:
            keep = [not self._quotes_forgotten(i.record) for i in batch]
            _forgotten_dropped("deadletters-sink", keep.count(False))
            rows = [r for r, k in zip(rows, keep) if k]
        if not rows:
            return
        await self.warehouse.insert("deadletters", rows, DEADLETTER_COLUMNS, token)
