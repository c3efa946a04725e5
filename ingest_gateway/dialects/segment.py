"""The Segment-compatible HTTP Tracking API: what Segment's and RudderStack's SDKs send.

Routes: ``POST /v1/batch`` (and ``/v1/import``, Segment's alias for it), ``/v1/identify``,
``/v1/track``, ``/v1/page``, ``/v1/screen``, ``/v1/group``, ``/v1/alias``. The write key
comes as HTTP Basic (key as the user, empty password) or as ``writeKey`` in the JSON body
(top level, also of a batch) and names a workspace. Bodies may be gzip or deflate
(``base.read_body`` inflates them a bounded chunk at a time; the size limits apply to the
inflated bytes and reading stops one byte past the limit, so a gzip bomb costs about that
much memory and is never inflated whole); other codings are refused with 415.

What each message becomes (one request is decoded whole, then published in one call;
one bad message refuses the whole request, naming it as ``batch[i]``):

- ``identify`` -> ``CustomerUpsert`` of ``userId`` (or ``anonymousId`` when there is none);
  the attributes are ``context.traits`` (where RudderStack's SDK puts them) overlaid with
  ``traits``, JSON types kept; ``traits.createdAt`` is also the customer's ``created_at``.
- ``track`` -> ``Event`` named ``event`` with ``properties``; ``page``/``screen`` -> an event
  named ``page``/``screen`` whose properties carry ``name`` and ``category``; ``group`` -> an
  event named ``group`` whose properties are ``{"groupId", "traits"}``. Events keep
  ``customer_id = userId`` (empty for an anonymous visitor) and ``anonymous_id``.
- ``alias`` -> ``CustomerMerge`` (kind ``alias``): ``previousId`` is ``userId`` from now on,
  so reads of ``userId`` include the anonymous visitor's events.

``messageId`` is the record's ``message_id`` (one is made up when absent), so a resend is
stored once. The event time is Segment's: ``timestamp`` (else ``originalTimestamp``)
corrected for the client's clock, ``receivedAt - (sentAt - timestamp)``, when the client
says when it sent (``sentAt``, per message or for the whole batch); without ``sentAt`` it is
taken as given, and without any timestamp it is the time the gateway received it.

``context`` (batch-level merged under each message's own) is kept with events as
``properties["context"]`` (``properties["segment_context"]`` when the sender's properties
already use ``context``): it holds what analysts ask for (campaign, page, device, ip)
and the event record has no other place for it. Identify and alias records have no room
for it and the customer's attributes are not the place for per-call request data, so
there it is not stored. ``integrations`` (routing to Segment destinations, which do not
exist here), ``channel``, ``version`` and ``_metadata`` are transport details and dropped;
any other top-level field a sender adds is kept as a property (or attribute) instead.

Answers are Segment's: ``200 {"success": true}``; errors ``{"success": false, "code",
"message"}`` (the ``code``/``message`` pair both SDKs read), 400 for invalid JSON, a limit
exceeded (32 KB per message or single call, 500 KB and 2500 messages per batch) or an
invalid message, with Segment's codes where it has one (``no_user_anon_id``,
``event_not_defined``, ...). One deliberate difference: Segment answers 200 to an unknown
write key and drops the data later; here that is a 401 (``invalid_write_key``), because
nothing accepted may be dropped, and both SDKs treat a 401 as final and log it.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
from aiohttp import web

from schemas import model

from .. import errors
from .base import Dialect, basic_auth, check_properties, identifier, json_response, parse_json, read_body, unix_seconds

MAX_MESSAGE_BYTES = 32 * 1024  # one message, or the whole body of a single call
MAX_BATCH_BYTES = 500 * 1024  # a batch request's body, inflated
MAX_BATCH_MESSAGES = 2500
TYPES = ("identify", "track", "page", "screen", "group", "alias")

# Fields every message may carry that are not event data (see the module docstring).
ENVELOPE = frozenset(
    {
        "type", "userId", "anonymousId", "messageId", "timestamp", "originalTimestamp", "sentAt",
        "receivedAt", "context", "integrations", "writeKey", "channel", "version", "_metadata",
    }
)
# The fields each call type defines; anything else a sender adds is kept as data.
FIELDS: dict[str, frozenset[str]] = {
    "identify": frozenset({"traits"}),
    "track": frozenset({"event", "properties"}),
    "page": frozenset({"name", "category", "properties"}),
    "screen": frozenset({"name", "category", "properties"}),
    "group": frozenset({"groupId", "traits"}),
    "alias": frozenset({"previousId"}),
}

CODES: dict[type[errors.GatewayError], str] = {
    errors.InvalidJSON: "invalid_json",
    errors.LimitExceeded: "payload_too_large",
    errors.PayloadTooLarge: "payload_too_large",
    errors.RecordTooLarge: "payload_too_large",
    errors.UnsupportedEncoding: "unsupported_encoding",
    errors.Unauthenticated: "invalid_write_key",
    errors.Forbidden: "forbidden",
    errors.Suppressed: "suppressed",
    errors.NotFound: "not_found",
    errors.MethodNotAllowed: "method_not_allowed",
    errors.NotAcceptable: "not_acceptable",
    errors.TooManyRequests: "rate_limit",
    errors.Unavailable: "unavailable",
    errors.Internal: "internal",
}

# ISO 8601 as senders write it. Lenient where Segment's own examples are ("2015-2-02...":
# one-digit month or day); a missing zone means UTC.
_ISO = re.compile(
    r"(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[Tt ](\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*([Zz]|[+-]\d{2}(?::?\d{2})?)?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MIN_MS = 0  # 1970-01-01
_MAX_MS = 4_102_444_800_000  # 2100-01-01: later is a bug in the sender, not an event


def _invalid(message: str, param: str, code: str = "invalid_request") -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param, detail=code)


def iso_ms(value: Any, param: str) -> int | None:
    """An ISO 8601 date or date-time string -> epoch milliseconds (None if absent)."""
    if value is None or value == "":
        return None
    m = _ISO.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise _invalid(f"'{param}' must be an ISO 8601 date-time string, got {value!r}", param, "invalid_timestamp")
    year, month, day, hour, minute, second, fraction, zone = m.groups()
    try:
        tz = timezone.utc
        if zone and zone not in ("Z", "z"):
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            tz = timezone(sign * timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0)))
        dt = datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0),
            int((fraction or "0")[:6].ljust(6, "0")), tzinfo=tz,
        )
    except ValueError:
        raise _invalid(f"'{param}' is not a valid date-time: {value!r}", param, "invalid_timestamp") from None
    ms = (dt - _EPOCH) // timedelta(milliseconds=1)  # exact: float seconds can lose the last ms
    if not _MIN_MS <= ms < _MAX_MS:
        raise _invalid(f"'{param}' must be between 1970 and 2100, got {value!r}", param, "invalid_timestamp")
    return ms


def event_time(message: dict[str, Any], received_ms: int, batch_sent_ms: int | None = None) -> int:
    """When the message happened, in epoch ms, corrected for the client's clock.

    ``timestamp`` (else ``originalTimestamp``) was read off the client's clock, and so was
    ``sentAt``; their difference is how long before sending it happened, which is
    independent of how wrong that clock is. So the time is ``receivedAt - (sentAt - timestamp)``."""
    ts = iso_ms(message.get("timestamp"), "timestamp")
    if ts is None:
        ts = iso_ms(message.get("originalTimestamp"), "originalTimestamp")
    sent = iso_ms(message.get("sentAt"), "sentAt")
    if sent is None:
        sent = batch_sent_ms
    if ts is None:
        return received_ms
    if sent is None:
        return ts
    corrected = received_ms - (sent - ts)
    if not _MIN_MS <= corrected < _MAX_MS:
        raise _invalid("'sentAt' and 'timestamp' put the event outside 1970..2100", "sentAt", "invalid_timestamp")
    return corrected


def _object(value: Any, param: str, code: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _invalid(f"'{param}' must be a JSON object", param, code)
    return value


def _name(value: Any, param: str, code: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _invalid(f"'{param}' must be a non-empty string", param, code)
    return value


def _extras(message: dict[str, Any], kind: str) -> dict[str, Any]:
    """Top-level fields a sender added beyond the spec (the seed's curl puts ``email`` there)."""
    known = ENVELOPE | FIELDS[kind]
    return {k: v for k, v in message.items() if k not in known}


def decode_message(
    workspace: str,
    message: dict[str, Any],
    received_ms: int,
    *,
    kind: str | None = None,
    batch_context: dict[str, Any] | None = None,
    batch_sent_ms: int | None = None,
    source: str = "segment",
) -> model.Record:
    """One Segment message -> its canonical record. ``kind``: the call type a single-call
    route fixes (a ``type`` in the body must then agree); in a batch, ``type`` says it."""
    given = message.get("type")
    if kind is None:
        if given is None or given == "":
            raise _invalid(f"'type' is required in a batch message: one of {', '.join(TYPES)}", "type", "type_required")
        if given not in TYPES:
            raise _invalid(f"'type' must be one of {', '.join(TYPES)}, got {given!r}", "type", "invalid_type")
        kind = given
    elif given not in (None, "", kind):
        raise _invalid(f"'type' is {given!r} but this endpoint takes {kind} calls", "type", "invalid_type")

    message_id = identifier(message.get("messageId"), "messageId", required=False)
    timestamp = event_time(message, received_ms, batch_sent_ms)
    user_id = identifier(message.get("userId"), "userId", required=False)

    if kind == "alias":
        if user_id is None:
            raise _invalid("'userId' is required for an alias call", "userId", "user_id_required")
        previous_id = identifier(message.get("previousId"), "previousId", required=False)
        if previous_id is None:
            raise _invalid("'previousId' is required for an alias call", "previousId", "previous_id_required")
        return model.customer_merge(
            workspace=workspace,
            customer_id=user_id,
            merged_id=previous_id,
            kind="alias",
            source=source,
            received_at_ms=received_ms,
            message_id=message_id,
        )

    anonymous_id = identifier(message.get("anonymousId"), "anonymousId", required=False)
    if user_id is None and anonymous_id is None:
        raise _invalid("'userId' or 'anonymousId' is required", "userId", "no_user_anon_id")
    # A batch's context is the default for each message's own (Segment's rule), key by key.
    context = {
        **_object(batch_context, "context", "context_not_object"),
        **_object(message.get("context"), "context", "context_not_object"),
    }

    if kind == "identify":
        traits = _object(message.get("traits"), "traits", "traits_not_object")
        rudder_traits = _object(context.get("traits"), "context.traits", "traits_not_object")
        attributes = {**_extras(message, kind), **rudder_traits, **traits}
        check_properties(attributes, "traits")
        created = attributes.get("createdAt")
        if isinstance(created, (int, float)) and not isinstance(created, bool):
            created_ms = unix_seconds(created, "traits.createdAt")
        else:
            created_ms = iso_ms(created, "traits.createdAt")
        return model.customer_upsert(
            workspace=workspace,
            customer_id=user_id if user_id is not None else anonymous_id,
            attributes=attributes,
            source=source,
            created_at_ms=created_ms,
            received_at_ms=received_ms,
            message_id=message_id,
        )

    if kind == "track":
        event = message.get("event")
        if event is None or event == "":
            raise _invalid("'event' is required for a track call", "event", "event_not_defined")
        if not isinstance(event, str):
            raise _invalid("'event' must be a string", "event", "event_not_string")
        name = event
        properties = {**_extras(message, kind), **_object(message.get("properties"), "properties", "properties_not_object")}
    elif kind in ("page", "screen"):
        name = kind
        properties = {**_extras(message, kind), **_object(message.get("properties"), "properties", "properties_not_object")}
        for field, code in (("name", "name_not_string"), ("category", "category_not_string")):
            value = _name(message.get(field), field, code)
            if value is not None:
                properties[field] = value
    else:  # group
        name = "group"
        group_id = identifier(message.get("groupId"), "groupId", required=False)
        if group_id is None:
            raise _invalid("'groupId' is required for a group call", "groupId", "group_id_required")
        traits = _object(message.get("traits"), "traits", "traits_not_object")
        properties = {**_extras(message, kind), "groupId": group_id, "traits": traits}
    if context:
        properties["segment_context" if "context" in properties else "context"] = context
    check_properties(properties, "properties")
    return model.event(
        workspace=workspace,
        customer_id=user_id or "",
        anonymous_id=anonymous_id or "",
        name=name,
        properties=properties,
        source=source,
        timestamp_ms=timestamp,
        received_at_ms=received_ms,
        message_id=message_id,
    )


def decode_batch(
    workspace: str, body: dict[str, Any], received_ms: int, source: str = "segment"
) -> list[model.Record]:
    """A ``/v1/batch`` body -> one record per message, all or nothing."""
    items = body.get("batch")
    if not isinstance(items, list):
        raise _invalid("'batch' must be an array of messages", "batch")
    if not items:
        raise _invalid("'batch' is empty: send at least one message", "batch", "empty_batch")
    if len(items) > MAX_BATCH_MESSAGES:
        raise errors.LimitExceeded(
            f"Exceed payload limit: a batch may hold at most {MAX_BATCH_MESSAGES} messages, this one has {len(items)}",
            param="batch",
        )
    batch_context = _object(body.get("context"), "context", "context_not_object")
    batch_sent = iso_ms(body.get("sentAt"), "sentAt")
    records = []
    for i, item in enumerate(items):
        try:
            if not isinstance(item, dict):
                raise _invalid("must be a JSON object", "batch")
            size = len(orjson.dumps(item))
            if size > MAX_MESSAGE_BYTES:
                raise errors.LimitExceeded(
                    f"Exceed payload limit: the message is {size} bytes; at most {MAX_MESSAGE_BYTES} (32 KB) per message",
                    param="batch",
                )
            records.append(
                decode_message(
                    workspace, item, received_ms, batch_context=batch_context, batch_sent_ms=batch_sent, source=source
                )
            )
        except errors.GatewayError as exc:
            # The index tells a sender of 100 messages which one to fix.
            exc.message = f"batch[{i}]: {exc.message}"
            exc.args = (exc.message,)
            raise
    return records


class Segment(Dialect):
    name = "segment"
    prefixes = ("/v1/",)

    def routes(self) -> list[web.RouteDef]:
        r = [web.post("/v1/batch", self.batch), web.post("/v1/import", self.batch)]
        for kind in TYPES:
            r.append(web.post(f"/v1/{kind}", self._single(kind)))
        return r

    # -- shared request handling -------------------------------------------------------

    @staticmethod
    def _header_key(request: web.Request) -> str | None:
        try:
            pair = basic_auth(request)
        except errors.Unauthenticated:
            # Segment still takes a key base64-encoded without the colon (its docs say so).
            _, _, encoded = request.headers.get("Authorization", "").strip().partition(" ")
            try:
                return base64.b64decode(encoded.strip(), validate=True).decode("utf-8") or None
            except (binascii.Error, ValueError):
                raise errors.Unauthenticated("the Authorization header is not valid HTTP Basic") from None
        if pair is None:
            return None
        user, password = pair
        return user or password or None

    def _workspace(self, key: Any) -> str:
        if key is None or key == "":
            raise errors.Unauthenticated(
                "no write key: send it as HTTP Basic (the key as the user name, empty password) or as 'writeKey' in the body"
            )
        if not isinstance(key, str):
            raise errors.Unauthenticated("'writeKey' must be a string")
        workspace = self.services.credentials.match("segment_write_key", key)
        if workspace is None:
            raise errors.Unauthenticated("the write key is not valid")
        return workspace

    async def _body(self, request: web.Request, limit: int) -> tuple[str, dict[str, Any]]:
        """Authenticate (header first: a wrong key is refused before the body is read) and parse."""
        header_key = self._header_key(request)
        workspace = self._workspace(header_key) if header_key is not None else None
        try:
            raw = await read_body(request, limit)
        except errors.PayloadTooLarge:
            raise errors.LimitExceeded(
                f"Exceed payload limit: the body (inflated) is over {limit} bytes ({limit // 1024} KB) for {request.path}"
            ) from None
        body = parse_json(raw)
        if not isinstance(body, dict):
            raise errors.InvalidJSON("the body must be a JSON object")
        if workspace is None:
            workspace = self._workspace(body.get("writeKey"))
        return workspace, body

    # -- handlers ----------------------------------------------------------------------

    async def batch(self, request: web.Request) -> web.Response:
        received = model.now_ms()
        workspace, body = await self._body(request, MAX_BATCH_BYTES)
        records = decode_batch(workspace, body, received, self.name)
        await self.services.publish(records)
        return json_response({"success": True})

    def _single(self, kind: str):
        async def handler(request: web.Request) -> web.Response:
            received = model.now_ms()
            workspace, body = await self._body(request, MAX_MESSAGE_BYTES)
            record = decode_message(workspace, body, received, kind=kind, source=self.name)
            await self.services.publish([record])
            return json_response({"success": True})

        handler.__name__ = f"segment_{kind}"
        return handler

    # -- errors ------------------------------------------------------------------------

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.Response:
        if isinstance(error.detail, str):
            code = error.detail
        else:
            code = next((c for t, c in CODES.items() if type(error) is t), None) or (
                "invalid_request" if isinstance(error, errors.InvalidRequest) else "internal"
            )
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return json_response({"success": False, "code": code, "message": error.message}, status=error.status, headers=headers)
