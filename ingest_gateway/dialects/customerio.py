"""The Customer.io Track API dialect: ``/api/v1/...`` as the seed and the ``customerio`` SDK use it, and ``/api/v2/``.

Callers authenticate with HTTP Basic ``site_id:api_key`` naming one workspace. Bodies are
JSON, or form-encoded as ``curl -d`` sends them (see ``forms``). What flows through:

- ``PUT /api/v1/customers/{id}`` (identify) -> ``CustomerUpsert`` with the attributes as
  sent (types kept); ``created_at`` (unix seconds) becomes the customer's created_at and
  ``_update`` is a control flag, not an attribute. An ``anonymous_id`` attribute also
  becomes a ``CustomerMerge`` of kind ``alias``, so that person's anonymous events count
  for them (Customer.io's event merging).
- ``DELETE /api/v1/customers/{id}`` -> ``CustomerDelete``.
- ``POST /api/v1/customers/{id}/events`` and anonymous ``POST /api/v1/events`` -> ``Event``:
  ``name``, ``data`` as the properties, ``timestamp`` (unix seconds) as the event time, the
  client's ``id`` as the message_id (a resend is stored once); ``type`` ``page``/``screen``
  is kept as the property ``_type``.
- ``PUT|DELETE .../devices[/{token}]`` -> ``CustomerArrays`` on the ``devices`` attribute.
- ``POST .../suppress|unsuppress`` -> ``CustomerUpsert`` of ``{"_suppressed": true|false}``:
  the profile and its history are kept, flagged, rather than destroyed.
- ``POST /api/v1/merge_customers`` -> ``CustomerMerge`` of kind ``merge``.
- ``POST /api/v2/batch`` (and ``/api/v2/entity``, one operation) -> the same records for
  ``type: person`` operations, all in one publish. Objects, deliveries and relationships
  are refused.

A request is decoded whole before anything is published: one bad part refuses it all.
People are named by ``id`` as given, or by ``email`` (resolved to the id of the customer
holding that email, else the email itself is the id); ``cio_id`` is refused, because
goalstream assigns none. Errors use Customer.io's shapes: v1 ``{"meta": {"error": ...}}``,
v2 ``{"errors": [{"reason", "field", "message", "batch_index"?}]}``; success is 200 ``{}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from schemas import model

from .. import errors
from . import forms
from .base import Dialect, basic_auth, json_response, parse_json, read_body, unix_seconds

# Customer.io's documented Track API limits (docs.customer.io/api/track, "Track API limits").
MAX_ID_BYTES = 150  # customer id (and other identifiers)
MAX_ATTR_NAME_BYTES = 150
MAX_ATTR_VALUE_BYTES = 1000
MAX_ATTRIBUTES = 300  # unique attributes in one identify
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000  # "100K bytes"
MAX_V2_BATCH_BYTES = 500_000  # "must be smaller than 500kb"
MAX_V2_ENTITY_BYTES = 32_768  # "must be smaller than 32kb", also each operation of a batch
MAX_MESSAGE_ID_LEN = 255

EVENT_TYPES = ("event", "page", "screen")
DEVICE_PLATFORMS = ("ios", "android")
V1_EVENT_KEYS = {"name", "data", "timestamp", "id", "type"}
V1_ANON_EVENT_KEYS = V1_EVENT_KEYS | {"anonymous_id"}

Resolver = Callable[[str, str], Awaitable[str]]


def FieldError(message: str, *, field: str | None = None, reason: str = "invalid") -> errors.InvalidRequest:
    """An invalid field, with the ``reason`` v2 errors carry."""
    return errors.InvalidRequest(message, param=field, detail={"reason": reason})


def LimitError(message: str, *, field: str | None = None) -> errors.LimitExceeded:
    """A documented Track API limit exceeded."""
    return errors.LimitExceeded(message, param=field, detail={"reason": "too_large"})


def _size(value: Any) -> int:
    """A value's size as Customer.io counts it: a string's UTF-8 bytes, else its JSON."""
    if isinstance(value, str):
        return len(value.encode())
    return len(orjson.dumps(value))


def check_id(value: Any, field: str) -> str:
    """A person identifier: a non-blank string or integer of at most 150 bytes."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
        raise FieldError(f"'{field}' must be a non-empty string or integer", field=field, reason="required" if value in (None, "") else "invalid")
    text = str(value)
    if len(text.encode(errors="surrogateescape")) > MAX_ID_BYTES:
        raise LimitError(f"'{field}' is longer than {MAX_ID_BYTES} bytes", field=field)
    if "\x00" in text:
        raise FieldError(f"'{field}' has a NUL character", field=field)
    return text


def check_attributes(attrs: Any, field: str) -> dict[str, Any]:
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise FieldError(f"'{field}' must be an object", field=field)
    if len(attrs) > MAX_ATTRIBUTES:
        raise LimitError(f"'{field}' has {len(attrs)} attributes; at most {MAX_ATTRIBUTES} per request", field=field)
    for name, value in attrs.items():
        if not name.strip():
            raise FieldError(f"'{field}' has an attribute with an empty name", field=field)
        if len(name.encode()) > MAX_ATTR_NAME_BYTES:
            raise LimitError(f"attribute name '{name[:40]}...' is longer than {MAX_ATTR_NAME_BYTES} bytes", field=field)
        if _size(value) > MAX_ATTR_VALUE_BYTES:
            raise LimitError(f"the value of attribute '{name}' is larger than {MAX_ATTR_VALUE_BYTES} bytes", field=f"{field}.{name}" if field else name)
    return attrs


def check_event_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise FieldError(f"'{field}' is required and must be a string", field=field, reason="required" if value in (None, "") else "invalid")
    # Customer.io trims leading and trailing spaces from event names.
    name = str(value).strip()
    if not name:
        raise FieldError(f"'{field}' is required and must not be blank", field=field, reason="required")
    if len(name.encode()) > MAX_EVENT_NAME_BYTES:
        raise LimitError(f"'{field}' is longer than {MAX_EVENT_NAME_BYTES} bytes", field=field)
    return name


def check_event_data(data: Any, field: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise FieldError(f"'{field}' must be an object", field=field)
    if _size(data) > MAX_EVENT_DATA_BYTES:
        raise LimitError(f"'{field}' is larger than {MAX_EVENT_DATA_BYTES} bytes", field=field)
    return data


def check_message_id(value: Any, field: str = "id") -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise FieldError(f"'{field}' must be a string", field=field)
    text = str(value)
    if len(text) > MAX_MESSAGE_ID_LEN:
        raise LimitError(f"'{field}' is longer than {MAX_MESSAGE_ID_LEN} characters", field=field)
    return text


def check_timestamp(value: Any, field: str) -> int | None:
    try:
        return unix_seconds(value, field)
    except errors.InvalidRequest as exc:
        raise FieldError(exc.message, field=field) from None


@dataclass
class Decoder:
    """Turns one request's payload into records (pure, apart from email look-ups)."""

    workspace: str
    source: str
    received: int
    resolve: Resolver

    # -- people ------------------------------------------------------------------------

    def identify(self, customer_id: str, attrs: dict[str, Any], field: str = "") -> list[model.Record]:
        attrs = dict(check_attributes(attrs, field or "attributes"))
        attrs.pop("_update", None)  # "only update existing people": every identify is an upsert here
        created = check_timestamp(attrs.pop("created_at", None), "created_at")
        anonymous_id = attrs.get("anonymous_id")
        records = [
            model.customer_upsert(
                workspace=self.workspace,
                customer_id=customer_id,
                attributes=attrs,
                source=self.source,
                created_at_ms=created,
                received_at_ms=self.received,
            )
        ]
        if anonymous_id not in (None, ""):
            records.append(self.merge(customer_id, check_id(anonymous_id, "anonymous_id"), kind="alias"))
        return records

    def delete(self, customer_id: str) -> list[model.Record]:
        return [model.customer_delete(workspace=self.workspace, customer_id=customer_id, source=self.source, received_at_ms=self.received)]

    def suppress(self, customer_id: str, suppressed: bool) -> list[model.Record]:
        return [
            model.customer_upsert(
                workspace=self.workspace,
                customer_id=customer_id,
                attributes={"_suppressed": suppressed},
                source=self.source,
                received_at_ms=self.received,
            )
        ]

    def merge(self, primary: str, secondary: str, kind: str = "merge") -> model.Record:
        return model.customer_merge(
            workspace=self.workspace, customer_id=primary, merged_id=secondary, kind=kind, source=self.source, received_at_ms=self.received
        )

    def device(self, customer_id: str, device: dict[str, Any], token_key: str, field: str) -> list[model.Record]:
        if not isinstance(device, dict):
            raise FieldError(f"'{field}' must be an object", field=field)
        item = dict(device)
        token = item.pop(token_key, None)
        if token is None or (isinstance(token, str) and not token.strip()) or not isinstance(token, (str, int)) or isinstance(token, bool):
            raise FieldError(f"'{field}.{token_key}' (the device token) is required", field=f"{field}.{token_key}", reason="required")
        platform = item.get("platform")
        if platform not in DEVICE_PLATFORMS:
            raise FieldError(f"'{field}.platform' must be one of {', '.join(DEVICE_PLATFORMS)}", field=f"{field}.platform")
        if "last_used" in item:
            check_timestamp(item["last_used"], f"{field}.last_used")
        if "attributes" in item:
            check_attributes(item["attributes"], f"{field}.attributes")
        return [
            model.customer_arrays(
                workspace=self.workspace,
                customer_id=customer_id,
                field="devices",
                op="upsert",
                items=[{"id": str(token), **item}],
                source=self.source,
                received_at_ms=self.received,
            )
        ]

    def delete_device(self, customer_id: str, token: Any, field: str) -> list[model.Record]:
        if token is None or token == "" or isinstance(token, bool) or not isinstance(token, (str, int)):
            raise FieldError(f"'{field}' (the device token) is required", field=field, reason="required")
        return [
            model.customer_arrays(
                workspace=self.workspace,
                customer_id=customer_id,
                field="devices",
                op="delete",
                items=[str(token)],
                source=self.source,
                received_at_ms=self.received,
            )
        ]

    # -- events ------------------------------------------------------------------------

    def event(
        self,
        *,
        customer_id: str,
        anonymous_id: str,
        name: Any,
        data: Any,
        timestamp: Any,
        message_id: Any,
        kind: Any,
        data_field: str = "data",
        name_field: str = "name",
    ) -> list[model.Record]:
        kind = "event" if kind in (None, "") else kind
        if kind not in EVENT_TYPES:
            raise FieldError(f"'type' must be one of {', '.join(EVENT_TYPES)}", field="type")
        name = check_event_name(name, name_field)
        properties = dict(check_event_data(data, data_field))
        if kind != "event":
            properties["_type"] = kind
        return [
            model.event(
                workspace=self.workspace,
                customer_id=customer_id,
                anonymous_id=anonymous_id,
                name=name,
                properties=properties,
                source=self.source,
                timestamp_ms=check_timestamp(timestamp, "timestamp"),
                received_at_ms=self.received,
                message_id=check_message_id(message_id),
            )
        ]

    # -- identifiers -------------------------------------------------------------------

    async def person(self, identifiers: Any, field: str) -> str:
        """The customer_id named by ``{"id"|"email"|"cio_id": value}``."""
        if not isinstance(identifiers, dict) or not identifiers:
            raise FieldError(f"'{field}' must be an object with one of id, email, cio_id", field=field, reason="required")
        unknown = set(identifiers) - {"id", "email", "cio_id"}
        if unknown:
            raise FieldError(f"'{field}' has unknown identifier {sorted(unknown)[0]!r}; use id, email or cio_id", field=field)
        if "id" in identifiers:
            return check_id(identifiers["id"], f"{field}.id")
        if "email" in identifiers:
            email = check_id(identifiers["email"], f"{field}.email")
            if "@" not in email:
                raise FieldError(f"'{field}.email' is not an email address", field=f"{field}.email")
            return await self.resolve("email", email)
        raise FieldError(f"'{field}.cio_id' is not supported: goalstream assigns no cio_id; name the person by id or email", field=f"{field}.cio_id")

    # -- v2 ----------------------------------------------------------------------------

    async def v2_operation(self, op: Any) -> list[model.Record]:
        if not isinstance(op, dict):
            raise FieldError("each operation must be an object", field="")
        if len(orjson.dumps(op)) > MAX_V2_ENTITY_BYTES:
            raise LimitError(f"the operation is larger than {MAX_V2_ENTITY_BYTES} bytes")
        kind, action = op.get("type"), op.get("action")
        if kind != "person":
            if kind in ("object", "delivery"):
                raise FieldError(f"type '{kind}' is not supported by this gateway; only 'person' operations are", field="type", reason="unsupported")
            raise FieldError("'type' must be 'person'", field="type", reason="required" if kind is None else "invalid")
        if action == "merge":
            primary = await self.person(op.get("primary"), "primary")
            secondary = await self.person(op.get("secondary"), "secondary")
            return [self.merge(primary, secondary)]
        customer_id = await self.person(op.get("identifiers"), "identifiers")
        match action:
            case "identify":
                return self.identify(customer_id, op.get("attributes") or {}, "attributes")
            case "delete":
                return self.delete(customer_id)
            case "event" | "page" | "screen":
                return self.event(
                    customer_id=customer_id,
                    anonymous_id="",
                    name=op.get("name"),
                    data=op.get("attributes"),
                    timestamp=op.get("timestamp"),
                    message_id=op.get("id"),
                    kind=action,
                    data_field="attributes",
                )
            case "add_device":
                return self.device(customer_id, op.get("device"), "token", "device")
            case "delete_device":
                device = op.get("device")
                return self.delete_device(customer_id, device.get("token") if isinstance(device, dict) else None, "device.token")
            case "suppress" | "unsuppress":
                return self.suppress(customer_id, action == "suppress")
            case "add_relationships" | "delete_relationships":
                raise FieldError(f"action '{action}' is not supported: goalstream stores no objects", field="action", reason="unsupported")
            case None:
                raise FieldError("'action' is required", field="action", reason="required")
            case _:
                raise FieldError(f"action '{action}' is not a person action", field="action")


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise FieldError("the request body must be a JSON object")
    return body


class CustomerIO(Dialect):
    name = "customerio"
    prefixes = ("/api/v1/customers", "/api/v1/events", "/api/v1/merge_customers", "/api/v2/")

    def routes(self) -> list[web.RouteDef]:
        v1 = "/api/v1/customers/{customer_id}"
        return [
            web.put(v1, self.identify),
            web.delete(v1, self.delete),
            web.post(v1 + "/events", self.track),
            web.put(v1 + "/devices", self.add_device),
            web.delete(v1 + "/devices/{token}", self.delete_device),
            web.post(v1 + "/suppress", self.suppress),
            web.post(v1 + "/unsuppress", self.unsuppress),
            web.post("/api/v1/events", self.track_anonymous),
            web.post("/api/v1/merge_customers", self.merge_customers),
            web.post("/api/v2/batch", self.batch),
            web.post("/api/v2/entity", self.entity),
        ]

    # -- shared request handling -------------------------------------------------------

    def authenticate(self, request: web.Request) -> str:
        pair = basic_auth(request)
        if pair is None:
            raise errors.Unauthenticated("unauthorized: send your site ID and API key with HTTP Basic auth")
        workspace = self.services.credentials.match_pair(("customerio_site_id", "customerio_api_key"), pair)
        if workspace is None:
            raise errors.Unauthenticated("unauthorized: the site ID and API key do not match")
        return workspace

    async def _resolver(self, workspace: str) -> Resolver:
        async def resolve(kind: str, value: str) -> str:
            # Customer.io finds the person holding this email; without one, the email names
            # them (workspaces that identify people by email use it as the id).
            rows = await self.services.read(
                "SELECT customer_id FROM customers FINAL WHERE workspace = {ws:String} AND is_deleted = 0 "
                "AND lower(email) = lower({email:String}) ORDER BY customer_id LIMIT 2",
                {"ws": workspace, "email": value},
            )
            if len(rows) > 1:
                raise FieldError(f"more than one person has the email {value!r}; name them by id", field="email")
            return rows[0]["customer_id"] if rows else value

        return resolve

    async def _start(self, request: web.Request, limit: int | None = None, what: str = "") -> tuple[Decoder, bytes]:
        workspace = self.authenticate(request)
        try:
            raw = await read_body(request, limit)
        except errors.PayloadTooLarge as exc:
            if limit is None:
                raise LimitError(exc.message) from None
            raise LimitError(f"the request body is over {limit} bytes; {what} must be smaller than {limit} bytes") from None
        decoder = Decoder(workspace=workspace, source=self.name, received=model.now_ms(), resolve=await self._resolver(workspace))
        return decoder, raw

    @staticmethod
    def body(request: web.Request, raw: bytes, *, empty_ok: bool = False) -> Any:
        """The body as JSON, or as a form when it says it is one (what ``curl -d`` sends)."""
        if not raw.strip():
            if empty_ok:
                return {}
            raise FieldError("the request body is empty")
        if request.content_type == "application/x-www-form-urlencoded":
            try:
                return forms.decode(raw)
            except forms.FormError as exc:
                raise FieldError(str(exc)) from None
        if request.content_type.startswith("multipart/"):
            raise FieldError("send the body as JSON or application/x-www-form-urlencoded")
        try:
            return parse_json(raw)
        except errors.InvalidJSON as exc:
            raise FieldError(exc.message) from None

    @staticmethod
    def path_id(request: web.Request) -> str:
        return check_id(request.match_info["customer_id"], "customer_id")

    async def _done(self, records: list[model.Record]) -> web.Response:
        await self.services.publish(records)
        # Customer.io documents a deletion as removing the person "and all their information":
        # here too, the profile's delete record and then a regulation that erases their history.
        for r in records:
            if r.schema == model.CUSTOMER_DELETE:
                await self.services.forget(r.value["workspace"], r.value["customer_id"], "customerio: delete person")
        return json_response({})

    # -- v1 ----------------------------------------------------------------------------

    async def identify(self, request: web.Request) -> web.Response:
        d, raw = await self._start(request)
        customer_id = self.path_id(request)
        return await self._done(d.identify(customer_id, _object(self.body(request, raw, empty_ok=True)), ""))

    async def delete(self, request: web.Request) -> web.Response:
        d, _ = await self._start(request)
        return await self._done(d.delete(self.path_id(request)))

    async def suppress(self, request: web.Request) -> web.Response:
        d, _ = await self._start(request)
        return await self._done(d.suppress(self.path_id(request), True))

    async def unsuppress(self, request: web.Request) -> web.Response:
        d, _ = await self._start(request)
        return await self._done(d.suppress(self.path_id(request), False))

    async def track(self, request: web.Request) -> web.Response:
        d, raw = await self._start(request)
        customer_id = self.path_id(request)
        body = _object(self.body(request, raw))
        self._known_keys(body, V1_EVENT_KEYS)
        return await self._done(
            d.event(
                customer_id=customer_id,
                anonymous_id="",
                name=body.get("name"),
                data=body.get("data"),
                timestamp=body.get("timestamp"),
                message_id=body.get("id"),
                kind=body.get("type"),
            )
        )

    async def track_anonymous(self, request: web.Request) -> web.Response:
        d, raw = await self._start(request)
        body = _object(self.body(request, raw))
        self._known_keys(body, V1_ANON_EVENT_KEYS)
        anonymous_id = body.get("anonymous_id")
        data = body.get("data")
        if anonymous_id in (None, ""):
            # An "invite event": no anonymous_id, but a recipient to write to.
            if not (isinstance(data, dict) and data.get("recipient")):
                raise FieldError("'anonymous_id' is required (or 'data.recipient' for an invite event)", field="anonymous_id", reason="required")
            anonymous_id = ""
        else:
            anonymous_id = check_id(anonymous_id, "anonymous_id")
        return await self._done(
            d.event(
                customer_id="",
                anonymous_id=anonymous_id,
                name=body.get("name"),
                data=data,
                timestamp=body.get("timestamp"),
                message_id=body.get("id"),
                kind=body.get("type"),
            )
        )

    async def add_device(self, request: web.Request) -> web.Response:
        d, raw = await self._start(request)
        customer_id = self.path_id(request)
        body = _object(self.body(request, raw))
        return await self._done(d.device(customer_id, body.get("device"), "id", "device"))

    async def delete_device(self, request: web.Request) -> web.Response:
        d, _ = await self._start(request)
        return await self._done(d.delete_device(self.path_id(request), request.match_info["token"], "token"))

    async def merge_customers(self, request: web.Request) -> web.Response:
        d, raw = await self._start(request)
        body = _object(self.body(request, raw))
        primary = await d.person(body.get("primary"), "primary")
        secondary = await d.person(body.get("secondary"), "secondary")
        if primary == secondary:
            raise FieldError("'primary' and 'secondary' name the same person", field="secondary")
        return await self._done([d.merge(primary, secondary)])

    @staticmethod
    def _known_keys(body: dict[str, Any], known: set[str]) -> None:
        # Refused rather than ignored: a stray top-level key (e.g. `price=` instead of
        # `data[price]=`) would otherwise be lost without the sender knowing.
        unknown = sorted(set(body) - known)
        if unknown:
            raise FieldError(f"unknown field '{unknown[0]}'; event properties go in 'data'", field=unknown[0])

    # -- v2 ----------------------------------------------------------------------------

    async def batch(self, request: web.Request) -> web.Response:
        d, raw = await self._start(request, MAX_V2_BATCH_BYTES, "a batch")
        if len(raw) >= MAX_V2_BATCH_BYTES:
            raise LimitError(f"the request body is {len(raw)} bytes; a batch must be smaller than {MAX_V2_BATCH_BYTES} bytes")
        body = _object(self.body(request, raw))
        ops = body.get("batch")
        if not isinstance(ops, list) or not ops:
            raise FieldError("'batch' must be a non-empty array of operations", field="batch", reason="required")
        records: list[model.Record] = []
        for i, op in enumerate(ops):
            try:
                records += await d.v2_operation(op)
            except errors.GatewayError as exc:
                exc.detail = {**(exc.detail if isinstance(exc.detail, dict) else {}), "batch_index": i}
                raise
        return await self._done(records)

    async def entity(self, request: web.Request) -> web.Response:
        d, raw = await self._start(request, MAX_V2_ENTITY_BYTES, "it")
        if len(raw) >= MAX_V2_ENTITY_BYTES:
            raise LimitError(f"the request body is {len(raw)} bytes; it must be smaller than {MAX_V2_ENTITY_BYTES} bytes")
        return await self._done(await d.v2_operation(_object(self.body(request, raw))))

    # -- errors ------------------------------------------------------------------------

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.Response:
        # Customer.io documents 400 for every client mistake, size limits included.
        status = 400 if error.status in (413, 415, 422) else error.status
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        if request.path.startswith("/api/v2/"):
            detail = error.detail if isinstance(error.detail, dict) else {}
            item: dict[str, Any] = {"reason": detail.get("reason") or _reason(status), "message": error.message}
            if error.param:
                item["field"] = error.param
            if "batch_index" in detail:
                item["batch_index"] = detail["batch_index"]
            return json_response({"errors": [item]}, status=status, headers=headers)
        return json_response({"meta": {"error": error.message}}, status=status, headers=headers)


def _reason(status: int) -> str:
    return {400: "invalid", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed", 503: "unavailable"}.get(status, "error")
