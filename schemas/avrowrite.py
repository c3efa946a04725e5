"""Avro binary encoding of one datum, compiled once per schema into a Python function.

What flows through it: a schema (its JSON, as in ``schemas/avro``) -> ``compile_writer`` ->
a function datum -> bytes, the same bytes ``fastavro.schemaless_writer`` writes. fastavro
walks the schema for every datum (14.6 us for a propensity change, 21.5 us for a
recommendation; the scorer publishes both for every scored customer); here the schema is
walked once, into straight-line source (one statement per field, a loop per array), so a
datum costs only its fields.

Only what our schemas use is compiled: records, arrays, maps, enums, unions of null and one
other type, primitives, and ``timestamp-millis`` given as int milliseconds. A schema with
anything else compiles to None; a datum the function cannot write (a wrong type, a missing
field without a default, a datetime) raises (``Unwritable``, or the KeyError or
AttributeError of the field it tripped on). Either way the caller (``codec.encode``) then
asks fastavro, which writes it or raises its own error, so behaviour at the edges is
fastavro's, and the property test holds the bytes to fastavro's for every shipped schema.
"""

from __future__ import annotations

import struct
from typing import Any, Callable


class Unwritable(Exception):
    """The datum does not fit the compiled writer: let fastavro write it (or refuse it)."""


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z > 127:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL = tuple(_varint(n) for n in range(1024))  # zigzag varints of 0..1023: lengths, counts, small ints
_RECENT: dict[int, bytes] = {}  # larger ones seen lately: a batch's records share their timestamps


def _varint_recent(n: int) -> bytes:
    b = _RECENT.get(n)
    if b is None:
        if len(_RECENT) >= 4096:
            _RECENT.clear()
        b = _RECENT[n] = _varint(n)
    return b


class _Unsupported(Exception):
    pass


class _Gen:
    """Emits the source of one schema's writer; constants go into its namespace."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.names: dict[str, Any] = {}  # named types defined so far: name -> schema node
        self.open: set[str] = set()  # records being written out (a reference to one is recursion)
        self.n = 0

    def var(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, value: Any) -> str:
        name = self.var("K")
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def value(self, node: Any, expr: str, ind: int) -> None:
        """Statements writing ``expr`` (a local name) as ``node`` onto ``out``."""
        if isinstance(node, str):
            if node in self.open:
                raise _Unsupported("a recursive record")
            if node not in self.names:
                return self.primitive(node, expr, ind)
            node = self.names[node]  # a named type used again: written out again, inline
        if isinstance(node, list):
            return self.union(node, expr, ind)
        if not isinstance(node, dict):
            raise _Unsupported(repr(node))
        kind = node.get("type")
        logical = node.get("logicalType")
        if logical is not None:
            if logical == "timestamp-millis" and kind == "long":
                return self.primitive("long", expr, ind)  # int ms; a datetime raises (fastavro's then)
            raise _Unsupported(logical)
        if kind == "record":
            return self.record(node, expr, ind)
        if kind == "array":
            return self.array(node, expr, ind)
        if kind == "map":
            return self.map(node, expr, ind)
        if kind == "enum":
            return self.enum(node, expr, ind)
        if isinstance(kind, (dict, list)) or (isinstance(kind, str) and set(node) <= {"type", "doc"}):
            return self.value(kind, expr, ind)
        raise _Unsupported(repr(kind))

    def primitive(self, kind: str, x: str, ind: int) -> None:
        e = self.emit
        if kind == "string":
            b = self.var("b")
            e(ind, f"{b} = {x}.encode()")
            e(ind, f"out += S[len({b})] if len({b}) < 1024 else V(len({b}))")
            e(ind, f"out += {b}")
        elif kind == "bytes":
            e(ind, f"if type({x}) is not bytes: raise U('bytes')")
            e(ind, f"out += S[len({x})] if len({x}) < 1024 else V(len({x}))")
            e(ind, f"out += {x}")
        elif kind in ("int", "long"):
            e(ind, f"if type({x}) is not int and type({x}) is not bool: raise U('int')")
            e(ind, f"out += S[{x}] if 0 <= {x} < 1024 else V({x})")
        elif kind == "double":
            e(ind, f"out += D({x})")
        elif kind == "float":
            e(ind, f"out += F({x})")
        elif kind == "boolean":
            e(ind, f"out.append(1 if {x} else 0)")
        elif kind == "null":
            e(ind, f"if {x} is not None: raise U('null')")
        else:
            raise _Unsupported(kind)

    def record(self, node: dict, v: str, ind: int) -> None:
        full = [node.get("name", "")] + ([f"{node['namespace']}.{node.get('name', '')}"] if node.get("namespace") else [])
        if any(n in self.open for n in full):
            raise _Unsupported("a recursive record")
        self.open.update(full)
        self.emit(ind, f"if type({v}) is not dict: raise U('not a dict')")
        for f in node.get("fields", []):
            x = self.var("x")
            key = repr(f["name"])
            if "default" in f:
                # fastavro writes a field's default when the datum leaves it out.
                self.emit(ind, f"{x} = {v}.get({key}, {self.const(f['default'])})")
            else:
                self.emit(ind, f"{x} = {v}[{key}]")
            self.value(f.get("type"), x, ind)
        self.open.difference_update(full)
        for n in full:
            self.names[n] = node

    def array(self, node: dict, a: str, ind: int) -> None:
        e, item = self.emit, self.var("i")
        e(ind, f"if type({a}) is not list and type({a}) is not tuple: raise U('not a list')")
        e(ind, f"if {a}:")
        e(ind + 1, f"out += S[len({a})] if len({a}) < 1024 else V(len({a}))")
        e(ind + 1, f"for {item} in {a}:")
        self.value(node.get("items"), item, ind + 2)
        e(ind, "out.append(0)")

    def map(self, node: dict, m: str, ind: int) -> None:
        e, k, val = self.emit, self.var("k"), self.var("m")
        e(ind, f"if type({m}) is not dict: raise U('not a dict')")
        e(ind, f"if {m}:")
        e(ind + 1, f"out += S[len({m})] if len({m}) < 1024 else V(len({m}))")
        e(ind + 1, f"for {k}, {val} in {m}.items():")
        self.primitive("string", k, ind + 2)
        self.value(node.get("values"), val, ind + 2)
        e(ind, "out.append(0)")

    def enum(self, node: dict, x: str, ind: int) -> None:
        index = self.const({s: _SMALL[i] for i, s in enumerate(node["symbols"])})
        self.names[node.get("name", "")] = node
        t = self.var("t")
        self.emit(ind, f"{t} = {index}.get({x})")
        self.emit(ind, f"if {t} is None: raise U('not a symbol')")
        self.emit(ind, f"out += {t}")

    def union(self, branches: list, x: str, ind: int) -> None:
        """null and one other type (either order): the optional field of our schemas."""
        if len(branches) != 2 or "null" not in branches:
            raise _Unsupported("a union other than null and one type")
        null_at = branches.index("null")
        self.emit(ind, f"if {x} is None:")
        self.emit(ind + 1, f"out += {self.const(_SMALL[null_at])}")
        self.emit(ind, "else:")
        self.emit(ind + 1, f"out += {self.const(_SMALL[1 - null_at])}")
        self.value(branches[1 - null_at], x, ind + 1)


def compile_writer(schema_json: Any) -> Callable[[Any], bytes] | None:
    """A function datum -> Avro bytes for ``schema_json``, or None if it uses what is not compiled."""
    gen = _Gen()
    try:
        gen.value(schema_json, "d", 1)
    except (_Unsupported, KeyError, TypeError):
        return None
    source = "def write(d):\n    out = bytearray()\n" + "\n".join(gen.lines) + "\n    return bytes(out)\n"
    namespace = {"S": _SMALL, "V": _varint_recent, "D": struct.Struct("<d").pack, "F": struct.Struct("<f").pack, "U": Unwritable, **gen.consts}
    exec(compile(source, f"<avro writer {schema_json.get('name', '') if isinstance(schema_json, dict) else ''}>", "exec"), namespace)
    return namespace["write"]
