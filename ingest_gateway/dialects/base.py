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
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import orjson
from aiohttp import web

from schemas.config import Credentials, GoalstreamConfig
from schemas.kafka import KafkaUnavailable, RecordProducer
from schemas import model
from schemas.model import Record
from schemas.warehouse import Warehouse, WarehouseError

from .. import errors

log = logging.getLogger("goalstream.gateway")


@dataclass
class Services:
    """What a dialect's handlers may use; built once by ``create_app``."""

    config: GoalstreamConfig
    credentials: Credentials
    producer: RecordProducer
    warehouse: Warehouse | None
    models: Any = None  # stream_processors.goals.ModelStore: the embedded scorer's, else made on first use
    draining: bool = False
    inflight: int = 0

    async def publish(self, records: Sequence[Record]) -> None:
        if self.draining:
            raise errors.Unavailable("the gateway is draining; retry shortly", retry_after=5)
        self.inflight += 1
        try:
            await self.producer.publish(records)
        except KafkaUnavailable as exc:
            raise errors.Unavailable("the event could not be stored right now; retry shortly", retry_after=5) from exc
        finally:
            self.inflight -= 1

    async def reject(self, request: web.Request, raw: bytes, reason: str, dialect: str) -> None:
        """Keep a refused request whose sender cannot see the error (a tracking pixel):
        it goes to ``goalstream.deadletter`` with the reason, as received, for replay.
        Best effort: the caller still gets its 4xx whether or not this was stored."""
        letter = model.dead_letter(
            reason=reason,
            stage=f"gateway:{dialect}",
            key=None,
            value=raw,
            headers={
                "method": request.method.encode(),
                "path_qs": request.path_qs.encode(),
                "user-agent": request.headers.get("User-Agent", "").encode(),
            },
        )
        try:
            await self.producer.publish([letter])
        except KafkaUnavailable:
            log.error("could not dead-letter a refused %s request: %s", dialect, reason)

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

    def model_store(self) -> Any:
        if self.warehouse is None or not self.warehouse.is_open:
            raise errors.Unavailable("reads are not available on this gateway", retry_after=5)
        if self.models is None:
            from stream_processors.goals import ModelStore

            self.models = ModelStore(self.warehouse)
        return self.models

    async def read(self, sql: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        if self.warehouse is None or not self.warehouse.is_open:
            raise errors.Unavailable("reads are not available on this gateway", retry_after=5)
        try:
            return await self.warehouse.rows(sql, parameters)
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


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise errors.InvalidJSON("the request body is empty; a JSON body is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.InvalidJSON(f"the request body is not valid JSON: {exc}") from None


async def read_body(request: web.Request) -> bytes:
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.PayloadTooLarge(f"the request body exceeds {exc.max_size} bytes") from None


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
