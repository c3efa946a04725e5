"""The Retainly dialect: ``POST|DELETE /customers``, ``POST|DELETE /arrays``, ``POST /events``.

What flows through it: each customer of ``POST /customers`` becomes one
``goalstream.CustomerUpsert`` (``id`` -> customer_id, every other key an attribute, JSON
types kept); each id of ``DELETE /customers`` a ``goalstream.CustomerDelete``; each record of
``POST /arrays`` a ``goalstream.CustomerArrays`` upsert of its ``data`` items into the array
attribute ``field`` (the processor upserts items by ``id``, appends those without one and
creates a missing customer); each record of ``DELETE /arrays`` a ``CustomerArrays`` delete of
its ``ids``; ``POST /events`` one ``goalstream.Event`` whose properties are ``data``. A whole
request is validated before anything is published, then published in one call (one batch
for 10,000 customers).

Authentication: the ``secret`` (or ``api-secret``) header is the credential; the ``key`` (or
``api-key``) header names the workspace and, when it names one, must name the secret's.

The vendor's API shows two error dialects and both are kept: the customer and array calls
answer 422 FastAPI/pydantic style, ``{"detail": [{"loc", "msg", "type"}]}`` (every violation
found, each with its exact location), and the events call Laravel style,
``{"errors": {"data.param1": ["..."]}}``. Invalid JSON is 400 with a JSON string body, bad
credentials 403 ``{"message": "forbidden"}``.

"1 nesting layer of arrays", precisely: an attribute value is a scalar or an array (never a
JSON object); that array's items are scalars, arrays or objects; an object may appear only
as an array item, and its values follow the same rules; on any path from the attribute
value down there are at most two arrays (the attribute's own and one nested layer). So the
seed's ``[{..., "object_field_array_with_nested_array": [{...scalars}]}]`` is accepted and a
third array level, or an object directly inside an object, is refused. ``POST /arrays``
``data`` is the attribute's own array, so its items' values may hold one more array level.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from schemas import model

from .. import errors
from .base import Dialect, json_response, parse_json, read_body

MAX_ITEMS = 10_000  # customers, ids, array records per request
MAX_FIELDS = 500  # keys of one customer object, "id" included (it is one of its fields)
MAX_ARRAY_ATTRIBUTES = 15
MAX_ARRAY_LEVELS = 2  # the attribute's own array plus one nesting layer
MAX_STRING = 1000
MAX_EVENT_NAME = 50
MAX_EVENT_FIELDS = 50

INVALID_JSON = "Invalid JSON data in request body: Syntax error"
FORBIDDEN = {"message": "forbidden"}

Problems = list[dict[str, Any]]


def _problem(problems: Problems, loc: tuple[Any, ...], msg: str, type_: str) -> None:
    problems.append({"loc": list(loc), "msg": msg, "type": type_})


def _id_problem(value: Any) -> str | None:
    """Why ``value`` cannot be a customer or array-item id (None if it can)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return "Value error, an id must be a string or an integer"
    if isinstance(value, str):
        if not value.strip():
            return "Value error, an id must not be empty"
        if len(value) > MAX_STRING:
            return f"Value error, an id must have at most {MAX_STRING} characters"
    return None


def _check_value(value: Any, loc: tuple[Any, ...], problems: Problems, arrays_above: int, in_array: bool) -> None:
    """One attribute value (or anything inside one) against the documented value rules."""
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            _problem(problems, loc, f"String should have at most {MAX_STRING} characters", "string_too_long")
    elif isinstance(value, list):
        if arrays_above >= MAX_ARRAY_LEVELS:
            _problem(problems, loc, "Value error, array items could have only 1 nesting layer of arrays in the attribute value", "value_error")
            return
        for j, item in enumerate(value):
            _check_value(item, (*loc, j), problems, arrays_above + 1, True)
    elif isinstance(value, dict):
        if not in_array:
            _problem(problems, loc, "Value error, attribute value could not be an associative array (JSON object)", "value_error")
            return
        for k, v in value.items():
            _check_value(v, (*loc, k), problems, arrays_above, False)


def _envelope(body: Any, key: str, problems: Problems) -> list[Any] | None:
    """The body's one list ``key`` (1..10,000 items), or None with the problems noted."""
    if not isinstance(body, dict):
        _problem(problems, ("body",), "Input should be a valid dictionary or object to extract fields from", "model_attributes_type")
        return None
    for extra in body:
        if extra != key:
            _problem(problems, ("body", extra), "Extra inputs are not permitted", "extra_forbidden")
    if key not in body:
        _problem(problems, ("body", key), "Field required", "missing")
        return None
    items = body[key]
    if not isinstance(items, list):
        _problem(problems, ("body", key), "Input should be a valid list", "list_type")
        return None
    if not items:
        _problem(problems, ("body", key), "List should have at least 1 item after validation, not 0", "too_short")
        return None
    if len(items) > MAX_ITEMS:
        # Items are not looked at: the request is refused whole and may be huge.
        _problem(problems, ("body", key), f"List should have at most {MAX_ITEMS} items after validation, not {len(items)}", "too_long")
        return None
    return items


def _record_fields(item: Any, loc: tuple[Any, ...], allowed: tuple[str, ...], problems: Problems) -> bool:
    """An array record is an object with exactly the ``allowed`` keys; False if not an object."""
    if not isinstance(item, dict):
        _problem(problems, loc, "Input should be a valid dictionary", "dict_type")
        return False
    for k in item:
        if k not in allowed:
            _problem(problems, (*loc, k), "Extra inputs are not permitted", "extra_forbidden")
    for k in allowed:
        if k not in item:
            _problem(problems, (*loc, k), "Field required", "missing")
    if "customer_id" in item and (why := _id_problem(item["customer_id"])):
        _problem(problems, (*loc, "customer_id"), why, "value_error")
    if "field" in item:
        field = item["field"]
        if not isinstance(field, str):
            _problem(problems, (*loc, "field"), "Input should be a valid string", "string_type")
        elif not field.strip():
            _problem(problems, (*loc, "field"), "String should have at least 1 character", "string_too_short")
        elif len(field) > MAX_STRING:
            _problem(problems, (*loc, "field"), f"String should have at most {MAX_STRING} characters", "string_too_long")
    return True


def check_customers(body: Any) -> Problems:
    """Every violation of the ``POST /customers`` rules in ``body`` (empty if none)."""
    problems: Problems = []
    customers = _envelope(body, "customers", problems)
    for i, customer in enumerate(customers or ()):
        loc = ("body", "customers", i)
        if not isinstance(customer, dict):
            _problem(problems, loc, "Input should be a valid dictionary", "dict_type")
            continue
        if len(customer) > MAX_FIELDS:
            _problem(problems, loc, f"Value error, a customer can have at most {MAX_FIELDS} fields, not {len(customer)}", "value_error")
        arrays = sum(1 for v in customer.values() if isinstance(v, list))
        if arrays > MAX_ARRAY_ATTRIBUTES:
            _problem(problems, loc, f"Value error, a customer can have at most {MAX_ARRAY_ATTRIBUTES} attributes of type array, not {arrays}", "value_error")
        if "id" not in customer:
            _problem(problems, (*loc, "id"), "Field required", "missing")
        elif why := _id_problem(customer["id"]):
            _problem(problems, (*loc, "id"), why, "value_error")
        for k, v in customer.items():
            if k != "id":
                _check_value(v, (*loc, k), problems, 0, False)
    return problems


def check_customer_deletes(body: Any) -> Problems:
    problems: Problems = []
    ids = _envelope(body, "customers_ids", problems)
    for i, value in enumerate(ids or ()):
        if why := _id_problem(value):
            _problem(problems, ("body", "customers_ids", i), why, "value_error")
    return problems


def check_array_upserts(body: Any) -> Problems:
    problems: Problems = []
    records = _envelope(body, "records", problems)
    for i, record in enumerate(records or ()):
        loc = ("body", "records", i)
        if not _record_fields(record, loc, ("customer_id", "field", "data"), problems) or "data" not in record:
            continue
        data = record["data"]
        if not isinstance(data, list):
            _problem(problems, (*loc, "data"), "Input should be a valid list", "list_type")
            continue
        for j, item in enumerate(data):
            iloc = (*loc, "data", j)
            if not isinstance(item, dict):
                _problem(problems, iloc, "Input should be a valid dictionary", "dict_type")
                continue
            # A null id is an item without one (appended); any other id must be usable as a key.
            if item.get("id") is not None and (why := _id_problem(item["id"])):
                _problem(problems, (*iloc, "id"), why, "value_error")
            for k, v in item.items():
                if k != "id":
                    _check_value(v, (*iloc, k), problems, 1, False)
    return problems


def check_array_deletes(body: Any) -> Problems:
    problems: Problems = []
    records = _envelope(body, "records", problems)
    for i, record in enumerate(records or ()):
        loc = ("body", "records", i)
        if not _record_fields(record, loc, ("customer_id", "field", "ids"), problems) or "ids" not in record:
            continue
        ids = record["ids"]
        if not isinstance(ids, list):
            _problem(problems, (*loc, "ids"), "Input should be a valid list", "list_type")
        elif not ids:
            _problem(problems, (*loc, "ids"), "List should have at least 1 item after validation, not 0", "too_short")
        else:
            for j, value in enumerate(ids):
                if why := _id_problem(value):
                    _problem(problems, (*loc, "ids", j), why, "value_error")
    return problems


def _long_strings(value: Any, path: str) -> list[str]:
    """Dotted paths of strings over the limit anywhere in ``value`` (iterative: depth is the sender's)."""
    found, stack = [], [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            if len(v) > MAX_STRING:
                found.append(p)
        elif isinstance(v, list):
            stack.extend((x, f"{p}.{j}") for j, x in enumerate(v))
        elif isinstance(v, dict):
            stack.extend((x, f"{p}.{k}") for k, x in v.items())
    return sorted(found)


def check_event(body: Any) -> dict[str, list[str]]:
    """Every violation of the ``POST /events`` rules, Laravel style: {field: [messages]}."""
    errs: dict[str, list[str]] = {}

    def add(key: str, msg: str) -> None:
        errs.setdefault(key, []).append(msg)

    if not isinstance(body, dict):
        add("body", "The request body must be a JSON object.")
        return errs
    for k in body:
        if k not in ("customer_id", "event", "data"):
            add(k, f"The {k} field is not allowed.")
    cid = body.get("customer_id")
    if cid is None or (isinstance(cid, str) and not cid.strip()):
        add("customer_id", "The customer id field is required.")
    elif isinstance(cid, bool) or not isinstance(cid, (str, int)):
        add("customer_id", "The customer id must be a string or an integer.")
    elif isinstance(cid, str) and len(cid) > MAX_STRING:
        add("customer_id", f"The customer id must not be greater than {MAX_STRING} characters.")
    name = body.get("event")
    if name is None or (isinstance(name, str) and not name.strip()):
        add("event", "The event field is required.")
    elif not isinstance(name, str):
        add("event", "The event must be a string.")
    elif len(name) > MAX_EVENT_NAME:
        add("event", f"The event must not be greater than {MAX_EVENT_NAME} characters.")
    data = body.get("data")
    if data is None or data == []:
        return errs  # PHP clients encode an empty data map as []
    if not isinstance(data, dict):
        add("data", "The data must be an object.")
        return errs
    if len(data) > MAX_EVENT_FIELDS:
        add("data", f"The data must not have more than {MAX_EVENT_FIELDS} fields.")
    for k, v in data.items():
        if isinstance(v, dict):
            add(f"data.{k}", f"The data.{k} must not be an associative array.")
            continue
        for p in _long_strings(v, f"data.{k}"):
            add(p, f"The {p} must not be greater than {MAX_STRING} characters.")
    return errs


def _refuse(problems: Problems) -> errors.Unprocessable:
    first = problems[0]
    where = ".".join(str(p) for p in first["loc"])
    return errors.Unprocessable(f"{len(problems)} validation error(s); first: {where}: {first['msg']}", detail=problems)


class Retainly(Dialect):
    name = "retainly"
    prefixes = ("/customers", "/arrays", "/events")

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/customers", self.upsert_customers),
            web.delete("/customers", self.delete_customers),
            web.post("/arrays", self.upsert_arrays),
            web.delete("/arrays", self.delete_arrays),
            web.post("/events", self.create_event),
        ]

    def authenticate(self, request: web.Request) -> str:
        headers = request.headers
        key = headers.get("key") or headers.get("api-key")
        secret = headers.get("secret") or headers.get("api-secret")
        if not key or not secret:
            raise errors.Forbidden("send both the 'key' and 'secret' headers (or 'api-key' and 'api-secret')")
        credentials = self.services.credentials
        workspace = credentials.match("retainly_secret", secret)
        if workspace is None:
            raise errors.Forbidden("the API key secret is not valid")
        # The key only names the workspace; an unknown key is tolerated (the seed's own
        # /arrays example sends a mistyped one) but a key of another workspace is not.
        named = credentials.match("retainly_key", key)
        if named is not None and named != workspace:
            raise errors.Forbidden("the API key and the API key secret belong to different workspaces")
        return workspace

    async def _body(self, request: web.Request) -> tuple[str, Any]:
        """Authenticate first (a caller without credentials learns nothing), then parse."""
        workspace = self.authenticate(request)
        raw = await read_body(request)
        try:
            return workspace, parse_json(raw)
        except errors.InexactJSON:
            raise  # valid JSON, refused for a reason the message names
        except errors.InvalidJSON:
            raise errors.InvalidJSON(INVALID_JSON) from None

    async def upsert_customers(self, request: web.Request) -> web.Response:
        workspace, body = await self._body(request)
        if problems := check_customers(body):
            raise _refuse(problems)
        received = model.now_ms()
        records = [
            model.customer_upsert(
                workspace=workspace,
                customer_id=str(c["id"]),
                attributes={k: v for k, v in c.items() if k != "id"},
                source=self.name,
                received_at_ms=received,
            )
            for c in body["customers"]
        ]
        await self.services.publish(records)
        return json_response(f"{len(records)} customer(s) created or updated")

    async def delete_customers(self, request: web.Request) -> web.Response:
        workspace, body = await self._body(request)
        if problems := check_customer_deletes(body):
            raise _refuse(problems)
        received = model.now_ms()
        records = [
            model.customer_delete(workspace=workspace, customer_id=str(cid), source=self.name, received_at_ms=received)
            for cid in body["customers_ids"]
        ]
        await self.services.publish(records)
        return json_response(f"{len(records)} customer(s) deleted")

    async def upsert_arrays(self, request: web.Request) -> web.Response:
        return await self._arrays(request, check_array_upserts, "upsert", "data", "saved")

    async def delete_arrays(self, request: web.Request) -> web.Response:
        return await self._arrays(request, check_array_deletes, "delete", "ids", "deleted")

    async def _arrays(self, request: web.Request, check: Any, op: str, items_key: str, verb: str) -> web.Response:
        """POST and DELETE /arrays: one ``customer_arrays`` record per request record."""
        workspace, body = await self._body(request)
        if problems := check(body):
            raise _refuse(problems)
        received = model.now_ms()
        records = [
            model.customer_arrays(
                workspace=workspace,
                customer_id=str(r["customer_id"]),
                field=r["field"],
                op=op,
                items=r[items_key],
                source=self.name,
                received_at_ms=received,
            )
            for r in body["records"]
        ]
        await self.services.publish(records)
        return json_response(f"{len(records)} array record(s) {verb}")

    async def create_event(self, request: web.Request) -> web.Response:
        workspace, body = await self._body(request)
        if errs := check_event(body):
            key, msgs = next(iter(errs.items()))
            raise errors.Unprocessable(f"{key}: {msgs[0]}", detail=errs)
        data = body.get("data") or {}
        await self.services.publish(
            [
                model.event(
                    workspace=workspace,
                    customer_id=str(body["customer_id"]),
                    name=body["event"],
                    properties=data,
                    source=self.name,
                )
            ]
        )
        return web.Response(status=200)  # the seed: "No response body"

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.Response:
        status = error.status
        headers = {"Retry-After": str(error.retry_after)} if error.retry_after else None
        if isinstance(error, (errors.Unauthenticated, errors.Forbidden)):
            return json_response(FORBIDDEN, status=403, headers=headers)
        events = request.path == "/events" or request.path.startswith("/events/")
        if status == 422:
            if isinstance(error.detail, dict):
                return json_response({"errors": error.detail}, status=422, headers=headers)
            if isinstance(error.detail, list):
                return json_response({"detail": error.detail}, status=422, headers=headers)
            if events:
                return json_response({"errors": {"request": [error.message]}}, status=422, headers=headers)
            return json_response({"detail": [{"loc": ["body"], "msg": error.message, "type": "value_error"}]}, status=422, headers=headers)
        # Everything else: the events API answers a JSON string (its 400 schema), the
        # customer and array API FastAPI's {"detail": "..."}; 400 is a string on both.
        if events or status == 400:
            return json_response(error.message, status=status, headers=headers)
        return json_response({"detail": error.message}, status=status, headers=headers)
