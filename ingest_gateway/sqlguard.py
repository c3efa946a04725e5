"""Read-only SQL for ``goalstream sql`` and the admin SQL endpoint.

A ClickHouse server enforces ``readonly=1`` itself; the embedded chDB engine cannot
take that setting per query (it sticks to the session), so every query is also checked
here: one statement, starting with a read verb, and no table functions that reach files,
the network or other databases.
"""

from __future__ import annotations

import re

READ_VERBS = ("SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS")
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)
_STRINGS = re.compile(r"'(?:[^'\\]|\\.)*'")
_FORBIDDEN = re.compile(
    r"\b(file|url|urlCluster|s3|s3Cluster|gcs|hdfs|hdfsCluster|azureBlobStorage|remote|remoteSecure|cluster|"
    r"clusterAllReplicas|mysql|postgresql|mongodb|redis|sqlite|jdbc|odbc|executable|input|iceberg\w*|deltaLake\w*|"
    r"hudi\w*|dictionary|fuzzJSON|generateRandom)\s*\(|\bINTO\s+OUTFILE\b",
    re.I,
)
FORMATS = re.compile(r"^[A-Za-z0-9]+$")


class NotReadOnly(ValueError):
    pass


def check(sql: str) -> str:
    """Return the statement without a trailing ';', or raise NotReadOnly saying why."""
    stripped = _COMMENTS.sub(" ", sql).strip().rstrip(";").strip()
    if not stripped:
        raise NotReadOnly("empty query")
    bare = _STRINGS.sub("''", stripped)
    if ";" in bare:
        raise NotReadOnly("one statement at a time")
    verb = bare.split(None, 1)[0].upper()
    if verb not in READ_VERBS:
        raise NotReadOnly(f"only read queries are allowed ({', '.join(READ_VERBS)}), not {verb}")
    if m := _FORBIDDEN.search(bare):
        raise NotReadOnly(f"'{m.group(0).strip()}' is not allowed in a read-only query")
    return stripped
