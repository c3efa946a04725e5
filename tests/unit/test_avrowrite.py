"""The compiled Avro writer writes exactly fastavro's bytes for every schema we ship, and
leaves to fastavro whatever it does not take (so errors and coercions stay fastavro's)."""

from __future__ import annotations

import io
import json
import random
from datetime import datetime, timezone

import fastavro
import pytest

from schemas import avrowrite, codec


def _fastavro(schema, datum) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, datum)
    return buf.getvalue()


def _raw(schema) -> dict:
    return json.loads((codec.AVRO_DIR / f"{schema.name}.v{schema.version}.avsc").read_text())


def _value(node, rng: random.Random, names: dict):
    """A random datum of ``node``: long and unicode strings, big and negative numbers, empties."""
    if isinstance(node, list):
        return _value(rng.choice(node), rng, names)
    if isinstance(node, str):
        if node in names:
            return _value(names[node], rng, names)
        kind = node
        node = {"type": node}
    else:
        kind = node["type"]
        if isinstance(kind, (dict, list)):
            return _value(kind, rng, names)
    if kind == "null":
        return None
    if kind == "string":
        alphabet = "ab~é€😀\u0000 " + "x" * 5
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 5, 70, 1500])))
    if kind == "bytes":
        return bytes(rng.randrange(256) for _ in range(rng.choice([0, 3, 2000])))
    if kind in ("int", "long"):
        return rng.choice([0, 1, -1, 63, 64, -64, -65, 1023, 1024, -(2**31), 2**31 - 1, 1_764_650_000_123, -(2**63), 2**63 - 1])
    if kind in ("double", "float"):
        return rng.choice([0.0, -1.5, 1e300, 0.1, 3]) if kind == "double" else rng.choice([0.0, -1.5, 0.25])
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "enum":
        names[node["name"]] = node
        return rng.choice(node["symbols"])
    if kind == "array":
        return [_value(node["items"], rng, names) for _ in range(rng.choice([0, 1, 3, 1100 if rng.random() < 0.02 else 20]))]
    if kind == "map":
        return {f"k{i}é": _value(node["values"], rng, names) for i in range(rng.choice([0, 1, 4]))}
    if kind == "record":
        names[node["name"]] = node
        return {f["name"]: _value(f["type"], rng, names) for f in node["fields"]}
    raise AssertionError(f"the test does not generate {kind}")


@pytest.mark.parametrize("key", sorted(codec.SCHEMAS), ids=lambda k: f"{k[0]}.v{k[1]}")
def test_every_shipped_schema_compiles_and_writes_fastavros_bytes(key):
    schema = codec.SCHEMAS[key]
    assert schema.writer is not None
    rng = random.Random(hash(key) & 0xFFFF)
    for _ in range(40):
        datum = _value(_raw(schema), rng, {})
        assert schema.writer(datum) == _fastavro(schema, datum)


def test_what_the_writer_does_not_take_is_fastavros():
    change = codec.LATEST["goalstream.GoalPropensityChange"]
    datum = {
        "message_id": "m", "workspace": "w", "customer_id": "c", "goal_name": "g", "likelihood": 0.5,
        "previous_likelihood": None, "status": "active", "model_version": "v", "model_kind": "k",
        "drivers": [], "goal_days_left": 3, "timestamp": datetime(2026, 12, 1, tzinfo=timezone.utc),
    }
    with pytest.raises(avrowrite.Unwritable):
        change.writer(datum)  # a datetime: fastavro converts it
    assert codec.encode(change.name, datum)[0] == _fastavro(change, datum)
    del datum["status"]
    with pytest.raises(KeyError):
        change.writer(datum)
    # Whatever fastavro makes of a missing field, encode makes the same.
    try:
        expected: object = _fastavro(change, datum)
    except Exception as exc:
        expected = type(exc)
    try:
        got: object = codec.encode(change.name, datum)[0]
    except Exception as exc:
        got = type(exc)
    assert got == expected


def test_unions_of_more_than_null_and_one_type_are_not_compiled():
    assert avrowrite.compile_writer({"type": "record", "name": "R", "fields": [{"name": "a", "type": ["null", "string", "long"]}]}) is None
    assert avrowrite.compile_writer({"type": "fixed", "name": "F", "size": 4}) is None
    ok = avrowrite.compile_writer({"type": "record", "name": "R", "fields": [{"name": "a", "type": ["string", "null"], "default": "x"}]})
    assert ok is not None and ok({}) == b"\x00\x02x" and ok({"a": None}) == b"\x02"
