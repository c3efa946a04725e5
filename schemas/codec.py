"""Avro encoding of canonical records, and decoding with the writer's schema.

Schemas are immutable files ``schemas/avro/<name>.v<version>.avsc``; a change is a new
file with the next version. Every Kafka message carries the writer's schema name and
version in its headers, so a consumer (ours or a downstream one with only fastavro and
these files) decodes each message with exactly the schema it was written with.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import fastavro

AVRO_DIR = Path(__file__).parent / "avro"
SCHEMA_HEADER = "goalstream-schema"
VERSION_HEADER = "goalstream-schema-version"
# Set on a record the embedded stack's spool sends again (after a crash or a broker restart):
# it may already be stored, which only matters to a change that is not idempotent.
RESENT_HEADER = "goalstream-resent"
_FILE = re.compile(r"^(?P<name>[\w.]+)\.v(?P<version>\d+)\.avsc$")


class SchemaError(Exception):
    """A message names a schema we do not have, or its bytes do not decode with it."""


@dataclass(frozen=True, slots=True)
class Schema:
    name: str
    version: int
    parsed: Any
    headers: tuple[tuple[str, bytes], ...]


def _load() -> dict[tuple[str, int], Schema]:
    found: dict[tuple[str, int], Schema] = {}
    for path in sorted(AVRO_DIR.glob("*.avsc")):
        m = _FILE.match(path.name)
        if not m:
            raise SchemaError(f"schema file {path.name} is not named <name>.v<version>.avsc")
        name, version = m["name"], int(m["version"])
        parsed = fastavro.schema.load_schema(str(path))
        if parsed.get("name") != name.rsplit(".", 1)[-1] and parsed.get("name") != name:
            raise SchemaError(f"{path.name} declares record {parsed.get('name')!r}")
        headers = ((SCHEMA_HEADER, name.encode()), (VERSION_HEADER, str(version).encode()))
        found[(name, version)] = Schema(name, version, parsed, headers)
    return found


SCHEMAS = _load()
LATEST: dict[str, Schema] = {}
for (_name, _version), _schema in sorted(SCHEMAS.items()):
    LATEST[_name] = _schema


def encode(schema_name: str, value: Mapping[str, Any]) -> tuple[bytes, Sequence[tuple[str, bytes]]]:
    """Avro-encode ``value`` with the latest version of ``schema_name``; returns (bytes, headers)."""
    schema = LATEST[schema_name]
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, value)
    return buf.getvalue(), schema.headers


def schema_of(headers: Iterable[tuple[str, bytes]]) -> Schema:
    name = version = None
    for key, val in headers or ():
        if key == SCHEMA_HEADER:
            name = val.decode(errors="replace")
        elif key == VERSION_HEADER:
            version = val.decode(errors="replace")
    if name is None or version is None:
        raise SchemaError("message has no goalstream-schema / goalstream-schema-version headers")
    try:
        return SCHEMAS[(name, int(version))]
    except (KeyError, ValueError):
        raise SchemaError(f"unknown schema {name} version {version}") from None


def decode(value: bytes, headers: Iterable[tuple[str, bytes]]) -> tuple[str, dict[str, Any]]:
    """Decode with the writer's schema named in the headers; returns (schema name, record)."""
    schema = schema_of(headers)
    try:
        record = fastavro.schemaless_reader(io.BytesIO(value), schema.parsed, None)
    except Exception as exc:  # fastavro raises several types for corrupt bytes
        raise SchemaError(f"cannot decode {schema.name} v{schema.version}: {exc}") from exc
    return schema.name, record
