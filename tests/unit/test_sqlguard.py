import pytest

from ingest_gateway import sqlguard


@pytest.mark.parametrize("sql", ["SELECT 1", "  select * from customers FINAL;", "WITH x AS (SELECT 1) SELECT * FROM x", "SHOW TABLES", "-- hi\nSELECT ';'"])
def test_reads_pass(sql):
    assert sqlguard.check(sql)


@pytest.mark.parametrize(
    "sql",
    ["DROP TABLE events", "INSERT INTO events SELECT * FROM events", "SELECT 1; DROP TABLE x", "SELECT * FROM file('/etc/passwd')",
     "SELECT * FROM url('http://x', CSV)", "SELECT 1 INTO OUTFILE 'x'", "", "ALTER TABLE events DELETE WHERE 1"],
)
def test_writes_and_escapes_are_refused(sql):
    with pytest.raises(sqlguard.NotReadOnly):
        sqlguard.check(sql)
