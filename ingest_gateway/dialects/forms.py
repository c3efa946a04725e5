"""Decoding ``application/x-www-form-urlencoded`` bodies into JSON-like values.

What ``curl -d`` sends: ``name=purchased&data[price]=23.45``. Bracketed keys nest
(``data[price]`` -> ``{"data": {"price": ...}}``, ``tags[]=a&tags[]=b`` -> a list), and a
value becomes a number only when it is spelled the way JSON would print that number, so
``23.45`` is the float 23.45 and ``42`` the integer 42, while ``007``, ``+15551234567``,
``1e3``, ``1.50`` or ``12345678901234567890`` stay the strings they were sent as (ids,
phone numbers and zip codes must not lose digits). ``true`` and ``false`` become booleans,
because the JSON form of the same call would carry booleans (``unsubscribed=true``).
Everything else is a string. Nothing is dropped: a key given twice, or used both as a
value and as an object, is an error the caller has to fix, and so is a NUL character
(``%00``) in a name or value (as in JSON bodies).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

# JSON's number grammar minus exponents, with no trailing fractional zeros (those would be
# lost on the way back to text) and no negative zero.
_INT = re.compile(r"-?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]*[1-9]")
_KEY = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_PART = re.compile(r"\[([^\[\]]*)\]")
_INT64 = 2**63
MAX_DEPTH = 16


class FormError(ValueError):
    """The body is not a well-formed form; the message says which key and why."""


def typed(value: str) -> Any:
    """A form value as the JSON value it spells (see the module docstring)."""
    if value == "true":
        return True
    if value == "false":
        return False
    if _INT.fullmatch(value) and value != "-0":
        n = int(value)
        return n if -_INT64 <= n < _INT64 else value
    if _FLOAT.fullmatch(value):
        digits = value.lstrip("-").replace(".", "").lstrip("0")
        # Up to 15 significant digits every decimal survives the trip through a double.
        if len(digits) <= 15:
            return float(value)
    return value


def _path(key: str) -> list[str]:
    m = _KEY.fullmatch(key)
    if m is None:
        raise FormError(f"form key {key!r} is not a name followed by [bracketed] parts")
    parts = [m.group(1), *_PART.findall(m.group(2))]
    if len(parts) > MAX_DEPTH:
        raise FormError(f"form key {key!r} nests deeper than {MAX_DEPTH} levels")
    if "" in parts[1:-1]:
        raise FormError(f"form key {key!r}: '[]' (append to a list) may only come last")
    return parts


def decode(raw: bytes) -> dict[str, Any]:
    """The form body as a nested dict; raises ``FormError`` on anything ambiguous."""
    try:
        text = raw.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise FormError(f"the form body is not valid UTF-8 after percent-decoding: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in pairs:
        if "\x00" in key or "\x00" in value:
            raise FormError(f"form key {key.replace(chr(0), '%00')[:100]!r} has a NUL character (%00) in its name or value")
        parts = _path(key)
        node: Any = out
        for i, part in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            child = node.get(part)
            want = list if nxt == "" else dict
            if child is None:
                child = want()
                node[part] = child
            elif not isinstance(child, want):
                raise FormError(f"form key {key!r} uses {'.'.join(parts[: i + 1])!r} both as a value and as {'a list' if want is list else 'an object'}")
            node = child
        last = parts[-1]
        if last == "":
            node.append(typed(value))
        elif last in node:
            raise FormError(f"form key {key!r} is given more than once (use '{key}[]' for a list)")
        else:
            node[last] = typed(value)
    return out
