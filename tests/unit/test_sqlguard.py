"""The admin SQL guard against a real chDB (the session ``warehouse``), on its admin lane.

Every probe of issue 9 is refused before anything runs; analyst queries run; a workspace
sees its own rows only, through tables, views, joins, unions, subqueries and errors.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from ingest_gateway import sqlguard
from schemas.warehouse import WarehouseBusy

LIMITS = sqlguard.Limits(max_execution_s=3, max_rows_to_read=50_000_000, max_result_rows=100_000)
ACME = sqlguard.Scope("acme")
SLOWEST: dict[str, float] = {}


@pytest.fixture(scope="module")
async def wh(warehouse):
    await warehouse.command(
        "INSERT INTO events (message_id, workspace, customer_id, name, timestamp, received_at, properties, source) VALUES "
        "('sg-a', 'acme', 'ca', 'buy', now64(3), now64(3), '{\"v\":1}', 't'), "
        "('sg-g', 'globex', 'cg', 'buy', now64(3), now64(3), '{\"v\":2}', 't')"
    )
    await warehouse.command(
        "INSERT INTO customers (workspace, customer_id, name, email, version) VALUES "
        "('acme', 'ca', 'A', 'a@acme', 1), ('globex', 'cg', 'G', 'g@globex', 1)"
    )
    await warehouse.command(
        "INSERT INTO deadletters (id, reason, stage, key, value, failed_at) VALUES "
        "('sg-d1', 'r', 's', 'acme:ca', 'x', now64(3)), ('sg-d2', 'r', 's', 'globex:cg', 'api_token=secret', now64(3)), "
        "('sg-d3', 'r', 'gateway:x', NULL, 'y', now64(3))"
    )
    return warehouse


async def run(wh, sql: str, scope: sqlguard.Scope = sqlguard.OPERATOR, fmt: str = "TSV", limits=LIMITS) -> str:
    t0 = time.monotonic()
    try:
        return (await wh.admin(lambda c: sqlguard.run(c, sql, fmt, scope, limits))).decode()
    finally:
        SLOWEST[sql] = time.monotonic() - t0


async def refused(wh, sql: str, scope: sqlguard.Scope = sqlguard.OPERATOR, exc=sqlguard.NotReadOnly) -> str:
    with pytest.raises(exc) as info:
        await run(wh, sql, scope)
    return str(info.value)


# -- writes, statements, clauses ----------------------------------------------------------

WRITES = [
    "WITH 1 AS x INSERT INTO events (message_id, workspace) SELECT 'w', 'acme'",
    "SELECT 1 AS `a'`; INSERT INTO events (message_id) VALUES ('w'); SELECT 2 AS `b'`",
    'SELECT 1 AS "a\'"; CREATE TABLE w (x UInt8) ENGINE = Memory; SELECT 2 AS "b\'"',
    "SELECT $$;$$; CREATE TABLE w (x UInt8) ENGINE = Memory",
    "SELECT 1; DROP TABLE events",
    "SELECT 1 # c\n; DROP TABLE events",
    "INSERT INTO events (message_id) VALUES ('w')",
    "INSERT INTO FUNCTION `file`('/tmp/goalstream-sg-w.csv', 'CSV', 'x UInt8') SELECT 1",
    "CREATE TABLE w (x UInt8) ENGINE = Memory",
    "ALTER TABLE events DELETE WHERE 1",
    "DROP TABLE events",
    "TRUNCATE TABLE events",
    "SYSTEM FLUSH LOGS",
    "KILL QUERY WHERE 1",
    "SET readonly = 0",
    "USE system",
    "OPTIMIZE TABLE events FINAL",
    "ATTACH TABLE x",
    "DETACH TABLE events",
    "GRANT ALL ON *.* TO default",
    "RENAME TABLE events TO e2",
    "EXCHANGE TABLES events AND customers",
    "SHOW CREATE TABLE events",
    "SHOW PROCESSLIST",
    "SHOW DATABASES",
    "SHOW TABLES FROM system",
    "EXPLAIN ESTIMATE SELECT 1",
    "EXPLAIN PIPELINE SELECT 1",
    "EXPLAIN indexes = 1 SELECT 1",
    "SELECT 1 FORMAT JSON",
    "SELECT 1 FORMAT Native",
    "SELECT 1 SETTINGS readonly = 0",
    "SELECT (SELECT 1 SETTINGS max_threads = 1)",
    "SELECT * FROM events SETTINGS additional_table_filters = {'events': '1'}",
    "SELECT 1 UNION ALL SELECT 2 SETTINGS max_result_rows = 10",
    "SELECT {x:String}",
    "",
    "   ;  ",
    "SELECT 1\x00",
    "SELECT '" + "x" * 100_001 + "'",
]

FILES = [
    "SELECT 1 INTO OUTFILE '/tmp/goalstream-sg-o.txt'",
    "SELECT 1 INTO OUTFILE '/tmp/goalstream-sg-o.txt' APPEND",
    "SELECT 1 INTO # comment\n OUTFILE '/tmp/goalstream-sg-o.txt'",
    "SELECT 1 INTO\u200bOUTFILE\u200b'/tmp/goalstream-sg-o.txt'",
    "SELECT 1 INTO/* c */OUTFILE '/tmp/goalstream-sg-o.txt' TRUNCATE",
    "SELECT * FROM file('/etc/passwd', 'LineAsString')",
    "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
    'SELECT * FROM "file"(\'/etc/passwd\', \'LineAsString\')',
    "SELECT * FROM file# c\n('/etc/passwd', 'LineAsString')",
    "SELECT * FROM FILE('/etc/passwd', 'LineAsString')",
    "SELECT file('/etc/passwd')",
    "SELECT `file`('/etc/passwd')",
    "SELECT filesystemAvailable()",
    "SELECT filesystemCapacity()",
    "SELECT * FROM filesystem('/')",
    "SELECT * FROM executable('id', 'TSV', 'x String')",
    "SELECT * FROM hdfs('hdfs://x/y', 'TSV', 'x String')",
]

NETWORK = [
    "SELECT * FROM url('http://127.0.0.1:1/x', 'CSV', 'x String')",
    "SELECT * FROM `url`('http://127.0.0.1:1/x', 'CSV', 'x String')",
    "SELECT * FROM `s3`('http://127.0.0.1:1/b/x', 'CSV', 'x String')",
    "SELECT * FROM `remote`('127.0.0.1:1', system.one)",
    "SELECT * FROM remoteSecure('127.0.0.1:1', system.one)",
    "SELECT * FROM cluster('default', system.one)",
    "SELECT * FROM `mysql`('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:1', 'd', 't', 'u', 'p')",
    "SELECT * FROM `oss`('http://127.0.0.1:1/b/x', 'CSV', 'x String')",
    "SELECT * FROM `cosn`('http://127.0.0.1:1/b/x', 'CSV', 'x String')",
    "SELECT * FROM `paimon`('http://127.0.0.1:1/b/x')",
    "SELECT * FROM icebergS3('http://127.0.0.1:1/b/x')",
    "SELECT * FROM azureBlobStorage('http://127.0.0.1:1', 'c', 'x')",
    "SELECT * FROM odbc('DSN=x', 't')",
    "SELECT * FROM jdbc('x', 't')",
    "SELECT * FROM sqlite('/tmp/x.db', 't')",
    "SELECT * FROM events WHERE customer_id IN (SELECT * FROM url('http://127.0.0.1:1/', 'CSV', 'x String'))",
    "SELECT aiGenerate('hello')",
]

SERVER = [
    "SELECT dictGet('d', 'x', 1)",
    "SELECT dictGetString('d', 'x', toUInt64(1))",
    "SELECT joinGet('events', 'name', 'x')",
    "SELECT getSetting('readonly')",
    "SELECT getServerSetting('path')",
    "SELECT getMacro('x')",
    "SELECT sleep(3)",
    "SELECT sleepEachRow(1) FROM numbers(3)",
    "SELECT catboostEvaluate('/m.bin', 1)",
    "SELECT naiveBayesClassifier('m', 'text')",
    "SELECT evalMLMethod(1, 2)",
    "SELECT hasColumnInTable('system', 'users', 'name')",
    "SELECT currentUser(), hostName()",
    "SELECT addressToSymbol(1)",
    "SELECT globalVariable('x')",
    "SELECT * FROM merge('default', '.*')",
    "SELECT * FROM merge(currentDatabase(), 'events')",
    "SELECT * FROM view(SELECT * FROM events)",
    "SELECT * FROM dictionary('d')",
    "SELECT * FROM input('x UInt8')",
    "SELECT * FROM generateRandom('x UInt8')",
    "SELECT * FROM system.users",
    "SELECT * FROM system.processes",
    "SELECT * FROM system.query_log",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "SELECT * FROM otherdb.events",
    "SELECT 1 AS `x\ny`",
    "SELECT 1 AS `x (children 3)`",
]

DOS = [
    "SELECT count() FROM numbers(1e13)",
    "SELECT count() FROM numbers(10000000000000)",
    "SELECT count() FROM numbers(0, 10000000000000)",
    "SELECT count() FROM numbers(toUInt64(1e13))",
    "SELECT count() FROM numbers_mt(10000000000000)",
    "SELECT count() FROM zeros(10000000000000)",
    "SELECT count() FROM zeros_mt(10000000000000)",
    "SELECT count() FROM generate_series(1, 10000000000000)",
    "SELECT count() FROM system.numbers",
    "SELECT count() FROM system.numbers_mt",
    "SELECT count() FROM system.zeros",
    "SELECT count() FROM loop(numbers(10))",
    "SELECT count() FROM loop(events)",
]

CATEGORIES = {"writes": WRITES, "files": FILES, "network": NETWORK, "server": SERVER, "dos": DOS}


@pytest.mark.parametrize("sql", [q for qs in CATEGORIES.values() for q in qs])
async def test_probes_are_refused_for_the_operator_and_a_workspace(wh, sql):
    for scope in (sqlguard.OPERATOR, ACME):
        await refused(wh, sql, scope)
    # Nothing was written or created.
    assert (await run(wh, "SELECT count() FROM events WHERE message_id = 'w'")).strip() == "0"
    assert (await run(wh, "EXISTS TABLE w")).strip() == "0"


def test_no_file_was_written():
    import pathlib

    assert not pathlib.Path("/tmp/goalstream-sg-o.txt").exists()
    assert not pathlib.Path("/tmp/goalstream-sg-w.csv").exists()


async def test_refusals_say_why(wh):
    assert "one statement" in await refused(wh, "SELECT 1; SELECT 2")
    assert "not INSERT" in await refused(wh, "WITH 1 AS x INSERT INTO events SELECT 1")
    assert "FORMAT and INTO OUTFILE" in await refused(wh, "SELECT 1 INTO OUTFILE 'x'")
    assert "SETTINGS" in await refused(wh, "SELECT 1 SETTINGS max_threads = 1")
    assert "table function 'file'" in await refused(wh, "SELECT * FROM `file`('x')")
    assert "function 'file'" in await refused(wh, "SELECT file('x')")
    assert "system.users" in await refused(wh, "SELECT * FROM system.users")
    assert "GOALSTREAM_SQL_MAX_ROWS_TO_READ" in await refused(wh, "SELECT count() FROM numbers(10000000000000)")
    assert "PREWHERE" in await refused(wh, "SELECT count() FROM events PREWHERE 1", ACME)
    assert "not available to a workspace" in await refused(wh, "SELECT * FROM schema_migrations", ACME)


# -- analyst queries ----------------------------------------------------------------------

ALLOWED = [
    "SELECT customer_id, plan, attributes FROM customers FINAL",
    "SELECT name, count() FROM events FINAL GROUP BY name",
    "select * from customers FINAL;",
    "-- hi\nSELECT ';'",
    "SELECT 1 # a comment",
    "SELECT 'a;b', $$c;d$$, \"name\" FROM (SELECT 1 AS name)",
    "SELECT props.v, dynamicType(props.v) FROM events_typed WHERE name = 'buy'",
    "SELECT identified_id, count() FROM events_typed GROUP BY identified_id",
    "SELECT workspace, attrs FROM customers_typed",
    "SELECT * FROM customer_identities",
    "SELECT * FROM goal_customers",
    "SELECT * FROM goal_conversion_by_cohort",
    "SELECT * FROM goal_action_completion",
    "SELECT e.name, c.email FROM events AS e FINAL INNER JOIN customers AS c FINAL ON c.customer_id = e.customer_id",
    "SELECT a.message_id FROM events AS a LEFT JOIN events AS b ON a.message_id = b.message_id",
    "WITH recent AS (SELECT * FROM events WHERE timestamp > now() - INTERVAL 7 DAY) SELECT name, count() FROM recent GROUP BY name",
    "WITH ids AS (SELECT customer_id FROM customers) SELECT count() FROM events WHERE customer_id IN ids",
    "WITH 5 AS n SELECT n * 2",
    "SELECT count() FROM events WHERE customer_id IN (SELECT customer_id FROM customers FINAL)",
    "SELECT name, row_number() OVER (PARTITION BY customer_id ORDER BY timestamp) AS n, lagInFrame(name) OVER w FROM events "
    "WINDOW w AS (PARTITION BY customer_id ORDER BY timestamp)",
    "SELECT arrayJoin([1, 2, 3]) AS x, arrayMap(y -> y * x, [1, 2]) AS m, arrayFilter(z -> z > 1, [1, 2, 3])",
    "SELECT JSONExtractInt(properties, 'v'), JSONExtractString(properties, 'k'), JSONHas(properties, 'v') FROM events",
    "SELECT properties::JSON AS j, j.v FROM events",
    "SELECT sumIf(1, name = 'buy'), uniqExact(customer_id), quantiles(0.5, 0.9)(toUnixTimestamp(timestamp)), "
    "groupArray(3)(name), argMax(name, timestamp), countDistinct(name) FROM events",
    "SELECT uniqMerge(s) FROM (SELECT uniqState(customer_id) AS s FROM events)",
    "SELECT toStartOfDay(timestamp) AS d, count() FROM events GROUP BY d ORDER BY d WITH FILL LIMIT 10",
    "SELECT CASE WHEN 1 THEN 'a' ELSE 'b' END, CASE 1 WHEN 1 THEN 'x' END, if(1, 2, 3), multiIf(1, 'a', 'b')",
    "SELECT 1::Int32, CAST('2' AS UInt8), toDate('2024-01-01'), formatDateTime(now(), '%F'), dateDiff('day', now(), now())",
    "SELECT name FROM events UNION ALL SELECT name FROM customers",
    "SELECT name FROM events INTERSECT SELECT name FROM customers",
    "SELECT name FROM events EXCEPT SELECT name FROM customers",
    "(SELECT 1) UNION DISTINCT (SELECT 2)",
    "SELECT * FROM numbers(10)",
    "SELECT number FROM numbers(5, 10)",
    "SELECT * FROM values('x UInt8, y String', (1, 'a'), (2, 'b'))",
    "SELECT COLUMNS('^na') FROM events",
    "SELECT * EXCEPT (properties) FROM events",
    "SELECT lower(name), replaceRegexpAll(name, 'a', 'b'), splitByChar(',', 'a,b'), cityHash64(name), "
    "formatReadableSize(1024), toTypeName(1), domain('http://x.y/z') FROM events",
    "SELECT name, count() AS c FROM events GROUP BY name HAVING c > 0 ORDER BY c DESC LIMIT 1 BY name LIMIT 5",
    "SELECT EXISTS (SELECT 1 FROM events)",
    "SELECT customer_id FROM events ARRAY JOIN [1, 2] AS a",
    "SELECT key, stage FROM deadletters FINAL",
    "SHOW TABLES",
    "DESCRIBE TABLE events",
    "DESC events",
    "EXISTS TABLE events",
    "EXPLAIN SELECT count() FROM events",
    "EXPLAIN AST SELECT 1",
    "EXPLAIN SYNTAX SELECT name FROM events UNION ALL SELECT name FROM customers",
]


@pytest.mark.parametrize("sql", ALLOWED)
async def test_analyst_queries_run_for_operator_and_workspace(wh, sql):
    await run(wh, sql)
    await run(wh, sql, ACME)


async def test_operator_reads_system_metadata(wh):
    out = await run(wh, "SELECT name FROM system.tables WHERE database = currentDatabase() AND name = 'events'")
    assert out.strip() == "events"
    await refused(wh, "SELECT name FROM system.tables", ACME)
    await refused(wh, "SELECT * FROM system.parts", ACME)


# -- containment --------------------------------------------------------------------------

CONTAINED = [
    "SELECT DISTINCT workspace FROM events",
    "SELECT DISTINCT workspace FROM events FINAL",
    "SELECT DISTINCT workspace FROM default.events",
    "SELECT DISTINCT workspace FROM customers FINAL",
    "SELECT DISTINCT workspace FROM events_typed",
    "SELECT DISTINCT workspace FROM customers_typed",
    "SELECT DISTINCT a.workspace FROM events AS a, events AS b",
    "SELECT DISTINCT b.workspace FROM events AS a FULL OUTER JOIN events AS b ON a.message_id = b.message_id WHERE b.workspace != ''",
    "SELECT DISTINCT workspace FROM (SELECT workspace FROM events UNION ALL SELECT workspace FROM customers)",
    "SELECT workspace FROM events UNION DISTINCT SELECT workspace FROM customers",
    "SELECT DISTINCT w FROM (SELECT workspace AS w FROM events INTERSECT SELECT workspace FROM customers)",
    "SELECT arrayJoin((SELECT groupUniqArray(workspace) FROM events))",
    "SELECT DISTINCT workspace FROM events WHERE workspace IN (SELECT workspace FROM customers)",
    "WITH customers AS (SELECT workspace FROM events) SELECT DISTINCT workspace FROM customers",
    "WITH events AS (SELECT * FROM customers) SELECT DISTINCT workspace FROM events",
]


@pytest.mark.parametrize("sql", CONTAINED)
async def test_a_workspace_sees_only_its_rows(wh, sql):
    assert set((await run(wh, sql, ACME)).split()) == {"acme"}
    assert "globex" in (await run(wh, sql.replace("DISTINCT ", "DISTINCT "), sqlguard.OPERATOR))


async def test_counts_and_side_channels_are_contained(wh):
    assert (await run(wh, "SELECT count() FROM events WHERE workspace = 'globex'", ACME)).strip() == "0"
    assert (await run(wh, "SELECT count() FROM customers WHERE email LIKE '%globex%'", ACME)).strip() == "0"
    total = int(await run(wh, "SELECT count() FROM events WHERE workspace = 'acme'"))
    assert int(await run(wh, "SELECT count() FROM events", ACME)) == total  # the trivial count obeys the filter
    # Errors are evaluated on the workspace's rows only (no other tenant's row reaches them).
    for probe in (
        "SELECT count() FROM events WHERE throwIf(workspace = 'globex')",
        "SELECT count() FROM events WHERE name = 'buy' AND throwIf(workspace = 'globex')",
        "SELECT count() FROM events AS a JOIN events AS b ON a.message_id = b.message_id AND throwIf(b.workspace = 'globex') = 0",
        "SELECT count() FROM events AS a JOIN customers AS b ON throwIf(b.workspace = 'globex') = 0",
        "SELECT count() FROM events GROUP BY throwIf(workspace = 'globex')",
        "SELECT count() FROM events_typed WHERE throwIf(workspace = 'globex')",
        "SELECT count() FROM customers FINAL WHERE throwIf(email = 'g@globex')",
        "SELECT sum(throwIf(workspace = 'globex')) FROM events",
        "SELECT count() FROM deadletters WHERE throwIf(value LIKE '%secret%')",
    ):
        await run(wh, probe, ACME)


async def test_deadletters_by_key(wh):
    out = await run(wh, "SELECT id FROM deadletters FINAL WHERE id LIKE 'sg-%' ORDER BY id", ACME)
    assert out.split() == ["sg-d1"]
    assert "secret" not in await run(wh, "SELECT value FROM deadletters", ACME)
    assert (await run(wh, "SELECT id FROM deadletters WHERE id LIKE 'sg-%' ORDER BY id")).split() == ["sg-d1", "sg-d2", "sg-d3"]


async def test_workspace_names_are_quoted(wh):
    odd = sqlguard.Scope("a'b\\")
    assert (await run(wh, "SELECT count() FROM events", odd)).strip() == "0"


async def test_every_view_is_classified(wh):
    views = (await run(wh, "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'View'")).split()
    assert views
    for v in views:
        assert v in sqlguard.TENANT_VIEWS | sqlguard.OPERATOR_ONLY_VIEWS, f"classify view {v} in sqlguard"


async def test_function_allow_list_is_justified(wh):
    """Every function allowed outside the safe categories is listed by name; every listed
    deny-worthy one is refused (the catalogue is the engine's own)."""
    catalog = await wh.admin(sqlguard.Catalog.load)
    allowed, refused_names = [], []
    for name, (agg, category) in catalog.functions.items():
        try:
            sqlguard._check_function(name, catalog)
            allowed.append(name)
            assert agg or category in sqlguard.SAFE_CATEGORIES or catalog.target(name) in sqlguard.SAFE_EXTRA or name in sqlguard.SAFE_EXTRA
        except sqlguard.NotReadOnly:
            refused_names.append(name)
    for bad in ("file", "filesystemAvailable", "dictGet", "joinGet", "getSetting", "getServerSetting", "getMacro", "sleep",
                "sleepEachRow", "evalMLMethod", "naiveBayesClassifier", "aiGenerate", "AIGenerate", "hasColumnInTable",
                "currentUser", "hostName", "globalVariable", "addressToSymbol", "__getScalar", "timeSeriesStoreTags"):
        assert bad in refused_names or bad not in catalog.functions, bad
    assert len(allowed) > 1000


# -- limits and the lane ------------------------------------------------------------------


async def test_long_query_is_cut_at_the_limit(wh):
    t0 = time.monotonic()
    msg = await refused(wh, "SELECT count() FROM numbers(100000) AS a, numbers(100000) AS b", ACME, sqlguard.LimitReached)
    assert "GOALSTREAM_SQL_MAX_EXECUTION_S" in msg
    assert time.monotonic() - t0 < LIMITS.max_execution_s + 2


async def test_result_and_read_limits(wh):
    small = sqlguard.Limits(max_result_rows=5, max_rows_to_read=1000)
    with pytest.raises(sqlguard.LimitReached, match="MAX_RESULT_ROWS"):
        await run(wh, "SELECT number FROM numbers(10)", limits=small)
    with pytest.raises(sqlguard.LimitReached, match="MAX_RESULT_ROWS"):
        await run(wh, "SELECT number FROM numbers(10) UNION ALL SELECT 1", limits=small)
    with pytest.raises(sqlguard.LimitReached, match="MAX_ROWS_TO_READ"):
        await run(wh, "SELECT count() FROM numbers(10) AS a, (SELECT count() FROM numbers(500) AS x, numbers(600) AS y) AS b",
                  limits=sqlguard.Limits(max_rows_to_read=1000))
    with pytest.raises(sqlguard.LimitReached, match="MAX_MEMORY_BYTES"):
        await run(wh, "SELECT groupArray(number) FROM numbers(10000000)", limits=sqlguard.Limits(max_memory_bytes=2**20))


async def test_admin_lane_does_not_block_the_normal_lane_and_is_bounded(wh):
    slow = asyncio.create_task(run(wh, "SELECT count() FROM numbers(100000) AS a, numbers(100000) AS b", ACME))
    slow2 = asyncio.create_task(run(wh, "SELECT count() FROM numbers(100000) AS a, numbers(100000) AS b", ACME))
    await asyncio.sleep(0.5)
    # Both admin slots are busy: a third query is refused at once.
    t0 = time.monotonic()
    with pytest.raises(WarehouseBusy):
        await run(wh, "SELECT 1")
    assert time.monotonic() - t0 < 0.5
    # Meanwhile the normal lane (the API's reads, the processors' inserts) answers fast.
    worst = 0.0
    for i in range(10):
        t0 = time.monotonic()
        await wh.rows("SELECT count() FROM events WHERE workspace = 'acme'")
        await wh.insert("propensity_models", [["sg-lane", "g", f"v{i}", "base_rate", 0, 0, 0, 0.0, None, "{}"]],
                        ["workspace", "goal", "version", "kind", "trained_at", "n_customers", "n_positive", "base_rate", "auc", "model"])
        worst = max(worst, time.monotonic() - t0)
    assert worst < 1.0, worst
    for t in (slow, slow2):
        with pytest.raises(sqlguard.LimitReached):
            await t


def test_report_slowest():
    if SLOWEST:
        sql, t = max(SLOWEST.items(), key=lambda kv: kv[1])
        print(f"\nslowest admin query {t:.2f}s: {sql[:80]!r}")
        print({k: len(v) for k, v in CATEGORIES.items()})
