"""The trigger.ly dialect: ``GET /v1/users/track`` and ``GET /v1/events/track``.

Each call carries the workspace's ``api_token`` and one JSON object, base64-encoded in
the ``data`` query parameter. A user becomes a ``goalstream.CustomerUpsert`` (``id`` is
the customer id, every other key an attribute), an event a ``goalstream.Event`` (``type``
is its name, ``user_id`` its customer, or none for an anonymous event; ``date`` in one of
the four documented formats is its time, in UTC; every other key a property). Values keep
their JSON types and date-looking strings are kept as sent: the ClickHouse views type them.

trigger.ly documents no response bodies, so a call answers ``{"status": "ok"}`` and an
error ``{"status": "error", "message", "param"?}`` with its 4xx status. With ``image=1``
(a tracking pixel in a page or an email) every answer, error or not, is a 1x1 GIF, and
a refused pixel call with a valid ``api_token`` also goes to the dead-letter topic, the
token redacted (its sender never sees errors); one without is only counted.
Every answer forbids caching, since a cached GET is a tracking call that never arrives.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable

from aiohttp import web

from schemas import model

from .. import errors
from .base import Dialect, check_properties, identifier, json_response, parse_json, redact_query, text

# None is documented; this is far above any real user or event, and bounds what one
# unauthenticated-looking GET can make us decode. (With aiohttp's default 8190-byte
# request line, a GET cannot carry more than about 6 KB of decoded data anyway.)
MAX_DATA_BYTES = 32 * 1024

# A transparent 1x1 GIF89a (42 bytes), the usual tracking pixel.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = {
    "Cache-Control": "no-cache, no-store, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
}

USERS_PATH = "/v1/users/track"
EVENTS_PATH = "/v1/events/track"

_SLASH_DATE = re.compile(r"^\d{4}/\d{1,2}/\d{1,2}$")
_ISO_START = re.compile(r"^\d{4}")  # RFC 2822 starts with a weekday or a 1-2 digit day
# 1970 .. 2100, as for UNIX timestamps elsewhere: outside it a date is a mistake.
_MIN_MS = 0
_MAX_MS = 4_102_444_800_000


def decode_data(values: list[str]) -> dict[str, Any]:
    """The ``data`` query values (already URL-decoded) -> the JSON object they encode.

    Standard or URL-safe alphabet, padded or not. Query decoding turns a standard
    ``+`` sent unescaped into a space, so spaces are pluses again; Ruby's
    ``Base64.encode64`` (the seed's own example) breaks lines every 60 characters,
    so line breaks are dropped.
    """
    if not values or not values[0].strip():
        raise errors.InvalidRequest("'data' is required: the JSON object, base64-encoded", param="data")
    if len(values) > 1:
        raise errors.InvalidRequest("'data' is given more than once", param="data")
    encoded = values[0].replace(" ", "+")
    encoded = "".join(encoded.split()).rstrip("=").replace("-", "+").replace("_", "/")
    if len(encoded) > (MAX_DATA_BYTES * 4 + 2) // 3:
        raise errors.LimitExceeded(f"'data' decodes to more than {MAX_DATA_BYTES} bytes", param="data")
    try:
        if len(encoded) % 4 == 1:
            raise binascii.Error("truncated")
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise errors.InvalidRequest("'data' is not valid base64", param="data") from None
    try:
        obj = parse_json(raw, what="'data'", param="data")
    except errors.InexactJSON:
        raise  # valid JSON refused for a reason its message names
    except errors.InvalidJSON as exc:
        why = exc.message.partition("JSON: ")[2] or "it is empty"
        raise errors.InvalidJSON(f"'data' does not decode to valid UTF-8 JSON: {why}", param="data") from None
    if not isinstance(obj, dict):
        raise errors.InvalidJSON("'data' must encode a JSON object", param="data")
    return obj


def _utc_ms(dt: datetime) -> int:
    # A date without an offset (yyyy-MM-dd, yyyy/MM/dd, a bare ISO time) is taken as UTC.
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def parse_date(value: Any, param: str = "date") -> int | None:
    """An event ``date`` in one of the documented formats -> epoch ms UTC; None if absent.

    RFC 2822 (``Wed, 04 Jul 2001 12:08:56 -0700``), ISO 8601 (``2001-07-04T12:08:56.235-0700``,
    and its common variants: ``Z``, ``+07:00``, no millis), ``2001-07-04`` and ``2011/07/04``.
    Anything else is refused: replacing it with "now" would file the event at the wrong time.
    """
    if value is None or value == "":
        return None
    formats = "RFC 2822, ISO 8601, yyyy-MM-dd or yyyy/MM/dd"
    if not isinstance(value, str):
        raise errors.InvalidRequest(f"'{param}' must be a string in one of the formats {formats}", param=param)
    s = value.strip()
    try:
        if _SLASH_DATE.match(s):
            dt = datetime.strptime(s, "%Y/%m/%d")
        elif _ISO_START.match(s):
            dt = datetime.fromisoformat(s)
        else:
            dt = parsedate_to_datetime(s)
    except (ValueError, TypeError, IndexError, OverflowError):
        raise errors.InvalidRequest(
            f"'{param}' {value!r} is not a date in one of the formats {formats}", param=param
        ) from None
    ms = _utc_ms(dt)
    if not _MIN_MS <= ms < _MAX_MS:
        raise errors.InvalidRequest(f"'{param}' {value!r} is not between 1970 and 2100", param=param)
    return ms


def user_record(workspace: str, obj: dict[str, Any], received_ms: int, source: str = "triggerly") -> model.Record:
    customer_id = identifier(obj.get("id"), "id")
    attributes = {k: v for k, v in obj.items() if k != "id"}
    check_properties(attributes, "data")
    return model.customer_upsert(
        workspace=workspace,
        customer_id=customer_id,
        attributes=attributes,
        source=source,
        received_at_ms=received_ms,
    )


def event_record(workspace: str, obj: dict[str, Any], received_ms: int, source: str = "triggerly") -> model.Record:
    name = text(obj.get("type"), "type", max_len=255)
    # user_id is optional: an anonymous event is stored with no customer.
    customer_id = identifier(obj.get("user_id"), "user_id", required=False) or ""
    timestamp = parse_date(obj.get("date"))
    properties = {k: v for k, v in obj.items() if k not in ("type", "user_id", "date")}
    check_properties(properties, "data")
    return model.event(
        workspace=workspace,
        customer_id=customer_id,
        name=name,
        properties=properties,
        source=source,
        timestamp_ms=timestamp,
        received_at_ms=received_ms,
    )


def wants_pixel(request: web.Request) -> bool:
    return request.query.get("image", "").strip() == "1"


class Triggerly(Dialect):
    name = "triggerly"
    prefixes = ("/v1/users/", "/v1/events/")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(USERS_PATH, self.track_user, allow_head=False),
            web.get(EVENTS_PATH, self.track_event, allow_head=False),
            # Everything else under our prefixes comes here rather than to aiohttp's own
            # 404/405, so a mistyped or mis-methoded pixel is dead-lettered too.
            web.route("*", "/v1/users/{tail:.*}", self.elsewhere),
            web.route("*", "/v1/events/{tail:.*}", self.elsewhere),
        ]

    def authenticate(self, request: web.Request) -> str:
        token = request.query.get("api_token", "").strip()
        if not token:
            raise errors.Unauthenticated("pass your API token as the 'api_token' query parameter", param="api_token")
        workspace = self.services.credentials.match("triggerly_api_token", token)
        if workspace is None:
            raise errors.Unauthenticated("the API token is invalid", param="api_token")
        return workspace

    async def track_user(self, request: web.Request) -> web.Response:
        return await self._track(request, user_record)

    async def track_event(self, request: web.Request) -> web.Response:
        return await self._track(request, event_record)

    async def elsewhere(self, request: web.Request) -> web.Response:
        async def refuse() -> web.Response:
            if request.path in (USERS_PATH, EVENTS_PATH):
                raise errors.MethodNotAllowed(f"{request.method} is not allowed here; allowed: GET")
            raise errors.NotFound("no such endpoint")

        return await self._keeping_pixels(request, refuse)

    async def _track(self, request: web.Request, decode: Callable[..., model.Record]) -> web.Response:
        async def accept() -> web.Response:
            workspace = self.authenticate(request)
            obj = decode_data(request.query.getall("data", []))
            record = decode(workspace, obj, model.now_ms(), self.name)
            await self.services.publish([record])
            if wants_pixel(request):
                return web.Response(body=PIXEL, content_type="image/gif", headers=NO_CACHE)
            return json_response({"status": "ok"}, headers=NO_CACHE)

        return await self._keeping_pixels(request, accept)

    async def _keeping_pixels(self, request: web.Request, handle: Callable[[], Any]) -> web.Response:
        """Run ``handle``; if it refuses a pixel call with a valid ``api_token``, keep the
        call as a dead letter first, the token redacted.

        A pixel call without a valid token is only counted (``pixel_unauthenticated``):
        storing it would let anyone fill storage without a credential. Not for 503s: Kafka
        is what failed, so the dead letter would fail (slowly) too. Non-pixel callers see
        their error and can fix and resend, so they are not kept."""
        try:
            return await handle()
        except (errors.Unavailable, errors.TooManyRequests, errors.Suppressed):
            # Retriable (and a rate-limited flood must not fill the dead letters); or about a
            # suppressed person, whom nothing may keep.
            raise
        except Exception as exc:
            if wants_pixel(request):
                token = request.query.get("api_token", "").strip()
                workspace = self.services.credentials.match("triggerly_api_token", token) if token else None
                if workspace is None:
                    self.services.counters["pixel_unauthenticated"] += 1
                else:
                    reason = f"{exc.status} {exc.message}" if isinstance(exc, errors.GatewayError) else "500 internal error"
                    await self.services.reject(request, redact_query(request.raw_path), reason, self.name, workspace=workspace)
            raise

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.Response:
        headers = dict(NO_CACHE)
        if error.retry_after:
            headers["Retry-After"] = str(error.retry_after)
        if isinstance(error, errors.MethodNotAllowed):
            headers["Allow"] = "GET"
        if wants_pixel(request):
            # The image still loads (no broken-image icon in the page); the status tells the truth.
            return web.Response(body=PIXEL, status=error.status, content_type="image/gif", headers=headers)
        body: dict[str, Any] = {"status": "error", "message": error.message}
        if error.param:
            body["param"] = error.param
        return json_response(body, status=error.status, headers=headers)
