"""The admin SQL endpoint attacked with one workspace's admin token (and the other's).

What must hold: no statement writes (row counts and table lists unchanged), no file is
read or written, no network connection is made, a tenant sees none of the other
workspace's rows, and a query that would run away is cut off within its limit while the
API keeps answering.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import Listener
from tests.hostile.conftest import OPERATOR, SECRETS, WEBHOOK_SECRET, operator_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TENANTS = ("acme", "other")


def token(ws: str) -> str:
    return SECRETS[ws]["admin_token"]


@pytest.fixture(scope="module")
def listener():
    lst = Listener()
    yield lst
    lst.close()


INSERT_COLS = "(message_id, workspace, customer_id, name)"


def write_probes(target: str) -> dict[str, str]:
    row = "('hostile-w', 'acme', 'hostile', 'pwned')"
    return {
        "WITH..INSERT": f"WITH 1 AS x INSERT INTO events {INSERT_COLS} SELECT 'hostile-w1', 'acme', 'hostile', 'pwned'",
        "backtick hides ;": f"SELECT 1 AS `a'`; INSERT INTO events {INSERT_COLS} VALUES {row}; SELECT 2 AS `b'`",
        "dquote hides ;": f"SELECT 1 AS \"a'\"; INSERT INTO events {INSERT_COLS} VALUES {row}; SELECT 2 AS \"b'\"",
        "$$ hides ;": f"SELECT $$'$$; INSERT INTO events {INSERT_COLS} VALUES {row}; SELECT $$'$$",
        "create after select": "SELECT 1; CREATE TABLE hostile_t (x UInt8) ENGINE = Memory",
        "create": "CREATE TABLE hostile_t2 (x UInt8) ENGINE = Memory",
        "create view": "CREATE VIEW hostile_v AS SELECT 1",
        "insert": f"INSERT INTO events {INSERT_COLS} VALUES {row}",
        "insert select": f"INSERT INTO events {INSERT_COLS} SELECT 'hostile-w3', 'acme', 'hostile', 'pwned'",
        "alter delete": "ALTER TABLE events DELETE WHERE 1",
        "delete": "DELETE FROM events WHERE 1",
        "update": "ALTER TABLE customers UPDATE plan = 'x' WHERE 1",
        "drop": "DROP TABLE deadletters",
        "truncate": "TRUNCATE TABLE customers",
        "rename": "RENAME TABLE customers TO customers2",
        "exchange": "EXCHANGE TABLES customers AND events",
        "optimize": "OPTIMIZE TABLE events FINAL",
        "system": "SYSTEM STOP MERGES",
        "system flush": "SYSTEM FLUSH LOGS",
        "kill": "KILL QUERY WHERE 1",
        "set": "SET readonly = 0",
        "use": "USE system",
        "grant": "GRANT ALL ON *.* TO default",
        "create user": "CREATE USER hostile IDENTIFIED BY 'x'",
        "detach": "DETACH TABLE events",
        "attach": "ATTACH TABLE hostile_t3 (x UInt8) ENGINE = Memory",
        "backup": f"BACKUP TABLE events TO File('{target}/backup')",
        "insert into function file": f"INSERT INTO FUNCTION `file`('{target}/f1.csv', 'CSV') SELECT 1",
        "into outfile": f"SELECT 1 INTO OUTFILE '{target}/o1.txt'",
        "into outfile # comments": f"SELECT 1 INTO# c\nOUTFILE '{target}/o2.txt'",
        "into outfile -- comments": f"SELECT 1 INTO -- c\n OUTFILE '{target}/o3.txt'",
        "into outfile zwsp": f"SELECT 1 INTO\u200bOUTFILE '{target}/o4.txt'",
        "into outfile append": f"SELECT 1 INTO OUTFILE '{target}/existing.txt' APPEND",
        "into outfile truncate": f"SELECT 1 INTO OUTFILE '{target}/existing.txt' TRUNCATE",
        "settings readonly=0": "SELECT 1 SETTINGS readonly = 0",
        "format clause": "SELECT 1 FORMAT Native",
        "nul byte": "SELECT 1\x00; DROP TABLE events",
    }


def file_probes(workdir: str) -> dict[str, str]:
    cfg = f"{workdir}/goalstream.toml"
    run = f"{workdir}/var/run/stack.json"
    return {
        "file()": f"SELECT * FROM file('{cfg}', 'LineAsString')",
        "`file`()": f"SELECT * FROM `file`('{cfg}', 'LineAsString')",
        '"file"()': f"SELECT * FROM \"file\"('{cfg}', 'LineAsString')",
        "file# c\\n(": f"SELECT * FROM file# c\n('{cfg}', 'LineAsString')",
        "file /* */ (": f"SELECT * FROM file /* c */ ('{run}', 'RawBLOB')",
        "FILE upper": f"SELECT * FROM FILE('{run}', 'RawBLOB')",
        "file zwsp": f"SELECT * FROM\u200bfile('{cfg}', 'LineAsString')",
        "file in subquery": f"SELECT count() FROM events WHERE customer_id IN (SELECT * FROM file('{cfg}', 'LineAsString'))",
        "file in join": f"SELECT * FROM events AS e JOIN file('{cfg}', 'LineAsString') AS f ON 1",
        "file in cte": f"WITH x AS (SELECT * FROM file('{cfg}', 'LineAsString')) SELECT * FROM x",
        "file scalar": f"SELECT file('{cfg}')",
        "file scalar backtick": f"SELECT `file`('{run}')",
        "filesystem": "SELECT * FROM filesystem('/')",
        "filesystem backtick": "SELECT * FROM `filesystem`('.')",
        "relative file": "SELECT * FROM file('../../goalstream.toml', 'LineAsString')",
        "merge()": "SELECT * FROM merge(currentDatabase(), '.*')",
        "view()": "SELECT * FROM view(SELECT * FROM events)",
        "input()": "SELECT * FROM input('x String')",
        "executable": "SELECT * FROM executable('cat /etc/passwd', 'LineAsString', 'x String')",
        "dictGet": "SELECT dictGet('d', 'x', 1)",
        "system.tables for tenant": "SELECT * FROM system.tables",
        "system.settings": "SELECT * FROM system.settings",
        "describe url": f"DESCRIBE TABLE file('{cfg}', 'LineAsString')",
    }


def net_probes(port: int) -> dict[str, str]:
    u = f"http://127.0.0.1:{port}/x"
    hp = f"127.0.0.1:{port}"
    return {
        "url": f"SELECT * FROM url('{u}', 'CSV', 'x String')",
        "`url`": f"SELECT * FROM `url`('{u}', 'CSV', 'x String')",
        "urlCluster": f"SELECT * FROM urlCluster('default', '{u}', 'CSV', 'x String')",
        "`s3`": f"SELECT * FROM `s3`('{u}', 'CSV', 'x String')",
        "s3Cluster": f"SELECT * FROM s3Cluster('default', '{u}', 'CSV', 'x String')",
        "`remote`": f"SELECT * FROM `remote`('{hp}', system.one)",
        "remoteSecure": f"SELECT * FROM remoteSecure('{hp}', system.one)",
        "`mysql`": f"SELECT * FROM `mysql`('{hp}', 'db', 't', 'u', 'p')",
        "postgresql": f"SELECT * FROM postgresql('{hp}', 'db', 't', 'u', 'p')",
        "mongodb": f"SELECT * FROM mongodb('{hp}', 'db', 'c', 'u', 'p', 'x String')",
        "redis": f"SELECT * FROM redis('{hp}', 'k', 'k String, v String')",
        "oss": f"SELECT * FROM oss('{u}', 'CSV', 'x String')",
        "cosn": f"SELECT * FROM cosn('{u}', 'CSV', 'x String')",
        "paimon": f"SELECT * FROM paimon('{u}')",
        "iceberg": f"SELECT * FROM iceberg('{u}')",
        "deltaLake": f"SELECT * FROM deltaLake('{u}')",
        "hudi": f"SELECT * FROM hudi('{u}')",
        "gcs": f"SELECT * FROM gcs('{u}', 'CSV', 'x String')",
        "azureBlobStorage": f"SELECT * FROM azureBlobStorage('{u}', 'c', 'b', 'CSV')",
        "hdfs": f"SELECT * FROM hdfs('hdfs://{hp}/x', 'CSV', 'x String')",
        "jdbc": f"SELECT * FROM jdbc('jdbc:mysql://{hp}/db', 't')",
        "odbc": "SELECT * FROM odbc('DSN=x', 't')",
        "url in IN": f"SELECT 1 WHERE 'a' IN (SELECT * FROM url('{u}', 'CSV', 'x String'))",
        "url in union": f"SELECT 'a' UNION ALL SELECT * FROM url('{u}', 'CSV', 'x String')",
        "dictionary http": f"CREATE DICTIONARY hd (k UInt64, v String) PRIMARY KEY k SOURCE(HTTP(url '{u}' format 'CSV')) LIFETIME(0) LAYOUT(FLAT())",
    }


DOS_PROBES = {
    "numbers(1e13)": "SELECT count() FROM numbers(10000000000000)",
    "numbers_mt": "SELECT count() FROM numbers_mt(10000000000000)",
    "zeros": "SELECT count() FROM zeros(10000000000000)",
    "zeros_mt": "SELECT count() FROM zeros_mt(10000000000000)",
    "generate_series": "SELECT count() FROM generate_series(1, 10000000000000)",
    "system.numbers": "SELECT count() FROM (SELECT * FROM system.numbers LIMIT 10000000000000)",
    "loop": "SELECT count() FROM (SELECT * FROM loop(numbers(10)) LIMIT 10000000000000)",
    "cross join": "SELECT count() FROM events AS a, events AS b, events AS c, events AS d, events AS e, events AS f",
    "huge array": "SELECT length(range(1000000000))",
    "sleep": "SELECT sleepEachRow(3) FROM numbers(20)",
    "deep recursion": "SELECT " + "(" * 5000 + "1" + ")" * 5000,
}

ALL_TABLES = [
    "events", "customers", "customer_merges", "customer_identities", "events_typed", "customers_typed",
    "goal_status", "goal_aggregates", "propensity_models", "propensity_scores", "goal_customers",
    "goal_conversion_by_cohort", "goal_action_completion", "webhook_deliveries", "webhook_attempts",
    "webhook_endpoints",
]


def counts(attacker) -> dict[str, int]:
    tables = {r["name"] for r in operator_rows(attacker, "SELECT name FROM system.tables WHERE database = currentDatabase()")}
    out = {"tables": len(tables)}
    for t in ("events", "customers", "deadletters", "customer_merges"):
        out[t] = int(operator_rows(attacker, f"SELECT count() AS n FROM {t}")[0]["n"])
    return out


def refused(reply) -> bool:
    return reply.status is not None and 400 <= reply.status < 500


def no_secret_in(body: bytes) -> None:
    text = body.decode(errors="replace")
    for creds in SECRETS.values():
        for v in creds.values():
            assert v not in text
    assert WEBHOOK_SECRET not in text and OPERATOR not in text


def test_writes_refused_and_nothing_written(attacker, seeded, hostile_stack, tmp_path):
    target = str(tmp_path)
    (tmp_path / "existing.txt").write_text("before\n")
    before = counts(attacker)
    for ws in TENANTS:
        for name, sql in write_probes(target).items():
            r = attacker.sql(sql, token(ws), probe=name, category="sql-write")
            assert refused(r), (name, r.status, r.body[:300])
    after = counts(attacker)
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.txt"]
    assert (tmp_path / "existing.txt").read_text() == "before\n"


def test_file_reads_refused(attacker, seeded, hostile_stack):
    for ws in TENANTS:
        for name, sql in file_probes(str(hostile_stack.workdir)).items():
            r = attacker.sql(sql, token(ws), probe=name, category="sql-file")
            assert refused(r), (name, r.status, r.body[:300])
            no_secret_in(r.body)


def test_network_refused(attacker, seeded, listener):
    for ws in TENANTS:
        for name, sql in net_probes(listener.port).items():
            r = attacker.sql(sql, token(ws), probe=name, category="sql-network")
            assert refused(r), (name, r.status, r.body[:300])
    time.sleep(0.5)
    assert listener.connections == 0


def test_operator_is_read_only_too(attacker, seeded, hostile_stack, listener, tmp_path):
    """The operator token sees every workspace, but may not write, read files or reach the net."""
    before = counts(attacker)
    probes = {**write_probes(str(tmp_path)), **file_probes(str(hostile_stack.workdir)), **net_probes(listener.port)}
    for name in ("system.tables for tenant", "system.settings"):
        probes.pop(name)  # the operator may read the server's catalogue (no secret lives there)
    for name, sql in probes.items():
        r = attacker.sql(sql, OPERATOR, probe=name, category="sql-operator")
        assert refused(r), (name, r.status, r.body[:300])
        no_secret_in(r.body)
    assert counts(attacker) == before
    assert list(tmp_path.iterdir()) == []
    assert listener.connections == 0


def rows(reply) -> list[dict]:
    return [json.loads(line) for line in reply.body.splitlines() if line.strip()]


@pytest.mark.parametrize("ws", TENANTS)
def test_tenant_sees_only_its_workspace(attacker, seeded, ws):
    foreign = [w for w in TENANTS if w != ws][0]
    # Every readable relation, read plainly, qualified, through FINAL, self-joins and subqueries.
    for table in ALL_TABLES:
        for shape in (
            "SELECT count() AS n FROM {t} WHERE workspace = '{f}'",
            "SELECT count() AS n FROM default.{t} WHERE workspace = '{f}'",
            "SELECT count() AS n FROM (SELECT * FROM {t}) WHERE workspace = '{f}'",
            "SELECT count() AS n FROM {t} AS a JOIN {t} AS b ON a.workspace = b.workspace WHERE b.workspace = '{f}'",
            "WITH x AS (SELECT workspace FROM {t}) SELECT count() AS n FROM x WHERE workspace = '{f}'",
            "SELECT count() AS n FROM {t} WHERE workspace = '{f}' UNION ALL SELECT count() AS n FROM {t} WHERE workspace = '{f}'",
        ):
            sql = shape.format(t=table, f=foreign)
            r = attacker.sql(sql, token(ws), probe=f"{table}", category="sql-contain")
            if r.status == 200:
                assert all(int(x["n"]) == 0 for x in rows(r)), (sql, r.body)
            else:
                assert refused(r), (sql, r.status, r.body[:300])
    for sql in ("SELECT count() AS n FROM events FINAL WHERE workspace = '{f}'",
                "SELECT count() AS n FROM customers FINAL WHERE workspace = '{f}'",
                "SELECT count() AS n FROM events PREWHERE workspace = '{f}'",
                "SELECT count() AS n FROM deadletters WHERE startsWith(ifNull(key, ''), '{f}:')",
                "SELECT count() AS n FROM events WHERE customer_id LIKE '{f}-%'"):
        r = attacker.sql(sql.format(f=foreign), token(ws), probe="final/prewhere", category="sql-contain")
        if r.status == 200:
            assert all(int(x["n"]) == 0 for x in rows(r)), (sql, r.body)
        else:
            assert refused(r), (sql, r.status, r.body[:300])
    # Its own rows are there.
    r = attacker.sql(f"SELECT count() AS n FROM events WHERE workspace = '{ws}'", token(ws), probe="own rows", category="sql-contain")
    assert r.status == 200 and int(rows(r)[0]["n"]) >= 20
    # The operator sees both.
    r = attacker.sql("SELECT count(DISTINCT workspace) AS n FROM events", OPERATOR, probe="operator sees all", category="sql-contain")
    assert r.status == 200 and int(rows(r)[0]["n"]) == 2


def test_train_is_scoped(attacker, seeded):
    r = attacker.request("POST", "/admin/v1/train?goal=Acme%20Goal", [("Authorization", f"Bearer {token('other')}")],
                         category="admin-scope", probe="train other's goal")
    assert refused(r), (r.status, r.body)
    r = attacker.request("POST", "/admin/v1/train", [("Authorization", f"Bearer {token('other')}")],
                         category="admin-scope", probe="train all as tenant", timeout=120)
    assert r.status == 200, r.body
    assert all(g.get("workspace", "other") == "other" and g.get("goal") != "Acme Goal" for g in r.json()["data"]), r.body


def test_runaway_queries_are_cut_and_the_api_keeps_answering(attacker, seeded, hostile_stack):
    slowest = 0.0
    for name, sql in DOS_PROBES.items():
        result = {}

        def run():
            t = time.monotonic()
            result["r"] = attacker.sql(sql, token("acme"), probe=name, category="sql-dos", timeout=60)
            result["t"] = time.monotonic() - t

        th = threading.Thread(target=run)
        th.start()
        # While it runs, the API's reads and the health check answer promptly.
        time.sleep(0.3)
        t = time.monotonic()
        g = attacker.request("GET", "/api/v1/event?customer_id=acme-c1", attacker.traitly("acme"),
                             category="sql-dos-api", probe=f"GET during {name}", timeout=10)
        assert g.status == 200, g.body[:300]
        assert time.monotonic() - t < 3.0, f"GET took {time.monotonic() - t:.1f}s during {name}"
        th.join(60)
        r = result["r"]
        assert r.status is not None and r.status < 500, (name, r.status, r.body[:300])
        if r.status == 200:  # allowed only if it finished inside the limits
            assert result["t"] < 15
        slowest = max(slowest, result["t"])
    assert slowest < 15, slowest


def test_sql_errors_are_4xx_never_5xx(attacker, seeded):
    for name, body in {
        "empty": b"",
        "whitespace": b"   \n ",
        "garbage": b"\xff\xfe\x00garbage",
        "syntax error": b"SELEC 1",
        "unknown table": b"SELECT * FROM no_such_table",
        "unknown column": b"SELECT no_such_column FROM events",
        "huge": b"SELECT " + b"1+" * 600000 + b"1",
        "bad format": None,
    }.items():
        if body is None:
            r = attacker.request("POST", "/admin/v1/sql?format=../../x", [("Authorization", f"Bearer {token('acme')}")], b"SELECT 1",
                                 category="sql-errors", probe=name)
        else:
            r = attacker.request("POST", "/admin/v1/sql", [("Authorization", f"Bearer {token('acme')}")], body,
                                 category="sql-errors", probe=name)
        assert refused(r), (name, r.status, r.body[:300])
    for name, auth in {"no token": None, "wrong token": "Bearer nope", "non-utf8": b"Bearer adm\xff",
                       "traitly token": "Token tk_live_123"}.items():
        headers = [("Authorization", auth)] if auth else []
        r = attacker.request("POST", "/admin/v1/sql", headers, b"SELECT 1", category="sql-errors", probe=name)
        assert r.status in (401, 403), (name, r.status, r.body[:300])


def test_analyst_queries_still_work(attacker, seeded):
    for sql in (
        "SELECT name, count() AS n FROM events GROUP BY name ORDER BY n DESC",
        "SELECT customer_id, plan, attributes FROM customers FINAL",
        "SELECT identified_id, count() FROM events_typed GROUP BY identified_id",
        "WITH t AS (SELECT customer_id, count() AS c FROM events GROUP BY customer_id) SELECT max(c) FROM t",
        "SELECT c.customer_id, count(e.message_id) FROM customers AS c LEFT JOIN events AS e ON e.customer_id = c.customer_id GROUP BY 1",
        "SELECT arrayJoin([1, 2, 3]) AS x, x * 2",
        "SELECT number FROM numbers(10)",
        "SELECT toStartOfDay(timestamp) AS d, uniqExact(customer_id) FROM events GROUP BY d",
        "SELECT customer_id, row_number() OVER (PARTITION BY customer_id ORDER BY timestamp) FROM events LIMIT 5",
        "SHOW TABLES",
        "DESCRIBE TABLE events",
        "EXPLAIN SELECT count() FROM events",
    ):
        r = attacker.sql(sql, token("acme"), probe="analyst", category="sql-allowed")
        assert r.status == 200, (sql, r.status, r.body[:300])
