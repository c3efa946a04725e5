"""ClickHouse access for every service: one client, called off the event loop.

Queries and batched inserts go through ``Warehouse``, which runs clickhouse-connect's
sync client in a worker thread (chDB, the embedded engine, has no async client and must
never block the loop). Reads (``rows``) have a client and thread of their own, so the
scorer's queries never queue the sinks' inserts behind them (nor the other way round). Admin SQL has a lane of its own (``Warehouse.admin``): other
clients on the same database, in other threads, at most ``admin_concurrency`` at once
(more are refused at once with ``WarehouseBusy``), so an analyst's 10-second query never
queues ingestion or the API behind it. ``migrate`` applies the versioned DDL files in
``schemas/clickhouse/`` once each, recording them in ``schema_migrations``.
"""

from __future__ import annotations

import asyncio
import time
import logging
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import clickhouse_connect

from . import metrics

DDL_DIR = Path(__file__).parent / "clickhouse"
_DDL_FILE = re.compile(r"^(\d{4})_[\w-]+\.sql$")
log = logging.getLogger("goalstream.warehouse")
# The tables whose retention is configurable (settings.CommonSettings.retention), and the
# time their TTL counts from.
RETENTION_COLUMNS = {"propensity_scores": "scored_at", "webhook_attempts": "attempted_at", "deadletters": "failed_at"}
_TTL_DAYS = re.compile(r"\bTTL\b.*?toIntervalDay\((\d+)\)")


class WarehouseError(Exception):
    """ClickHouse refused or failed a query; ``retriable`` says whether trying again may help."""

    def __init__(self, message: str, retriable: bool = True):
        super().__init__(message)
        self.retriable = retriable


class WarehouseBusy(WarehouseError):
    """Every admin-lane slot is taken: try again shortly."""


T = TypeVar("T")


def migrations() -> list[tuple[int, str, list[str]]]:
    out = []
    for path in sorted(DDL_DIR.glob("*.sql")):
        m = _DDL_FILE.match(path.name)
        if not m:
            raise WarehouseError(f"DDL file {path.name} is not named NNNN_name.sql", retriable=False)
        text = "\n".join(line for line in path.read_text().splitlines() if not line.strip().startswith("--"))
        statements = [s.strip() for s in text.split(";") if s.strip()]
        out.append((int(m[1]), path.name, statements))
    return out


def normalize_dsn(dsn: str) -> str:
    """Make an embedded DSN absolute: ``chdb://./var/clickhouse`` -> ``chdb:///abs/var/clickhouse``.

    clickhouse-connect reads ``chdb://a/b`` as location ``a`` and database ``b``; goalstream's
    documented default is a path relative to the working directory, so resolve it here.
    """
    if not dsn.startswith("chdb://") or dsn.startswith("chdb:///"):
        return dsn
    rest = dsn[len("chdb://") :]
    if rest.split("/", 1)[0] in ("memory", ":memory:"):
        return dsn
    return "chdb://" + str(Path(rest).resolve())


def embedded_path(dsn: str) -> Path | None:
    dsn = normalize_dsn(dsn)
    return Path(dsn[len("chdb://") :]) if dsn.startswith("chdb:///") else None


class Warehouse:
    def __init__(self, dsn: str, admin_concurrency: int = 2):
        dsn = normalize_dsn(dsn)
        self.dsn = dsn
        self.embedded = dsn.startswith("chdb:")
        self._client: Any = None
        # chDB serialises calls on one handle anyway; a server takes a few in parallel.
        self._pool = ThreadPoolExecutor(max_workers=1 if self.embedded else 4, thread_name_prefix="clickhouse")
        self._read_client: Any = None
        self._read_pool = ThreadPoolExecutor(max_workers=1 if self.embedded else 4, thread_name_prefix="clickhouse-read")
        # Embedded, the reads share this machine's cores with the inserts: one thread each, so a
        # scoring query never takes every core from the sinks (a server has its own).
        self._read_settings = {"max_threads": 1} if self.embedded else None
        # The admin lane: one client per admin thread (a client is not shared across threads).
        self._admin_pool = ThreadPoolExecutor(max_workers=admin_concurrency, thread_name_prefix="clickhouse-admin")
        self._admin_slots = asyncio.Semaphore(admin_concurrency)
        self._admin_local = threading.local()
        self._admin_clients: list[Any] = []
        self._admin_lock = threading.Lock()
        # Column types per (table, columns), read once: clickhouse-connect would otherwise run
        # a DESCRIBE before every insert (migrations run before the first insert).
        self._column_types: dict[tuple[str, tuple[str, ...]], list[str]] = {}

    async def _run(self, fn, *args, _pool: ThreadPoolExecutor | None = None, **kwargs):
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(_pool or self._pool, lambda: fn(*args, **kwargs))
        except WarehouseError:
            raise
        except Exception as exc:
            raise WarehouseError(f"{type(exc).__name__}: {exc}") from exc

    async def open(self) -> "Warehouse":
        if (path := embedded_path(self.dsn)) is not None:
            path.mkdir(parents=True, exist_ok=True)
        self._client = await self._run(clickhouse_connect.get_client, dsn=self.dsn)
        self._read_client = await self._run(clickhouse_connect.get_client, dsn=self.dsn, _pool=self._read_pool)
        return self

    async def lane(self) -> "Warehouse":
        """Another client (and thread) on the same database, opened; the caller closes it.
        A part that writes a lot besides the hot sinks (the scorer, the dispatcher) takes
        one, so its inserts never queue the sinks' behind them on one thread."""
        return await Warehouse(self.dsn, admin_concurrency=1).open()

    async def close(self) -> None:
        self._admin_pool.shutdown(wait=True)
        with self._admin_lock:
            admin_clients, self._admin_clients = self._admin_clients, []
        for c in admin_clients:
            try:
                await self._run(c.close)
            except WarehouseError:
                pass
        if self._read_client is not None:
            client, self._read_client = self._read_client, None
            try:
                await self._run(client.close, _pool=self._read_pool)
            except WarehouseError:
                pass
        self._read_pool.shutdown(wait=True)
        if self._client is not None:
            client, self._client = self._client, None
            await self._run(client.close)
        self._pool.shutdown(wait=True)

    def _admin_client(self) -> Any:
        client = getattr(self._admin_local, "client", None)
        if client is None:
            client = clickhouse_connect.get_client(dsn=self.dsn)
            self._admin_local.client = client
            with self._admin_lock:
                self._admin_clients.append(client)
        return client

    async def admin(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` on the admin lane; raises WarehouseBusy at once when it is full.

        ``fn``'s own exceptions pass through unchanged (the caller knows what they mean)."""
        if self._client is None:
            raise WarehouseError("the warehouse is not open")
        if self._admin_slots.locked():
            raise WarehouseBusy("every admin query slot is busy")
        async with self._admin_slots:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._admin_pool, lambda: fn(self._admin_client()))

    @property
    def is_open(self) -> bool:
        return self._client is not None

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return await self._run(self._client.command, sql, parameters=parameters)

    async def rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        def query() -> list[dict[str, Any]]:
            return list(self._read_client.query(sql, parameters=parameters, settings=self._read_settings).named_results())

        return await self._run(query, _pool=self._read_pool)

    async def columns(
        self, sql: str, parameters: dict[str, Any] | None = None, settings: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """A numeric result as one numpy array per column (name -> array), read in column
        blocks on the read lane: a few bytes per value, never a Python object per row.
        ``settings`` are added to the read lane's own (``max_threads``: 1 embedded)."""
        import numpy as np

        def query() -> dict[str, Any]:
            merged = {**(self._read_settings or {}), **(settings or {})} or None
            parts: dict[str, list[Any]] = {}
            with self._read_client.query_column_block_stream(sql, parameters=parameters, settings=merged) as stream:
                names = list(stream.source.column_names)
                for block in stream:
                    for name, col in zip(names, block):
                        parts.setdefault(name, []).append(np.asarray(col))
            return {n: np.concatenate(parts[n]) if parts.get(n) else np.array([]) for n in names}

        return await self._run(query, _pool=self._read_pool)

    async def raw(self, sql: str, fmt: str, parameters: dict[str, Any] | None = None, *, readonly: bool = False) -> bytes:
        # A server enforces readonly per query; chDB would keep the setting for the whole
        # session (and refuse our own inserts after it), so there the caller's SQL check is it.
        settings = {"readonly": 1} if readonly and not self.embedded else None
        return await self._run(self._client.raw_query, sql, parameters=parameters, fmt=fmt, settings=settings)

    async def insert(
        self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], dedup_token: str | None = None,
        *, column_oriented: bool = False,
    ) -> None:
        """Insert ``rows`` (or, ``column_oriented``, one sequence per column: what the hot
        sinks build, saving the transposition) in one block; ``dedup_token`` makes a repeat
        of the same insert a no-op."""
        if not rows or (column_oriented and not rows[0]):
            return
        settings = {"insert_deduplication_token": dedup_token} if dedup_token else None
        started = time.perf_counter()
        await self._run(self._insert, table, rows, tuple(columns), settings, column_oriented)
        metrics.INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        metrics.INSERT_ROWS.labels(table).observe(len(rows[0]) if column_oriented else len(rows))

    async def insert_avro(
        self, table: str, container: bytes, columns: Sequence[str], dedup_token: str | None = None, *, rows: int | None = None,
    ) -> None:
        """Insert an Avro object container (``codec.container``): ClickHouse decodes it, with
        the writer's schema in its header, into ``columns`` (the record's fields, by name).
        ``rows``: how many it holds, for the batch-size metric."""
        settings = {"insert_deduplication_token": dedup_token} if dedup_token else None
        started = time.perf_counter()
        await self._run(self._client.raw_insert, table, list(columns), container, settings=settings, fmt="Avro")
        metrics.INSERT_SECONDS.labels(table).observe(time.perf_counter() - started)
        if rows is not None:
            metrics.INSERT_ROWS.labels(table).observe(rows)

    def _insert(self, table: str, data: Sequence[Sequence[Any]], columns: tuple[str, ...], settings: Any, column_oriented: bool) -> None:
        types = self._column_types.get((table, columns))
        if types is None:
            described = {r[0]: r[1] for r in self._client.query(f"DESCRIBE TABLE {table}").result_rows}
            types = self._column_types[(table, columns)] = [described[c] for c in columns]
        self._client.insert(
            table, data, column_names=list(columns), column_type_names=types, settings=settings, column_oriented=column_oriented
        )

    async def ping(self) -> bool:
        try:
            await self.command("SELECT 1")
            return True
        except WarehouseError:
            return False

    async def migrate(self, upto: int | None = None) -> list[str]:
        """Apply the DDL files not applied yet (up to version ``upto``: tests build an older
        schema with it); returns the names applied now."""
        await self.command(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, "
            "applied_at DateTime DEFAULT now()) ENGINE = MergeTree ORDER BY version"
        )
        done = {r["version"] for r in await self.rows("SELECT version FROM schema_migrations")}
        applied = []
        for version, name, statements in migrations():
            if version in done or (upto is not None and version > upto):
                continue
            for statement in statements:
                await self.command(statement)
            await self.insert("schema_migrations", [[version, name]], ["version", "name"])
            log.info("applied ClickHouse migration %s", name)
            applied.append(name)
        return applied

    async def retain(self, days: dict[str, int]) -> list[str]:
        """Set each table's TTL to ``days[table]`` days of its time column (0: none), where it
        differs from what the table has; returns the tables changed. ClickHouse drops expired
        rows in its background merges (whole parts when a partition has expired)."""
        changed = []
        for table, n in days.items():
            column = RETENTION_COLUMNS[table]
            rows = await self.rows(
                "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}", {"t": table}
            )
            if not rows:
                continue
            m = _TTL_DAYS.search(rows[0]["engine_full"])
            if (int(m[1]) if m else 0) == n:
                continue
            if n:
                await self.command(f"ALTER TABLE {table} MODIFY TTL toDateTime({column}) + toIntervalDay({int(n)})")
            else:
                await self.command(f"ALTER TABLE {table} REMOVE TTL")
            log.info("retention of %s set to %s", table, f"{n} days" if n else "forever")
            changed.append(table)
        return changed
