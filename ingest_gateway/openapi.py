"""The gateway's OpenAPI 3.1 document (``GET /openapi.json``) and a page that lists it
(``GET /docs``), built from one table.

``OPERATIONS`` maps ``(METHOD, path template)`` to one operation: which dialect (tag), its
auth (a ``securitySchemes`` name), the request body and query parameters. Every operation
answers its dialect's error shape (``components.schemas.<Dialect>Error``) for 4XX/5XX and
``X-Request-Id`` on every response. A new route is one entry here; the test
(tests/unit/test_openapi.py) names any route of ``create_app`` that has none, and any
entry that is not routed. Routes in ``NOT_OPERATIONS`` are catch-alls, not operations.
The document is built once per process (it depends on nothing at runtime).
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

VERSION = "1"
# trigger.ly's catch-alls under its prefixes: they only render trigger.ly's own 404/405
# (and dead-letter the call), so they are no operation of the API.
NOT_OPERATIONS = {("*", "/v1/users/{tail}"), ("*", "/v1/events/{tail}")}

_OBJ: dict[str, Any] = {"type": "object", "additionalProperties": True}
_STR = {"type": "string"}
_PROPS = {"type": "object", "additionalProperties": True, "description": "free-form attributes"}
_TS = {"type": ["string", "number"], "description": "ISO 8601 time or epoch seconds"}

SECURITY_SCHEMES: dict[str, Any] = {
    "traitlyToken": {"type": "apiKey", "in": "header", "name": "Authorization",
                     "description": "`Authorization: Token <traitly_token>` (`Bearer` is accepted too)"},
    "triggerlyApiToken": {"type": "apiKey", "in": "query", "name": "api_token",
                          "description": "the workspace's triggerly_api_token (never logged)"},
    "retainlyKey": {"type": "apiKey", "in": "header", "name": "key", "description": "also `api-key`"},
    "retainlySecret": {"type": "apiKey", "in": "header", "name": "secret", "description": "also `api-secret`"},
    "customerioBasic": {"type": "http", "scheme": "basic", "description": "user: customerio_site_id, password: customerio_api_key"},
    "segmentBasic": {"type": "http", "scheme": "basic",
                     "description": "user: segment_write_key, empty password; or `writeKey` in the JSON body"},
    "adminBearer": {"type": "http", "scheme": "bearer",
                    "description": "operator_token, a workspace's admin_token, or the running stack's per-run token"},
}

ERROR_SCHEMAS: dict[str, Any] = {
    "TraitlyError": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["type", "message"],
        "properties": {"type": _STR, "message": _STR, "param": _STR}}}},
    "TriggerlyError": {"type": "object", "required": ["status", "message"], "description": "a 1x1 GIF instead with ?image=1",
                       "properties": {"status": {"const": "error"}, "message": _STR, "param": _STR}},
    "RetainlyError": {"description": "403: {message: forbidden}; 422: {detail: [...]} or {errors: {...}}; else a string or {detail: string}",
                      "oneOf": [_STR, {"type": "object", "properties": {"message": _STR, "detail": {}, "errors": {}}}]},
    "CustomerioError": {"description": "v1: {meta: {error}}; /api/v2: {errors: [{reason, message, field?, batch_index?}]}",
                        "type": "object", "properties": {
                            "meta": {"type": "object", "properties": {"error": _STR}},
                            "errors": {"type": "array", "items": {"type": "object", "properties": {
                                "reason": _STR, "message": _STR, "field": _STR, "batch_index": {"type": "integer"}}}}}},
    "SegmentError": {"type": "object", "required": ["success", "message"],
                     "properties": {"success": {"const": False}, "code": _STR, "message": _STR}},
}
# Which error shape and tag each dialect answers in; the admin API answers Traitly's.
_ERROR_OF = {"traitly": "TraitlyError", "triggerly": "TriggerlyError", "retainly": "RetainlyError",
             "customerio": "CustomerioError", "segment": "SegmentError", "admin": "TraitlyError"}

_SEGMENT_MESSAGE = {"type": "object", "properties": {
    "type": _STR, "userId": _STR, "anonymousId": _STR, "messageId": _STR, "event": _STR, "name": _STR,
    "properties": _PROPS, "traits": _PROPS, "context": _PROPS, "timestamp": _TS, "groupId": _STR, "previousId": _STR,
    "writeKey": _STR}, "additionalProperties": True}
_TRAITLY_EVENT = {"type": "object", "required": ["customer_id", "name"], "additionalProperties": True, "properties": {
    "customer_id": _STR, "name": _STR, "event_id": _STR, "timestamp": _TS, "properties": _PROPS}}
_TRAITLY_CUSTOMER = {"type": "object", "required": ["customer_id"], "additionalProperties": True, "properties": {
    "customer_id": _STR, "properties": _PROPS}}
_RETAINLY_CUSTOMER = {"type": "object", "additionalProperties": True, "properties": {"customer_id": _STR, "email": _STR}}


def _list_of(item: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [item, {"type": "array", "items": item}]}


def _q(name: str, description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": _STR, "description": description}


def _p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _STR}


def op(dialect: str, summary: str, security: list[dict[str, list[str]]], *, body: dict[str, Any] | None = None,
       content: str = "application/json", params: list[dict[str, Any]] | None = None, ok: str = "accepted") -> dict[str, Any]:
    """One operation: ``dialect`` is its tag and names its error shape."""
    error = {"$ref": f"#/components/responses/{_ERROR_OF[dialect]}"}
    operation: dict[str, Any] = {
        "tags": [dialect], "summary": summary, "security": security,
        "responses": {"200": {"description": ok, "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}}},
                      "4XX": error, "5XX": error},
        "parameters": [{"$ref": "#/components/parameters/X-Request-Id"}, *(params or [])],
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {content: {"schema": body}}}
    return operation


_TRAITLY = [{"traitlyToken": []}]
_TRIGGERLY = [{"triggerlyApiToken": []}]
_RETAINLY = [{"retainlyKey": [], "retainlySecret": []}]
_CIO = [{"customerioBasic": []}]
_SEGMENT = [{"segmentBasic": []}, {}]  # {}: the writeKey may come in the body instead
_ADMIN = [{"adminBearer": []}]
_TRIGGERLY_PARAMS = [_q("data", "the JSON object, base64-encoded", True), _q("image", "1: answer a 1x1 GIF (pixel)")]
_CIO_ID = [_p("customer_id")]

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {}
for _base in ("/api/v1", "/api"):
    OPERATIONS |= {
        ("POST", f"{_base}/event"): op("traitly", "Create events", _TRAITLY, body=_list_of(_TRAITLY_EVENT)),
        ("GET", f"{_base}/event"): op("traitly", "List events", _TRAITLY, ok="a page of events", params=[
            _q("customer_id", "only this customer's"), _q("name", "only this event name"), _q("cursor", "next page"),
            _q("limit", "page size")]),
        ("POST", f"{_base}/customer"): op("traitly", "Create or update customers", _TRAITLY, body=_list_of(_TRAITLY_CUSTOMER)),
        ("GET", f"{_base}/customer"): op("traitly", "List customers", _TRAITLY, ok="a page of customers", params=[
            _q("cursor", "next page"), _q("limit", "page size")]),
    }
for _path in ("/api/v1/recommended-next-actions", "/api/v1/recommended-next-action"):
    OPERATIONS[("GET", _path)] = op("traitly", "Recommended next actions for a customer (propensity per goal)", _TRAITLY,
                                    ok="actions ranked by score", params=[_q("customer_id", "the customer", True), _q("goal_name", "one goal")])
OPERATIONS |= {
    ("GET", "/v1/users/track"): op("triggerly", "Track a user (pixel or GET)", _TRIGGERLY, params=_TRIGGERLY_PARAMS),
    ("GET", "/v1/events/track"): op("triggerly", "Track an event (pixel or GET)", _TRIGGERLY, params=_TRIGGERLY_PARAMS),
    ("POST", "/customers"): op("retainly", "Upsert customers", _RETAINLY, body=_list_of(_RETAINLY_CUSTOMER)),
    ("DELETE", "/customers"): op("retainly", "Delete customers", _RETAINLY, body=_list_of(_RETAINLY_CUSTOMER)),
    ("POST", "/arrays"): op("retainly", "Upsert array items of customers", _RETAINLY, body=_OBJ),
    ("DELETE", "/arrays"): op("retainly", "Delete array items of customers", _RETAINLY, body=_OBJ),
    ("POST", "/events"): op("retainly", "Create an event", _RETAINLY, body={"type": "object", "required": ["event"],
                                                                         "additionalProperties": True, "properties": {"event": _STR}}),
    ("PUT", "/api/v1/customers/{customer_id}"): op("customerio", "Identify (create or update) a customer", _CIO, body=_OBJ, params=_CIO_ID),
    ("DELETE", "/api/v1/customers/{customer_id}"): op("customerio", "Delete a customer", _CIO, params=_CIO_ID),
    ("POST", "/api/v1/customers/{customer_id}/events"): op("customerio", "Track a customer event", _CIO, params=_CIO_ID, body={
        "type": "object", "required": ["name"], "additionalProperties": True, "properties": {"name": _STR, "data": _PROPS, "timestamp": _TS}}),
    ("PUT", "/api/v1/customers/{customer_id}/devices"): op("customerio", "Add or update a device", _CIO, params=_CIO_ID, body=_OBJ),
    ("DELETE", "/api/v1/customers/{customer_id}/devices/{token}"): op("customerio", "Delete a device", _CIO,
                                                                      params=[*_CIO_ID, _p("token")]),
    ("POST", "/api/v1/customers/{customer_id}/suppress"): op("customerio", "Suppress a customer", _CIO, params=_CIO_ID),
    ("POST", "/api/v1/customers/{customer_id}/unsuppress"): op("customerio", "Unsuppress a customer", _CIO, params=_CIO_ID),
    ("POST", "/api/v1/events"): op("customerio", "Track an anonymous event", _CIO, body={
        "type": "object", "required": ["name"], "additionalProperties": True, "properties": {"name": _STR, "anonymous_id": _STR, "data": _PROPS}}),
    ("POST", "/api/v1/merge_customers"): op("customerio", "Merge two customers", _CIO, body={
        "type": "object", "required": ["primary", "secondary"], "properties": {"primary": _OBJ, "secondary": _OBJ}}),
    ("POST", "/api/v2/batch"): op("customerio", "A batch of v2 entity/event calls", _CIO, body={
        "type": "object", "required": ["batch"], "properties": {"batch": {"type": "array", "items": _OBJ}}}),
    ("POST", "/api/v2/entity"): op("customerio", "One v2 entity call (identify, delete, event...)", _CIO, body=_OBJ),
    ("POST", "/v1/batch"): op("segment", "A batch of messages", _SEGMENT, body={
        "type": "object", "required": ["batch"], "properties": {"batch": {"type": "array", "items": _SEGMENT_MESSAGE},
                                                                "writeKey": _STR, "context": _PROPS}}),
    ("POST", "/v1/import"): op("segment", "Alias of /v1/batch", _SEGMENT, body={
        "type": "object", "required": ["batch"], "properties": {"batch": {"type": "array", "items": _SEGMENT_MESSAGE}, "writeKey": _STR}}),
    **{("POST", f"/v1/{kind}"): op("segment", f"One {kind} message", _SEGMENT, body=_SEGMENT_MESSAGE)
       for kind in ("identify", "track", "page", "screen", "group", "alias")},
    ("GET", "/healthz"): op("admin", "Health of the gateway and what it depends on", [], ok="healthy"),
    ("POST", "/admin/v1/sql"): op("admin", "Run one read-only SQL query (confined to the token's workspace)", _ADMIN,
                                  body=_STR, content="text/plain", ok="the result in the requested format",
                                  params=[_q("format", "a ClickHouse output format (default PrettyCompact)")]),
    ("POST", "/admin/v1/train"): op("admin", "Train each goal's model (or ?goal=) and rescore", _ADMIN,
                                    ok="what was trained", params=[_q("goal", "one goal")]),
    ("GET", "/openapi.json"): op("admin", "This document", [], ok="OpenAPI 3.1"),
    ("GET", "/docs"): op("admin", "A page that lists this document's operations", [], ok="HTML"),
    ("GET", "/live"): op("admin", "The live events page (HTML; the admin token is typed into the page)", [], ok="HTML"),
    ("GET", "/goals"): op("admin", "The goals page: conversion per cohort, propensity distribution, calibration, model quality (HTML)", [], ok="HTML"),
    ("GET", "/admin/v1/live/events"): op("admin", "Requests accepted and refused, newest first, newer than ?after= (the caller's workspace; the operator sees all)",
                                         _ADMIN, ok="{seq, entries}", params=[_q("after", "the seq of the newest entry already seen")]),
    ("GET", "/admin/v1/goals"): op("admin", "Per goal: conversion per cohort, likelihood histogram, calibration, the model's figures",
                                   _ADMIN, ok="{data: [...], object: goals}", params=[_q("goal", "one goal")]),
    ("GET", "/admin/v1/models"): op("admin", "Per goal: the serving model (version, kind, training size and date, AUC) and its holdout quality report; null before training",
                                    _ADMIN, ok="{data: [{workspace, goal, model}], object: models}", params=[_q("goal", "one goal")]),
    ("POST", "/admin/v1/records"): op("admin", "Publish canonical records decoded by goalstream import (operator only; JSONL of {schema, topic, key (base64), value})",
                                      _ADMIN, body=_STR, content="application/x-ndjson", ok="{accepted, object: records}"),
    ("POST", "/admin/v1/forget"): op(
        "admin", "Forget a person everywhere (and with suppress: refuse them from now on); 202 with the regulation, 200 once done with wait",
        _ADMIN, ok="the regulation (id, state, ids, removed per table)",
        body={"type": "object", "required": ["customer_id"], "additionalProperties": False, "properties": {
            "customer_id": {"type": ["string", "integer"]}, "workspace": _STR, "suppress": {"type": "boolean"},
            "wait": {"type": "boolean"}, "requested_by": _STR}}),
    ("GET", "/admin/v1/forget"): op("admin", "The regulations of the caller's workspace (the operator sees all), newest first",
                                    _ADMIN, ok="{object: list, data: [regulation]}"),
    ("GET", "/admin/v1/forget/{id}"): op("admin", "One regulation and its state", _ADMIN, ok="the regulation", params=[_p("id")]),
    ("GET", "/metrics"): op("admin", "Prometheus metrics of the whole gateway (the operator's token unless GOALSTREAM_METRICS_AUTH=false)",
                            _ADMIN, content="text/plain", ok="Prometheus text exposition"),
}

# /healthz answers its report, not an error, when something is down.
OPERATIONS[("GET", "/healthz")]["responses"]["503"] = {
    "description": "not ok: the same report, naming what is down",
    "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
    "content": {"application/json": {"schema": _OBJ}}}


@functools.cache
def document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), operation in sorted(OPERATIONS.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        operation = dict(operation, operationId=f"{method.lower()}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '') or 'root'}")
        paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "goalstream gateway", "version": VERSION,
                 "description": "Every vendor dialect the gateway speaks and its admin API. Each dialect answers errors in its vendor's shape."},
        "tags": [{"name": n} for n in ("traitly", "triggerly", "retainly", "customerio", "segment", "admin")],
        "paths": paths,
        "components": {
            "securitySchemes": SECURITY_SCHEMES,
            "schemas": ERROR_SCHEMAS,
            "responses": {name: {"description": f"an error in the {name[:-5]} shape",
                                 "headers": {"X-Request-Id": {"$ref": "#/components/headers/X-Request-Id"}},
                                 "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}
                          for name in ERROR_SCHEMAS},
            "headers": {"X-Request-Id": {"description": "the request's id (the client's if valid, else a new one)", "schema": _STR}},
            "parameters": {"X-Request-Id": {"name": "X-Request-Id", "in": "header", "required": False,
                                            "description": "your id for this request: 1-128 of A-Z a-z 0-9 . _ : - (else replaced)",
                                            "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}},
        },
    }


@functools.cache
def _document_bytes() -> bytes:
    return orjson.dumps(document())


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_document_bytes(), content_type="application/json")


# Self-contained (the network may be closed: no CDN): fetches /openapi.json and lists each
# operation with its auth, parameters and body schema.
DOCS_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>goalstream API</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:70em}h2{margin-top:1.5em;border-bottom:1px solid #ccc}
details{margin:.3em 0;padding:.3em .6em;border:1px solid #ddd;border-radius:4px}summary{cursor:pointer}
code,pre{font:12px ui-monospace,monospace}pre{background:#f6f6f6;padding:.5em;overflow:auto}
.m{display:inline-block;width:5em;font-weight:bold}.get{color:#1a7f37}.post{color:#0969da}.put{color:#9a6700}.delete{color:#cf222e}</style>
</head><body><h1>goalstream API</h1><p>From <a href="openapi.json">/openapi.json</a> (OpenAPI 3.1).</p><div id="ops">loading...</div>
<script>
const el=(t,p={},...c)=>{const e=document.createElement(t);Object.assign(e,p);e.append(...c);return e};
fetch("openapi.json").then(r=>r.json()).then(doc=>{
  const ops=document.getElementById("ops");ops.textContent="";const byTag={};
  for(const [path,item] of Object.entries(doc.paths))for(const [m,op] of Object.entries(item))(byTag[op.tags[0]]??=[]).push([m,path,op]);
  const schemes=doc.components.securitySchemes;
  for(const [tag,list] of Object.entries(byTag)){ops.append(el("h2",{textContent:tag}));
    for(const [m,path,op] of list){const d=el("details",{},el("summary",{},el("span",{className:"m "+m,textContent:m.toUpperCase()}),el("code",{textContent:path})," "+op.summary));
      const auth=(op.security||[]).map(s=>Object.keys(s).map(k=>k+": "+(schemes[k]?.description||"")).join(" + ")||"none").join(" | ")||"none";
      d.append(el("p",{textContent:"Auth: "+auth}));
      const ps=(op.parameters||[]).filter(p=>!p.$ref);if(ps.length)d.append(el("p",{textContent:"Parameters: "+ps.map(p=>p.name+" ("+p.in+(p.required?", required":"")+")").join(", ")}));
      if(op.requestBody)for(const [ct,c] of Object.entries(op.requestBody.content))d.append(el("p",{textContent:"Body ("+ct+"):"}),el("pre",{textContent:JSON.stringify(c.schema,null,1)}));
      ops.append(d)}}
}).catch(e=>{document.getElementById("ops").textContent="could not load openapi.json: "+e});
</script></body></html>"""


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=DOCS_HTML, content_type="text/html")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/openapi.json", openapi_json, allow_head=False)
    app.router.add_get("/docs", docs, allow_head=False)
