"""The Traitly dialect: ``/api/v1/event``, ``/api/v1/customer`` (and ``/api/...`` without v1).

Requests carry ``Authorization: Token <token>`` (``Bearer`` is accepted too) naming a
workspace. POSTed events become ``goalstream.Event`` records, POSTed customers
``goalstream.CustomerUpsert`` records (a repeat POST merges attributes; the processor
keeps ``custom_attributes`` as given). GETs page through ClickHouse, always within the
caller's workspace. Bodies are parsed as JSON whatever the Content-Type, because the
seed's own curl examples send ``--data`` without one. Errors use one JSON shape:
``{"error": {"type", "message", "param"?}}`` with the seed's type names.
"""

from __future__ import annotations

import base64
import time
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from schemas import model

from .. import errors
from .base import Dialect, check_properties, identifier, json_response, limit_param, parse_json, read_body, text, unix_seconds

# The attributes the seed always prints for a customer (null when not given).
CUSTOMER_FIELDS = (
    "customer_id",
    "name",
    "created_at",
    "monthly_payment_amount",
    "location",
    "email",
    "phone_number",
    "organisation_id",
    "plan",
    "custom_attributes",
)
MAX_BATCH = 1000

ERROR_TYPES: dict[int, str] = {
    400: "api_invalid_request_error",
    401: "api_authentication_error",
    403: "api_invalid_request_error",
    404: "api_invalid_request_error",
    405: "api_invalid_request_error",
    406: "api_invalid_request_error",
    413: "api_invalid_request_error",
    415: "api_invalid_request_error",
    422: "api_invalid_request_error",
    429: "api_error",
    500: "api_error",
    503: "api_error",
}


def _now_s() -> str:
    return str(int(time.time()))


def _seconds(ts: Any) -> str:
    if isinstance(ts, datetime):
        return str(int(ts.timestamp()))
    return str(int(ts) // 1000)


def _encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


MAX_CURSOR = 1024  # characters; the cursors this API returns are far shorter


def _cursor_part(value: Any, kind: type) -> bool:
    if kind is int:  # a timestamp in ms, as the events list returns it
        return type(value) is int and 0 <= value < 2**63
    return type(value) is str and len(value) <= 1000  # an id (message_id, customer_id)


def _decode_cursor(raw: str, kinds: tuple[type, ...]) -> list[Any]:
    """A cursor this API returned: its values, of exactly the types it put in; else 400
    (a forged cursor never restarts the listing nor reaches the query)."""
    if len(raw) <= MAX_CURSOR:
        try:
            values = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        except (ValueError, orjson.JSONDecodeError):
            values = None
        if isinstance(values, list) and len(values) == len(kinds) and all(map(_cursor_part, values, kinds)):
            return values
    raise errors.InvalidRequest("'cursor' is not a cursor this API returned", param="cursor")


class Traitly(Dialect):
    name = "traitly"
    prefixes = ("/api/",)

    def routes(self) -> list[web.RouteDef]:
        r = []
        for base in ("/api/v1", "/api"):
            r += [
                web.post(f"{base}/event", self.create_events),
                web.get(f"{base}/event", self.list_events, allow_head=False),
                web.post(f"{base}/customer", self.create_customers),
                web.get(f"{base}/customer", self.list_customers, allow_head=False),
            ]
        # The seed's curl example says recommended-next-action (singular): both work.
        for path in ("/api/v1/recommended-next-actions", "/api/v1/recommended-next-action"):
            r.append(web.get(path, self.recommended_next_actions, allow_head=False))
        return r

    # -- shared request handling -------------------------------------------------------

    def authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() not in ("token", "bearer") or not token.strip():
            raise errors.Unauthenticated("provide your API token as 'Authorization: Token <token>'")
        workspace = self.services.credentials.match("traitly_token", token.strip())
        if workspace is None:
            raise errors.Unauthenticated("the API token is invalid")
        return workspace

    @staticmethod
    def check_accept(request: web.Request) -> None:
        accept = request.headers.get("Accept")
        if not accept:
            return
        for part in accept.split(","):
            media = part.split(";")[0].strip().lower()
            if media in ("*/*", "application/*", "application/json") or media.endswith("+json"):
                return
        raise errors.NotAcceptable("this API answers in JSON only; send 'Accept: application/json'")

    async def _objects(self, request: web.Request) -> list[dict[str, Any]]:
        body = parse_json(await read_body(request))
        items = body if isinstance(body, list) else [body]
        if not items:
            raise errors.InvalidRequest("the request body is an empty list")
        if len(items) > MAX_BATCH:
            raise errors.LimitExceeded(f"at most {MAX_BATCH} objects per request")
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                where = f"item {i} of the body" if isinstance(body, list) else "the request body"
                raise errors.InvalidRequest(f"{where} must be a JSON object")
        return items

    @staticmethod
    def _at(items: list, i: int, exc: errors.GatewayError) -> errors.GatewayError:
        # In a batch, say which item failed; a single object keeps the plain message.
        if len(items) > 1:
            exc.message = f"item {i}: {exc.message}"
            exc.args = (exc.message,)
        return exc

    async def _create(self, request: web.Request, decode: Any, object_name: str) -> web.Response:
        """POST of one object or a list: decode each (all or nothing), publish, echo them."""
        self.check_accept(request)
        workspace = self.authenticate(request)
        items = await self._objects(request)
        received = model.now_ms()
        records, data = [], []
        for i, item in enumerate(items):
            try:
                record, shown = decode(workspace, item, received)
            except errors.GatewayError as exc:
                raise self._at(items, i, exc) from None
            records.append(record)
            data.append(shown)
        await self.services.publish(records)
        return json_response({"data": data, "metadata": {}, "created": _now_s(), "object": object_name})

    def _list_query(self, request: web.Request, filters: tuple[str, ...]) -> tuple[int, list[str], dict[str, Any]]:
        """A GET list's common start: JSON accepted, caller's workspace only, limit, equality filters."""
        self.check_accept(request)
        workspace = self.authenticate(request)
        limit = limit_param(request)
        where = ["workspace = {ws:String}"]
        params: dict[str, Any] = {"ws": workspace, "n": limit + 1}
        for param in filters:
            if value := request.query.get(param):
                where.append(f"{param} = {{{param}:String}}")
                params[param] = value
        return limit, where, params

    # -- events ------------------------------------------------------------------------

    async def create_events(self, request: web.Request) -> web.Response:
        return await self._create(request, self._decode_event, "event")

    def _decode_event(self, workspace: str, item: dict[str, Any], received: int) -> tuple[model.Record, dict[str, Any]]:
        customer_id = identifier(item.get("customer_id"), "customer_id")
        name = text(item.get("name"), "name", max_len=255)
        ts = unix_seconds(item.get("created_at"), "created_at")
        message_id = identifier(item.get("message_id"), "message_id", required=False)
        properties = {k: v for k, v in item.items() if k not in ("customer_id", "name", "created_at", "message_id")}
        check_properties(properties, "properties")
        rec = model.event(
            workspace=workspace,
            customer_id=customer_id,
            name=name,
            properties=properties,
            source=self.name,
            timestamp_ms=ts,
            received_at_ms=received,
            message_id=message_id,
        )
        return rec, {"customer_id": customer_id, "name": name, "created_at": _seconds(rec.value["timestamp"]), "success": 1}

    async def list_events(self, request: web.Request) -> web.Response:
        # The seed's table marks customer_id and name required, but its own curl example
        # sends neither and gets a list: both are filters here, applied when given.
        limit, where, params = self._list_query(request, ("name",))
        if customer_id := request.query.get("customer_id"):
            # A merged customer's events are the primary's from the merge on (Customer.io
            # merge_customers, Segment alias).
            where.append("(customer_id IN {ids:Array(String)} OR (customer_id = '' AND anonymous_id IN {ids:Array(String)}))")
            params["ids"] = await self.services.identity(params["ws"], customer_id)
        if cursor := request.query.get("cursor"):
            ts, mid = _decode_cursor(cursor, (int, str))
            where.append("(toUnixTimestamp64Milli(timestamp), message_id) > ({cts:Int64}, {cmid:String})")
            params.update(cts=ts, cmid=mid)
        rows = await self.services.read(
            "SELECT message_id, customer_id, name, toUnixTimestamp64Milli(timestamp) AS ts, properties "
            f"FROM events WHERE {' AND '.join(where)} ORDER BY timestamp, message_id LIMIT {{n:UInt32}}",
            params,
        )
        page, more = rows[:limit], len(rows) > limit
        data = [
            {
                "customer_id": r["customer_id"],
                "name": r["name"],
                "created_at": _seconds(r["ts"]),
                "success": 1,
                "message_id": r["message_id"],
                "properties": orjson.loads(r["properties"]),
            }
            for r in page
        ]
        metadata = {"next_cursor": _encode_cursor([page[-1]["ts"], page[-1]["message_id"]])} if more else {}
        return json_response({"data": data, "metadata": metadata, "retrieved": _now_s(), "object": "event"})

    # -- customers ---------------------------------------------------------------------

    async def create_customers(self, request: web.Request) -> web.Response:
        return await self._create(request, self._decode_customer, "customer")

    def _decode_customer(self, workspace: str, item: dict[str, Any], received: int) -> tuple[model.Record, dict[str, Any]]:
        customer_id = identifier(item.get("customer_id"), "customer_id")
        name = text(item.get("name"), "name", max_len=255)
        email = text(item.get("email"), "email", max_len=255)
        if "@" not in email or any(c.isspace() for c in email):
            raise errors.InvalidRequest("'email' is not an email address", param="email")
        plan = text(item.get("plan"), "plan", max_len=255)
        created = unix_seconds(item.get("created_at"), "created_at")
        custom = item.get("custom_attributes")
        if custom is not None and not isinstance(custom, dict):
            raise errors.InvalidRequest("'custom_attributes' must be a JSON object", param="custom_attributes")
        message_id = identifier(item.get("message_id"), "message_id", required=False)
        attributes = {k: v for k, v in item.items() if k not in ("customer_id", "created_at", "message_id")}
        attributes.update(name=name, email=email, plan=plan)
        check_properties(attributes, "attributes")
        rec = model.customer_upsert(
            workspace=workspace,
            customer_id=customer_id,
            attributes=attributes,
            source=self.name,
            created_at_ms=created,
            received_at_ms=received,
            message_id=message_id,
        )
        shown = {f: None for f in CUSTOMER_FIELDS}
        shown.update(attributes)
        shown.update(customer_id=customer_id, created_at=_seconds(created if created is not None else received))
        return rec, shown

    async def list_customers(self, request: web.Request) -> web.Response:
        limit, where, params = self._list_query(request, ("customer_id", "name", "plan"))
        if cursor := request.query.get("cursor"):
            (after,) = _decode_cursor(cursor, (str,))
            where.append("customer_id > {after:String}")
            params["after"] = after
        rows = await self.services.read(
            "SELECT customer_id, toUnixTimestamp64Milli(created_at) AS created, attributes "
            f"FROM customers FINAL WHERE {' AND '.join(where)} ORDER BY customer_id LIMIT {{n:UInt32}}",
            params,
        )
        page, more = rows[:limit], len(rows) > limit
        data = []
        for r in page:
            shown: dict[str, Any] = {f: None for f in CUSTOMER_FIELDS}
            shown["custom_attributes"] = {}
            shown.update(orjson.loads(r["attributes"]))
            shown.update(customer_id=r["customer_id"], created_at=_seconds(r["created"]))
            data.append(shown)
        metadata = {"next_cursor": _encode_cursor([page[-1]["customer_id"]])} if more else {}
        return json_response({"data": data, "metadata": metadata, "retrieved": _now_s(), "object": "customer"})

    # -- goals -------------------------------------------------------------------------

    async def recommended_next_actions(self, request: web.Request) -> web.Response:
        """The customer's likelihood in a goal and the goal's actions ranked by importance,
        computed now from ClickHouse with the goal's current model (as the scorer does)."""
        self.check_accept(request)
        workspace = self.authenticate(request)
        customer_id = identifier(request.query.get("customer_id"), "customer_id")
        goal_name = request.query.get("goal_name")
        goals_here = self.services.config.goals_of(workspace)
        if not goals_here:  # naming a goal could not help: say what is missing (issue 14)
            raise errors.InvalidRequest("this workspace has no goals configured (add a [[goals]] entry for it in goalstream.toml)",
                                        param="goal_name")
        if goal_name:
            goal = next((g for g in goals_here if g.name == goal_name), None)
            if goal is None:
                raise errors.InvalidRequest(f"no goal named '{goal_name}' in this workspace", param="goal_name")
        else:
            goal = goals_here[0]  # the seed marks goal_name optional: the workspace's first goal
        a = await self.services.recommend(workspace, goal, customer_id)
        if a is None:
            raise errors.NotFound(f"no customer with customer_id '{customer_id}'", param="customer_id")
        body = {
            "data": a.actions,
            "likelihood": a.likelihood,
            "meta": {"customer_id": customer_id, "goal_name": goal.name},
            "timestamp": a.at_ms // 1000,
            "object": "recommended-next-actions",
        }
        # The body keeps the seed's shape; which model answered (a trained one, or the
        # goal's base rate while there is too little labelled data) is said in a header.
        return json_response(body, headers={"X-Goalstream-Model": f"{a.model_kind} {a.model_version}"})

    # -- errors ------------------------------------------------------------------------

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.Response:
        status = error.status
        body: dict[str, Any] = {"type": ERROR_TYPES.get(status, "api_error"), "message": error.message}
        if error.param:
            body["param"] = error.param
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        return json_response({"error": body}, status=status, headers=headers)
