"""The gateway's aiohttp application: dialect routes, error rendering, health, admin SQL
and training.

``create_app`` builds one app from the settings, the config and what it is handed (the
protocols of ``ingest_gateway.ports``: a record sink, a ClickHouse reader, a recommender,
a trainer), so it imports nothing of the stream processors; ``ingest_gateway.cli`` builds
and hands them in. Requests flow to the dialect that owns their path; anything it raises
(and aiohttp's own 404/405/413) is rendered by that dialect in its vendor's error shape,
so a caller never sees another vendor's errors; the admin endpoints raise the same
``errors`` and answer in Traitly's shape. The record sink lives in the app's
``cleanup_ctx``: started before the first request, flushed and stopped after the last.
The reader is opened and closed by whoever passed it (the app never opens ClickHouse).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import logging
import threading
import time
import weakref
from typing import Any, AsyncIterator

import fastavro.validation
import orjson
from aiohttp import web

from schemas import codec, metrics, topics
from schemas.config import Credentials, GoalstreamConfig, presented_bytes
from schemas.kafka import RecordProducer
from schemas.model import Record
from schemas.regulations import Forgotten
from schemas.settings import GatewaySettings
from schemas.warehouse import WarehouseBusy, WarehouseError

from . import errors, live, openapi, ratelimit, requestlog, sqlguard
from .dialects import DIALECTS, Dialect, Services
from .dialects.base import json_response, read_body
from .health import Health
from .ports import Admission, Reader, Recommender, RecordSink, Regulations, Trainer

log = logging.getLogger("goalstream.gateway")
SERVICES = web.AppKey("services", Services)
HEALTH = web.AppKey("health", Health)
# Request lines up to 64 KB: trigger.ly sends its data base64-encoded in the query string,
# and aiohttp's default (8190 bytes) would refuse a 6 KB payload with its own plain 400.
MAX_LINE = 65536
LOCAL_TOKEN = web.AppKey("local_token", str)  # the running stack's per-run token for `goalstream sql`
# The embedded stack's scorer, for `goalstream train` and POST /admin/v1/train.
TRAINER = web.AppKey("trainer", Trainer)
TAP = web.AppKey("tap", object)  # the live page's tap (live.Tap, or a front's live.RemoteTap)


# aiohttp's own client errors, as the gateway's (any other 4xx is a 400: still the
# client's to fix, never a 500).
_HTTP_ERRORS: dict[int, type[errors.GatewayError]] = {
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    406: errors.NotAcceptable,
    413: errors.PayloadTooLarge,
    415: errors.UnsupportedEncoding,
    422: errors.Unprocessable,
    429: errors.TooManyRequests,
    503: errors.Unavailable,
}


def _error_for(exc: web.HTTPException) -> errors.GatewayError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return errors.MethodNotAllowed(f"{exc.method} is not allowed here; allowed: {allowed}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return errors.PayloadTooLarge("the request body is too large")
    if isinstance(exc, web.HTTPNotFound):
        return errors.NotFound("no such endpoint")
    if exc.status in _HTTP_ERRORS:
        return _HTTP_ERRORS[exc.status](exc.reason or "refused")
    if 400 <= exc.status < 500:
        return errors.InvalidRequest(exc.reason or "bad request")
    return errors.Internal(exc.reason or "internal error")


def _error_middleware(dialects: list[Dialect]):
    fallback = dialects[0]

    def owner(path: str) -> Dialect:
        # Only on the error path: the most specific claim on the path renders the error.
        best, index = max(((d.claim(path), -i) for i, d in enumerate(dialects)))
        return dialects[-index] if best else fallback

    @web.middleware
    async def middleware(request: web.Request, handler):
        try:
            return await handler(request)
        except errors.GatewayError as exc:
            requestlog.note_error(request, exc.message)
            if exc.status >= 500:
                log.warning("%s %s -> %s: %s", request.method, request.path, exc.status, exc.message)
            return owner(request.path).render_error(exc, request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = _error_for(exc)
            requestlog.note_error(request, error.message)
            return owner(request.path).render_error(error, request)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            error = errors.Internal("internal error; the request was not stored")
            requestlog.note_error(request, error.message)
            return owner(request.path).render_error(error, request)

    return middleware


def _dialect_namer(dialects: list[Dialect]):
    """The name of the dialect that owns a path (as ``_error_middleware`` picks it), or
    "admin" for the admin API, health and docs, which no dialect claims."""

    def name(path: str) -> str:
        if path.startswith("/admin/") or path in ("/healthz", "/openapi.json", "/docs", "/metrics", "/live", "/goals"):
            return "admin"
        best, index = max(((d.claim(path), -i) for i, d in enumerate(dialects)))
        return dialects[-index].name if best else "-"

    return name


def _metrics_middleware(routes: dict[Any, tuple[str, str]]):
    """Counts every answer by dialect, route template and status (outermost: it sees the
    status the error middleware rendered). ``routes``: resource -> (dialect, template),
    filled by ``create_app``; anything else (404, 405) is ``route="unmatched"``. One
    counter increment and a context variable per request; no lock of ours."""
    unmatched = ("none", "unmatched")

    @web.middleware
    async def middleware(request: web.Request, handler):
        dialect, route = routes.get(request.match_info.route.resource, unmatched)
        method = request.method if request.method in metrics.METHODS else "other"
        metrics.DIALECT.set(dialect)  # each request runs in its own task: its own context
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.child(metrics.HTTP_REQUESTS, dialect, route, method, str(status)).inc()

    return middleware


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus exposition: the operator's token unless ``GOALSTREAM_METRICS_AUTH=false``
    (a private port); a workspace's admin token is not enough (the counters are the whole
    gateway's)."""
    if request.app[METRICS_AUTH] and _admin_scope(request) is not sqlguard.OPERATOR:
        raise errors.Unauthenticated("the operator's token is required for /metrics")
    body, content_type = metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


METRICS_AUTH = web.AppKey("metrics_auth", bool)


async def healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    await health.probe()  # ClickHouse answers on the normal lane within a second, or it is "stalled"
    report = health.report()
    if counters := request.app[SERVICES].counters:
        report["counters"] = dict(counters)  # what was refused without being stored (e.g. strangers' pixels)
    return json_response(report, status=200 if health.ok else 503)




async def _false() -> bool:
    return False


def _admin_scope(request: web.Request) -> sqlguard.Scope | None:
    """Who the admin token is: the operator (``[admin] operator_token``, or the running
    stack's per-run token that ``goalstream sql``/``train``/``deadletter`` use) sees every
    workspace; a workspace's ``admin_token`` sees that workspace only; else None."""
    services = request.app[SERVICES]
    local_token: str | None = request.app.get(LOCAL_TOKEN)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() not in ("bearer", "token") or not token:
        return None
    operator = local_token is not None and hmac.compare_digest(presented_bytes(token), local_token.encode())
    operator = services.credentials.operator(token) or operator
    workspace = services.credentials.match("admin_token", token)
    if operator:
        return sqlguard.OPERATOR
    return sqlguard.Scope(workspace) if workspace is not None else None


def _require_admin(request: web.Request) -> sqlguard.Scope:
    scope = _admin_scope(request)
    if scope is None:
        raise errors.Unauthenticated("an admin token is required")
    return scope


async def admin_train(request: web.Request) -> web.Response:
    """Train each goal's model (``?goal=`` for one), start scoring with it, rescore.

    A workspace's admin token trains that workspace's goals only (another workspace's
    goal is unknown to it); the operator trains every workspace's."""
    scope = _require_admin(request)
    trainer = request.app.get(TRAINER)
    if trainer is None:
        raise errors.Unavailable("this gateway runs no scorer; run goalstream train against ClickHouse")
    goal = request.query.get("goal") or None
    config = request.app[SERVICES].config
    visible = config.goals if scope.operator else config.goals_of(scope.workspace)
    if goal is not None and not any(g.name == goal for g in visible):
        raise errors.InvalidRequest(f"no goal named {goal!r}", param="goal")
    try:
        trained = await trainer(goal, scope.workspace)
    except WarehouseError as exc:
        raise errors.Unavailable("the warehouse could not train; try again", retry_after=5) from exc
    return json_response({"data": trained, "object": "training"})


# POST /admin/v1/records: what `goalstream import` sends (records of these topics only).
IMPORT_TOPICS = (topics.EVENTS, topics.CUSTOMERS)
MAX_IMPORT_RECORDS = 10_000


def _import_record(number: int, line: bytes) -> Record:
    try:
        obj = orjson.loads(line)
        record = Record(schema=obj["schema"], topic=obj["topic"], key=base64.b64decode(obj["key"], validate=True), value=obj["value"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
        raise errors.InvalidRequest(f"line {number}: not a record (an object with schema, topic, key in base64, value)") from None
    if record.topic not in IMPORT_TOPICS:
        raise errors.InvalidRequest(f"line {number}: records go to {' or '.join(IMPORT_TOPICS)}, not {record.topic!r}")
    schema = codec.LATEST.get(record.schema) if isinstance(record.schema, str) else None
    if schema is None or not isinstance(record.value, dict):
        raise errors.InvalidRequest(f"line {number}: unknown schema {record.schema!r}")
    workspace = record.value.get("workspace")
    if not isinstance(workspace, str) or not record.key.startswith(workspace.encode() + b":"):
        raise errors.InvalidRequest(f"line {number}: the key must be the record's partition key (workspace:customer_id)")
    try:
        fastavro.validation.validate(record.value, schema.parsed, raise_errors=True)
    except Exception as exc:  # fastavro's ValidationError and its kin: the value does not fit the schema
        raise errors.InvalidRequest(f"line {number}: the value does not fit {record.schema}: {str(exc)[:300]}") from None
    return record


async def admin_records(request: web.Request) -> web.Response:
    """Canonical records already decoded by the dialects' own functions (``goalstream
    import`` does that, line by line), JSONL, published like a dialect's: through the
    app's sink, so in ``goalstream up`` they are spooled (fsynced) before the 2xx, and the
    stack's admission (503 + Retry-After while its backlog is full) applies. The
    operator's token only: these records name their workspace themselves."""
    scope = _require_admin(request)
    if not scope.operator:
        raise errors.Forbidden("the operator's token is required to import records")
    lines = [line for line in (await read_body(request)).splitlines() if line.strip()]
    if len(lines) > MAX_IMPORT_RECORDS:
        raise errors.LimitExceeded(f"at most {MAX_IMPORT_RECORDS} records per request")
    records = [_import_record(i + 1, line) for i, line in enumerate(lines)]
    if records:
        await request.app[SERVICES].publish(records)
    return json_response({"accepted": len(records), "object": "records"})


# POST/GET /admin/v1/forget: data-subject regulations (stream_processors.forget).
MAX_WAIT_S = 120.0


def _regulator(request: web.Request) -> Any:
    regulator = request.app[SERVICES].regulator
    if regulator is None:
        raise errors.Unavailable("this gateway has no ClickHouse to erase from; use goalstream forget where it runs", retry_after=5)
    return regulator


async def admin_forget(request: web.Request) -> web.Response:
    """Forget a person: ``{"customer_id": ..., "workspace": ..., "suppress": false, "wait": false}``.

    Every row of the person (the id, ids merged or aliased into them, anonymous ids
    identified as them) is removed from every table, in the background; the answer is 202
    with the regulation once it is recorded and in force (``wait``: 200 once it completed,
    up to ``MAX_WAIT_S``). A workspace's admin token forgets in that workspace only."""
    scope = _require_admin(request)
    try:
        body = orjson.loads(await read_body(request))
    except orjson.JSONDecodeError:
        raise errors.InvalidRequest("the body is not JSON") from None
    if not isinstance(body, dict):
        raise errors.InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - {"customer_id", "workspace", "suppress", "wait", "requested_by"})
    if unknown:
        raise errors.InvalidRequest(f"unknown field {unknown[0]!r}: give customer_id, workspace, suppress, wait, requested_by",
                                    param=unknown[0])
    customer_id = body.get("customer_id")
    if isinstance(customer_id, int) and not isinstance(customer_id, bool):
        customer_id = str(customer_id)
    if not isinstance(customer_id, str) or not customer_id.strip() or len(customer_id) > 1000:
        raise errors.InvalidRequest("'customer_id' is required: the id of the person to forget", param="customer_id")
    workspace = body.get("workspace", scope.workspace)
    if not isinstance(workspace, str) or not workspace:
        raise errors.InvalidRequest("'workspace' is required with the operator's token", param="workspace")
    if not scope.operator and workspace != scope.workspace:
        raise errors.Forbidden("this admin token may forget people of its own workspace only")
    if request.app[SERVICES].config.workspace(workspace) is None:
        raise errors.InvalidRequest(f"no workspace named {workspace!r}", param="workspace")
    for flag in ("suppress", "wait"):
        if not isinstance(body.get(flag, False), bool):
            raise errors.InvalidRequest(f"'{flag}' must be true or false", param=flag)
    note = body.get("requested_by")
    who = "operator" if scope.operator else f"admin token of {workspace}"
    requested_by = f"{who} via POST /admin/v1/forget, request {requestlog.request_id.get() or '-'}"
    if isinstance(note, str) and note.strip():
        requested_by = f"{note.strip()[:100]} ({requested_by})"
    regulator = _regulator(request)
    try:
        regulation = await regulator.request(workspace, customer_id, suppress=body.get("suppress", False), requested_by=requested_by)
        if body.get("wait"):
            regulation = await regulator.wait(regulation["id"], MAX_WAIT_S) or regulation
    except WarehouseError as exc:
        raise errors.Unavailable("the regulation could not be recorded right now; retry shortly", retry_after=5) from exc
    done = regulation["state"] in ("completed", "failed")
    return json_response(regulation, status=200 if done else 202)


async def admin_regulations(request: web.Request) -> web.Response:
    """The regulations (newest first), or one (``/admin/v1/forget/{id}``), of the caller's workspace."""
    scope = _require_admin(request)
    regulation = request.match_info.get("id")
    try:
        found = await _regulator(request).list(None if scope.operator else scope.workspace, regulation)
    except WarehouseError as exc:
        raise errors.Unavailable("the regulations could not be read right now; retry shortly", retry_after=5) from exc
    if regulation is not None:
        if not found:
            raise errors.NotFound(f"no regulation {regulation!r}")
        return json_response(found[0])
    return json_response({"object": "list", "data": found})


ADMIN_SQL = web.AppKey("admin_sql", object)


async def admin_sql(request: web.Request) -> web.Response:
    """Run one read-only query; body is the SQL, ``?format=`` the ClickHouse output format.

    Checked and run on the warehouse's admin lane (its own client and threads), confined
    to the caller's workspace unless the caller is the operator (see sqlguard)."""
    services = request.app[SERVICES]
    scope = _require_admin(request)
    lane: AdminSQL = request.app[ADMIN_SQL]
    fmt = request.query.get("format", "PrettyCompact")
    if not sqlguard.FORMATS.match(fmt):
        raise errors.InvalidRequest("bad format name", param="format")
    raw = await read_body(request)
    if len(raw) > sqlguard.MAX_SQL_BYTES:
        raise errors.LimitExceeded(f"the query is longer than {sqlguard.MAX_SQL_BYTES} bytes")
    try:
        sql = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise errors.InvalidRequest("the query is not UTF-8 text") from None
    if services.warehouse is None or not services.warehouse.is_open:
        raise errors.Unavailable("no warehouse on this gateway", retry_after=5)
    body = await lane.run(services.warehouse, sql, fmt, scope)
    return web.Response(body=body, content_type="text/plain")


class AdminSQL:
    """The admin SQL lane: limits from settings, the engine's catalog (refreshed every
    minute), and the mapping of refusals and limits to the gateway's errors.

    What runs on the lane is ``admin_job`` with the query's arguments (a picklable call):
    an HTTP front of ``goalstream up`` sends it to the stack process, which holds ClickHouse."""

    CATALOG_TTL_S = 60.0

    def __init__(self, settings: GatewaySettings):
        self.limits = sqlguard.Limits.from_settings(settings)

    async def run(self, warehouse: Reader, sql: str, fmt: str, scope: sqlguard.Scope) -> bytes:
        try:
            return await warehouse.admin(functools.partial(admin_job, sql, fmt, scope, self.limits))
        except WarehouseBusy:
            raise errors.TooManyRequests("admin queries are all busy; try again shortly", retry_after=2) from None
        except (sqlguard.NotReadOnly, sqlguard.LimitReached, sqlguard.QueryFailed) as exc:
            raise errors.InvalidRequest(str(exc)) from None
        except Exception as exc:  # the engine itself failed (closed, out of resources): retriable
            log.warning("admin SQL failed in the warehouse: %s", type(exc).__name__)
            raise errors.Unavailable("the warehouse could not run the query; try again", retry_after=5) from None


# The catalog per admin client, where the client lives (the process that holds ClickHouse);
# weak, so a closed warehouse's clients take theirs with them. Admin threads share it.
_catalogs: "weakref.WeakKeyDictionary[Any, tuple[sqlguard.Catalog, float]]" = weakref.WeakKeyDictionary()
_catalogs_lock = threading.Lock()


def _catalog_for(client: Any) -> sqlguard.Catalog:
    with _catalogs_lock:
        try:
            cached = _catalogs.get(client)
        except TypeError:  # a client that takes no weak reference: loaded each time
            cached = None
    if cached is not None and time.monotonic() - cached[1] <= AdminSQL.CATALOG_TTL_S:
        return cached[0]
    catalog = sqlguard.Catalog.load(client)
    with _catalogs_lock:
        try:
            _catalogs[client] = (catalog, time.monotonic())
        except TypeError:
            pass
    return catalog


def admin_job(sql: str, fmt: str, scope: sqlguard.Scope, limits: sqlguard.Limits, client: Any) -> bytes:
    """One admin query on an admin-lane client: checked, confined and limited (sqlguard)."""
    return sqlguard.run(client, sql, fmt, scope, limits, _catalog_for(client))


def create_app(
    settings: GatewaySettings,
    config: GoalstreamConfig,
    *,
    warehouse: Reader | None = None,
    health: Health | None = None,
    local_token: str | None = None,
    producer: RecordSink | None = None,
    trainer: Trainer | None = None,
    recommender: Recommender | None = None,
    admission: Admission | None = None,
    tap: "live.TapPort | None" = None,
    forgotten: Forgotten | None = None,
    regulator: Regulations | None = None,
) -> web.Application:
    """Build the gateway.

    ``warehouse``: ClickHouse for reads, opened (or not: then reads answer 503) and closed
    by the caller; None: this gateway serves no reads. ``producer``: where records go
    (default: a Kafka ``RecordProducer`` from the settings, started and stopped with the
    app). ``trainer``/``recommender``: the scorer's, without which POST /admin/v1/train and
    GET recommended-next-actions answer 503. ``admission``: asked before every publish
    (the embedded stack refuses while its broker is down or its backlog is full).
    ``forgotten``: the regulations in force, kept fresh by the caller (suppressed people's
    records are refused); ``regulator``: where POST /admin/v1/forget and a vendor's deletion
    call go (None: 503, and a vendor's deletion deletes the profile only)."""
    producer = producer or RecordProducer(
        settings.kafka_bootstrap, idempotence=settings.kafka_idempotence, timeout_s=settings.produce_timeout_s
    )
    # Rate limits (off by default: then None, and nothing below changes the request path).
    limiter = ratelimit.RateLimiter.from_settings(settings)
    credentials = limiter.credentials(Credentials(config)) if limiter else Credentials(config)
    credentials = requestlog.NotingCredentials(credentials)  # names the workspace on the access line
    services = Services(config=config, credentials=credentials, producer=producer, warehouse=warehouse, recommender=recommender, admission=admission,
                        forgotten=forgotten, regulator=regulator)
    dialects = [d(services) for d in DIALECTS]
    routes: dict[Any, tuple[str, str]] = {}
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[
        _metrics_middleware(routes),
        requestlog.middleware(_dialect_namer(dialects), settings.access_log),
        _error_middleware(dialects),
        *ratelimit.middlewares(limiter),
    ])
    requestlog.install(app)  # X-Request-Id on every response
    app[SERVICES] = services
    app[HEALTH] = health or Health()
    if local_token:
        app[LOCAL_TOKEN] = local_token
    if trainer is not None:
        app[TRAINER] = trainer
    for d in dialects:
        for route in app.router.add_routes(d.routes()):
            routes[route.resource] = (d.name, route.resource.canonical)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app[METRICS_AUTH] = settings.metrics_auth
    app.router.add_get("/metrics", metrics_endpoint)
    app[ADMIN_SQL] = AdminSQL(settings)
    app[HEALTH].add_probe("clickhouse", lambda: services.warehouse.ping() if services.warehouse is not None else _false())
    app.router.add_post("/admin/v1/sql", admin_sql)
    app.router.add_post("/admin/v1/train", admin_train)
    app.router.add_post("/admin/v1/records", admin_records)
    app.router.add_post("/admin/v1/forget", admin_forget)
    app.router.add_get("/admin/v1/forget", admin_regulations)
    app.router.add_get("/admin/v1/forget/{id}", admin_regulations)
    # The live events and goals pages (``tap``: where entries go; default: this process's own ring).
    app[TAP] = live.add_routes(app, services, dialects, _admin_scope, tap, secrets=[local_token] if local_token else [])
    if forgotten is not None and tap is None and hasattr(app[TAP], "forget"):
        forgotten.on_forgotten(app[TAP].forget)  # this process's own ring forgets them too
    openapi.add_routes(app)  # GET /openapi.json and /docs
    for route in app.router.routes():
        routes.setdefault(route.resource, ("admin" if route.resource.canonical.startswith("/admin") else "gateway", route.resource.canonical))

    async def producer_ctx(app: web.Application) -> AsyncIterator[None]:
        await producer.start()
        app[HEALTH].set("gateway", "up")
        yield
        services.draining = True
        await producer.stop()  # flushes anything still buffered
        app[HEALTH].set("gateway", "stopped")

    app.cleanup_ctx.append(producer_ctx)
    return app
