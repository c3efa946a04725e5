"""The protocol every vendor dialect implements, and helpers they share.

A dialect owns a set of paths. For each request on them it authenticates the caller to
a workspace, decodes the vendor's payload into canonical ``Record``s, hands them to
``Services.publish`` (which returns only after Kafka acknowledged), and answers in the
vendor's shape. Every error it raises is a ``GatewayError``; ``render_error`` turns
one into the vendor's own error body.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence
from urllib.parse import unquote_plus

import orjson
from aiohttp import web

from schemas.config import Credentials, Goal, GoalstreamConfig
from schemas.kafka import KafkaUnavailable, RecordTooLarge
from schemas import metrics, model
from schemas.model import Record
from schemas.regulations import Forgotten, record_persons
from schemas.warehouse import WarehouseError

from .. import errors, live
from ..ports import Admission, Reader, Recommendation, Recommender, RecordSink, Regulations

log = logging.getLogger("goalstream.gateway")


def _is_suppressed(f: Forgotten, record: Record) -> bool:
    ws = record.value.get("workspace")
    return isinstance(ws, str) and ws in f.by_ws and any(f.suppressed(ws, p) for p in record_persons(record.schema, record.value))


@dataclass
class Services:
    """What a dialect's handlers may use; built once by ``create_app`` from what it was
    handed (the protocols of ``ingest_gateway.ports``)."""

    config: GoalstreamConfig
    credentials: Credentials
    producer: RecordSink
    warehouse: Reader | None
    recommender: Recommender | None = None  # the scorer's view, for GET recommended-next-actions
    # Whether the pipeline takes records now (the embedded stack: broker up, backlog under
    # its bound); a refusal is raised as it is, a 503 with Retry-After in the dialect's shape.
    admission: Admission | None = None
    draining: bool = False
    inflight: int = 0
    # Things refused and deliberately not stored (e.g. "pixel_unauthenticated"), for metrics.
    counters: Counter = field(default_factory=Counter)
    # The regulations in force (suppressed people's records are refused or discarded here),
    # and where a vendor's own deletion call asks for a person to be forgotten.
    forgotten: Forgotten | None = None
    regulator: Regulations | None = None

    def _unsuppressed(self, records: Sequence[Record]) -> Sequence[Record]:
        """``records`` without those about a suppressed person: refused (the whole request,
        as for any bad message of a batch) or dropped, per the workspace's
        ``suppressed_records``; counted either way."""
        assert self.forgotten is not None
        f = self.forgotten
        hit = [r for r in records if isinstance(r.value, dict) and _is_suppressed(f, r)]
        if not hit:
            return records
        metrics.FORGOTTEN_RECORDS.labels("gateway").inc(len(hit))
        live.withhold()  # the live page shows that it happened, not what was sent
        ws = self.config.workspace(hit[0].value["workspace"])
        if ws is None or ws.suppressed_records == "refuse":
            raise errors.Suppressed(
                "this person is suppressed by a data-subject regulation: nothing about them is stored "
                f"({len(hit)} of {len(records)} records of this request)"
            )
        return [r for r in records if not any(r is h for h in hit)]

    async def forget(self, workspace: str, customer_id: str, requested_by: str) -> None:
        """A vendor's deletion call that, as the vendor documents it, erases the person's
        history too: a regulation (``goalstream forget``) after the delete record is published."""
        if self.regulator is None:
            # A gateway with no ClickHouse (contract tests, a write-only front door): only the
            # profile's delete record goes out; ``goalstream forget`` erases the history.
            log.warning("a deletion in %s asked to erase a person's history; this gateway has no regulator, "
                        "so only the profile is deleted", workspace)
            return
        try:
            await self.regulator.request(workspace, customer_id, suppress=False, requested_by=requested_by)
        except WarehouseError as exc:
            raise errors.Unavailable("the erasure could not be recorded right now; retry shortly", retry_after=5) from exc

    async def publish(self, records: Sequence[Record]) -> None:
        if self.draining:
            raise errors.Unavailable("the gateway is draining; retry shortly", retry_after=5)
        if self.admission is not None and (refusal := self.admission()) is not None:
            raise refusal
        if self.forgotten is not None and self.forgotten.any:
            records = self._unsuppressed(records)
            if not records:
                return
        self.inflight += 1
        live.note_records(records)  # the live page's tap (a no-op unless someone watches)
        dialect = metrics.DIALECT.get()
        started = time.perf_counter()
        try:
            await self.producer.publish(records)
            metrics.child(metrics.PUBLISH_SECONDS, dialect).observe(time.perf_counter() - started)
            if len(records) == 1:
                metrics.child(metrics.RECORDS_ACCEPTED, dialect, records[0].topic).inc()
            else:
                for topic, n in Counter(r.topic for r in records).items():
                    metrics.child(metrics.RECORDS_ACCEPTED, dialect, topic).inc(n)
        except RecordTooLarge as exc:
            # Permanent: the same request can never be stored, so not a 503 "retry shortly".
            raise errors.RecordTooLarge(f"a record of this request is too large to store: {exc}") from None
        except KafkaUnavailable as exc:
            raise errors.Unavailable("the event could not be stored right now; retry shortly", retry_after=5) from exc
        finally:
            self.inflight -= 1

    async def reject(self, request: web.Request, path_qs: str, reason: str, dialect: str, *, workspace: str | None = None) -> None:
        """Keep a refused, authenticated request whose sender cannot see the error (a
        tracking pixel) in ``goalstream.deadletter`` with the reason, for diagnosis.

        ``path_qs`` must come with its credential already redacted (``redact_query``). It is
        kept up to ``MAX_DEAD_LETTER_BYTES`` (the ``truncated`` header then holds its full
        length); no request header but the method and User-Agent is kept, so no
        credential-bearing header is ever stored. Best effort: the caller still gets its
        4xx whether or not this was stored."""
        raw = path_qs.encode(errors="surrogateescape")
        headers = {
            "method": request.method.encode(errors="surrogateescape")[:16],
            "path_qs": raw[:MAX_DEAD_LETTER_BYTES],
            "user-agent": request.headers.get("User-Agent", "").encode(errors="surrogateescape")[:256],
        }
        if len(raw) > MAX_DEAD_LETTER_BYTES:
            headers["truncated"] = str(len(raw)).encode()
        # Keyed by the sender's workspace (``workspace:``), so a regulation finds what it quotes
        # in that workspace only.
        key = model.partition_key(workspace, "") if workspace else None
        letter = model.dead_letter(reason=reason[:1000], stage=f"gateway:{dialect}", key=key, value=raw[:MAX_DEAD_LETTER_BYTES], headers=headers)
        try:
            await self.producer.publish([letter])
        except (KafkaUnavailable, RecordTooLarge, errors.GatewayError):
            # GatewayError: an HTTP front's stack refused it (draining, backlog full): still best effort.
            log.error("could not dead-letter a refused %s request: %s", dialect, reason[:200])

    async def wait_idle(self) -> None:
        """Until no publish is in flight (used before the embedded broker is recycled)."""
        while self.inflight:
            await asyncio.sleep(0.01)

    async def identity(self, workspace: str, customer_id: str, max_depth: int = 8) -> list[str]:
        """``customer_id`` and every id merged into it (merges of merges too), for reads."""
        ids, frontier = [customer_id], [customer_id]
        for _ in range(max_depth):
            rows = await self.read(
                "SELECT merged_id FROM customer_identities WHERE workspace = {ws:String} AND customer_id IN {ids:Array(String)}",
                {"ws": workspace, "ids": frontier},
            )
            frontier = [r["merged_id"] for r in rows if r["merged_id"] not in ids]
            if not frontier:
                break
            ids += frontier
        return ids

    def _readable(self) -> Reader:
        if self.warehouse is None or not self.warehouse.is_open:
            raise errors.Unavailable("reads are not available on this gateway", retry_after=5)
        return self.warehouse

    async def recommend(self, workspace: str, goal: Goal, customer_id: str) -> Recommendation | None:
        """The customer's likelihood and ranked actions in ``goal`` (None: no such customer)."""
        self._readable()
        if self.recommender is None:
            raise errors.Unavailable("reads are not available on this gateway", retry_after=5)
        try:
            return await self.recommender.recommend(workspace, goal, customer_id)
        except WarehouseError as exc:
            raise errors.Unavailable("the warehouse is not answering; retry shortly", retry_after=5) from exc

    async def read(self, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        warehouse = self._readable()
        try:
            return await warehouse.rows(sql, parameters)
        except WarehouseError as exc:
            raise errors.Unavailable("the warehouse is not answering; retry shortly", retry_after=5) from exc


class Dialect:
    """Base of every dialect: ``prefixes`` it owns, ``routes`` it serves, ``render_error``."""

    name: ClassVar[str]
    prefixes: ClassVar[tuple[str, ...]]

    def __init__(self, services: Services):
        self.services = services

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    def claim(self, path: str) -> int:
        """How specifically this dialect owns ``path``: its longest matching prefix, or 0.

        Dialects share path space (Customer.io's ``/api/v1/customers`` sits inside
        Traitly's ``/api/``, trigger.ly's ``/v1/users/`` inside Segment's ``/v1/``); the
        most specific claim wins when an error has to be rendered."""
        return max((len(p) for p in self.prefixes if path == p or path.startswith(p)), default=0)

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.StreamResponse:
        raise NotImplementedError


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)


# -- JSON: exactly what was sent, or a clear refusal ----------------------------------
#
# orjson alone would store 2**64 as the float 1.8446744073709552e+19, keep the last of two
# equal keys and accept "\u0000". So after the orjson parse a cheap pre-scan decides whether
# the exact (slow) check must run: when the parsed value holds a float as large as an
# integer orjson could not keep, when the raw text has a "\u0000" escape, or when the text's
# strings (its unescaped quotes / 2: every key and string value is one) outnumber the keys
# and strings orjson returned (an object lost a duplicated key).

INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what orjson returns as an int (beyond: a float)
# orjson turns an integer literal outside INT_MIN..INT_MAX into a float at or beyond these.
_FLOAT_MIN, _FLOAT_MAX = float(INT_MIN), float(INT_MAX + 1)


class _Refused(ValueError):
    pass


def _census(value: Any) -> tuple[int, bool]:
    """(keys plus string values, whether a float is as large as an integer orjson could not
    keep) of a parsed JSON value; iterative, as its depth is the sender's."""
    n, big, stack = 0, False, [value]
    pop, push = stack.pop, stack.append
    while stack:
        v = pop()
        if type(v) is dict:
            n += len(v)
            v = v.values()
        for x in v:
            t = type(x)
            if t is str:
                n += 1
            elif t is dict or t is list:
                push(x)
            elif t is float and not _FLOAT_MIN < x < _FLOAT_MAX:
                big = True
    return n, big


def _exact(raw: bytes, what: str, param: str | None) -> None:
    """The slow, exact check: integers within 64 bits, no duplicate key, no NUL."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for k, v in items:
            if k in obj:
                raise _Refused(f"{what} has the key {k[:100]!r} twice in one object; send each key once")
            obj[k] = v
        return obj

    def integer(text: str) -> int:
        n = int(text) if len(text) <= 40 else None
        if n is None or not INT_MIN <= n <= INT_MAX:
            raise _Refused(
                f"{what} has the integer {text[:40]}{'...' if len(text) > 40 else ''}, outside the 64-bit range "
                f"{INT_MIN}..{INT_MAX}; send it as a string to keep every digit"
            )
        return n

    try:
        value = json.loads(raw, object_pairs_hook=pairs, parse_int=integer)
    except _Refused as exc:
        raise errors.InexactJSON(str(exc), param=param) from None
    except (ValueError, RecursionError):
        raise errors.InexactJSON(f"{what} is nested too deeply", param=param) from None
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            if any("\x00" in k for k in v):
                raise errors.InexactJSON(f"{what} has a key with a NUL character (\\u0000)", param=param)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str) and "\x00" in v:
            raise errors.InexactJSON(f"{what} has a string with a NUL character (\\u0000)", param=param)


def parse_json(raw: bytes, *, what: str = "the request body", param: str | None = None) -> Any:
    """``raw`` as JSON, exactly as sent; ``InvalidJSON`` (400) when it is not JSON, has an
    integer outside 64 bits, a duplicate key in an object or a NUL character anywhere."""
    if not raw.strip():
        raise errors.InvalidJSON(f"{what} is empty; a JSON body is required", param=param)
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJSON(f"{what} is not valid JSON: {exc}", param=param) from None
    # Without a backslash (most bodies) there is no escape at all: no NUL escape, no escaped
    # quote. A one-byte search is memchr, ~80x cheaper than a two-byte one.
    escapes = b"\\" in raw
    if type(value) is dict or type(value) is list:
        strings, big = _census(value)
        if big or strings != _string_tokens(raw, escapes) or escapes and b"\\u0000" in raw:
            _exact(raw, what, param)
    elif escapes and b"\\u0000" in raw or type(value) is float and not _FLOAT_MIN < value < _FLOAT_MAX:
        _exact(raw, what, param)
    return value


def _string_tokens(raw: bytes, escapes: bool = True) -> int:
    """How many strings (keys included) valid JSON text has: its unescaped quotes / 2.

    A quote is escaped when an odd number of backslashes precede it. ``count(j * "\\" +
    '"')`` counts the quotes preceded by at least j of them, so the escaped ones are
    c1 - c2 + c3 - ... (almost always just c1 = 0)."""
    quotes, escaped, j, sign = raw.count(b'"'), 0, 1, 1
    if not escapes:
        return quotes // 2
    while quotes and (c := raw.count(b"\\" * j + b'"')):
        escaped += sign * c
        j, sign = j + 1, -sign
    return (quotes - escaped) // 2


# -- property limits -------------------------------------------------------------------

MAX_PROPERTIES = 1000  # keys of an event's properties or a customer's attributes, nested ones counted
MAX_DEPTH = 32  # objects and arrays inside one another, from the properties down


def check_properties(value: Any, param: str, *, max_keys: int = MAX_PROPERTIES, max_depth: int = MAX_DEPTH) -> None:
    """The general per-record limit of dialects whose vendor documents none: at most
    ``max_keys`` keys counted over every nested object, containers nested at most
    ``max_depth`` deep (``value`` itself is level 1). Walked level by level, iteratively."""
    keys, level, depth = 0, [value], 0
    while level:
        depth += 1
        if depth > max_depth:
            raise errors.LimitExceeded(f"'{param}' nests objects and arrays more than {max_depth} deep", param=param)
        below = []
        for v in level:
            if type(v) is dict:
                keys += len(v)
                v = v.values()
            for x in v:
                if type(x) is dict or type(x) is list:
                    below.append(x)
        if keys > max_keys:
            raise errors.LimitExceeded(f"'{param}' has more than {max_keys} keys (nested ones counted)", param=param)
        level = below


# -- request bodies --------------------------------------------------------------------

# What HTTP clients and the Segment/RudderStack SDKs send. Anything else (br, zstd, x-gzip,
# codings stacked, unknown names) is refused with 415 rather than stored undecoded.
CODINGS = ("gzip", "deflate")
_CHUNK = 64 * 1024
# A refused pixel call is kept up to this much of its path and query.
MAX_DEAD_LETTER_BYTES = 8192


def content_coding(request: web.Request) -> str | None:
    """The body's one content coding (``gzip`` or ``deflate``), None if it has none."""
    header = request.headers.get("Content-Encoding", "")
    codings = [c.strip().lower() for c in header.split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in CODINGS:
        return codings[0]
    raise errors.UnsupportedEncoding(
        f"Content-Encoding {header[:40]!r} is not supported: send the body unencoded, gzip or deflate", param="Content-Encoding"
    )


def _too_large(limit: int, coding: str | None) -> errors.PayloadTooLarge:
    return errors.PayloadTooLarge(f"the request body is over {limit} bytes{' inflated' if coding else ''}")


async def read_body(request: web.Request, limit: int | None = None) -> bytes:
    """The body, inflated when it is gzip or deflate; ``PayloadTooLarge`` once it passes
    ``limit`` bytes (default: the app's ``client_max_size``), inflated or not.

    Bounded memory: the body is read a chunk at a time and inflated at most ``limit + 1``
    bytes at a time, so a gzip bomb costs about ``limit`` and is never inflated whole. The
    servers run aiohttp with ``auto_decompress=False`` so the coding is decoded here, where
    a truncated stream or trailing bytes are refused; under a server that inflates itself
    (``total_compressed_bytes`` set) the inflated bytes are counted the same way."""
    limit = request.client_max_size if limit is None else limit
    coding = content_coding(request)
    # Compressed data is at most a little larger than its content.
    raw_cap = limit + limit // 64 + 1024 if coding else limit
    if request.content_length is not None and request.content_length > raw_cap:
        raise _too_large(limit, coding)
    inflate = coding is not None and request.content.total_compressed_bytes is None
    inflater: Any = None
    out, raw_size = bytearray(), 0
    bad = errors.InvalidJSON(f"the request body is not valid {coding}: it could not be decompressed")
    try:
        while chunk := await request.content.read(_CHUNK):
            raw_size += len(chunk)
            if raw_size > raw_cap:
                raise _too_large(limit, coding)
            if not inflate:
                out += chunk
            else:
                if inflater is None:
                    # RFC 9110 deflate is zlib-wrapped; some clients send it raw (as aiohttp allows).
                    wbits = 31 if coding == "gzip" else (15 if chunk[0] & 0x0F == 8 else -15)
                    inflater = zlib.decompressobj(wbits=wbits)
                while chunk:
                    if inflater.eof:
                        raise bad  # bytes after the end of the stream
                    out += inflater.decompress(chunk, limit + 1 - len(out))
                    if len(out) > limit:
                        break
                    chunk = inflater.unconsumed_tail or inflater.unused_data
            if len(out) > limit:
                raise _too_large(limit, coding)
    except (web.RequestPayloadError, zlib.error):
        raise bad from None
    if inflater is not None and not inflater.eof:
        raise errors.InvalidJSON(f"the request body is truncated {coding}: the stream does not end")
    live.note_body(bytes(out))  # the live page's tap (a no-op unless someone watches)
    return bytes(out)


def redact_query(path_qs: str, names: tuple[str, ...] = ("api_token",)) -> str:
    """``path_qs`` with the value of every query parameter in ``names`` replaced by
    ``REDACTED`` (however its name was percent-encoded); everything else as received."""
    path, sep, query = path_qs.partition("?")
    if not sep:
        return path_qs
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        parts.append(f"{name}=REDACTED" if unquote_plus(name).strip() in names else part)
    return f"{path}?{'&'.join(parts)}"


def identifier(value: Any, param: str, *, required: bool = True, max_len: int = 255) -> str | None:
    """An id given as a string or an integer (clients send both), normalised to a string."""
    if value is None or value == "":
        if required:
            raise errors.InvalidRequest(f"'{param}' is required", param=param)
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise errors.InvalidRequest(f"'{param}' must be a string or an integer", param=param)
    text = str(value)
    if len(text) > max_len:
        raise errors.InvalidRequest(f"'{param}' is longer than {max_len} characters", param=param)
    if "\x00" in text:
        raise errors.InvalidRequest(f"'{param}' has a NUL character", param=param)
    return text


def text(value: Any, param: str, *, required: bool = True, max_len: int = 1000) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise errors.InvalidRequest(f"'{param}' is required", param=param)
        return None
    if not isinstance(value, str):
        raise errors.InvalidRequest(f"'{param}' must be a string", param=param)
    if len(value) > max_len:
        raise errors.InvalidRequest(f"'{param}' is longer than {max_len} characters", param=param)
    if "\x00" in value:
        raise errors.InvalidRequest(f"'{param}' has a NUL character", param=param)
    return value


# 1970 .. 2100: a "seconds" value outside this is almost certainly milliseconds or garbage.
_MAX_UNIX_S = 4_102_444_800


def unix_seconds(value: Any, param: str) -> int | None:
    """Seconds since the epoch as a number or numeric string -> milliseconds, or None if absent."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise errors.InvalidRequest(f"'{param}' must be a UNIX timestamp in seconds", param=param)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise errors.InvalidRequest(f"'{param}' must be a UNIX timestamp in seconds", param=param) from None
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value < _MAX_UNIX_S:
        raise errors.InvalidRequest(f"'{param}' must be a UNIX timestamp in seconds between 1970 and 2100", param=param)
    return int(round(value * 1000))


def limit_param(request: web.Request, default: int = 100, maximum: int = 1000) -> int:
    raw = request.query.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.InvalidRequest("'limit' must be an integer", param="limit") from None
    if not 1 <= value <= maximum:
        raise errors.InvalidRequest(f"'limit' must be between 1 and {maximum}", param="limit")
    return value


def basic_auth(request: web.Request) -> tuple[str, str] | None:
    """The (user, password) of an ``Authorization: Basic`` header, or None if there is none.

    A malformed one is an authentication error, not a bad request: the caller's fix is
    the same (send the right credentials)."""
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise errors.Unauthenticated("the Authorization header is not valid HTTP Basic") from None
    user, sep, password = decoded.partition(":")
    if not sep:
        raise errors.Unauthenticated("the Authorization header is not valid HTTP Basic (no ':')")
    return user, password
