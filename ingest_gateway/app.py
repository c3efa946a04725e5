"""The gateway's aiohttp application: dialect routes, error rendering, health, admin SQL.

``create_app`` builds one app from the settings and config. Requests flow to the dialect
that owns their path; anything it raises (and aiohttp's own 404/405/413) is rendered by
that dialect in its vendor's error shape, so a caller never sees another vendor's
errors. The Kafka producer lives in the app's ``cleanup_ctx``: started before the first
request, flushed and stopped after the last. The warehouse is opened here too unless the
caller (the embedded stack, which shares one chDB handle) passes its own.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

from aiohttp import web

from schemas.config import Credentials, GoalstreamConfig
from schemas.kafka import RecordProducer
from schemas.settings import GatewaySettings
from schemas.warehouse import Warehouse, WarehouseError

from . import errors, sqlguard
from .dialects import DIALECTS, Dialect, Services
from .dialects.base import json_response, read_body
from .health import Health

log = logging.getLogger("goalstream.gateway")
SERVICES = web.AppKey("services", Services)
HEALTH = web.AppKey("health", Health)
# Request lines up to 64 KB: trigger.ly sends its data base64-encoded in the query string,
# and aiohttp's default (8190 bytes) would refuse a 6 KB payload with its own plain 400.
MAX_LINE = 65536
LOCAL_TOKEN = web.AppKey("local_token", str)  # the running stack's per-run token for `goalstream sql`
# The embedded stack's scorer: train (one goal or all) and rescore, for `goalstream train`.
Trainer = Callable[[str | None], Awaitable[list[dict[str, Any]]]]
TRAINER = web.AppKey("trainer", object)


def _error_for(exc: web.HTTPException) -> errors.GatewayError:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return errors.MethodNotAllowed(f"{exc.method} is not allowed here; allowed: {allowed}")
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return errors.PayloadTooLarge("the request body is too large")
    if isinstance(exc, web.HTTPNotFound):
        return errors.NotFound("no such endpoint")
    if exc.status == 400:
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
            if exc.status >= 500:
                log.warning("%s %s -> %s: %s", request.method, request.path, exc.status, exc.message)
            return owner(request.path).render_error(exc, request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return owner(request.path).render_error(_error_for(exc), request)
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return owner(request.path).render_error(errors.Internal("internal error; the request was not stored"), request)

    return middleware


async def healthz(request: web.Request) -> web.Response:
    health = request.app[HEALTH]
    return json_response(health.report(), status=200 if health.ok else 503)




def _is_admin(request: web.Request) -> bool:
    """The running stack's per-run token (``goalstream sql``/``train``) or any admin_token."""
    services = request.app[SERVICES]
    local_token: str | None = request.app.get(LOCAL_TOKEN)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return scheme.lower() in ("bearer", "token") and bool(token) and (
        (local_token is not None and hmac.compare_digest(token.encode(), local_token.encode()))
        or services.credentials.match("admin_token", token) is not None
    )


async def admin_train(request: web.Request) -> web.Response:
    """Train each goal's model (``?goal=`` for one), start scoring with it, rescore."""
    if not _is_admin(request):
        return json_response({"error": {"type": "api_authentication_error", "message": "an admin token is required"}}, 401)
    trainer = request.app.get(TRAINER)
    if trainer is None:
        return json_response({"error": {"type": "api_error", "message": "this gateway runs no scorer; run goalstream train against ClickHouse"}}, 503)
    goal = request.query.get("goal") or None
    config = request.app[SERVICES].config
    if goal is not None and not any(g.name == goal for g in config.goals):
        return json_response({"error": {"type": "api_invalid_request_error", "message": f"no goal named {goal!r}", "param": "goal"}}, 400)
    return json_response({"data": await trainer(goal), "object": "training"})


async def admin_sql(request: web.Request) -> web.Response:
    """Run one read-only query; body is the SQL, ``?format=`` the ClickHouse output format."""
    services = request.app[SERVICES]
    if not _is_admin(request):
        return json_response({"error": {"type": "api_authentication_error", "message": "an admin token is required"}}, 401)
    fmt = request.query.get("format", "PrettyCompact")
    if not sqlguard.FORMATS.match(fmt):
        return json_response({"error": {"type": "api_invalid_request_error", "message": "bad format name"}}, 400)
    sql = (await read_body(request)).decode(errors="replace")
    try:
        statement = sqlguard.check(sql)
    except sqlguard.NotReadOnly as exc:
        return json_response({"error": {"type": "api_invalid_request_error", "message": str(exc)}}, 400)
    if services.warehouse is None:
        return json_response({"error": {"type": "api_error", "message": "no warehouse on this gateway"}}, 503)
    try:
        body = await services.warehouse.raw(statement, fmt, readonly=True)
    except WarehouseError as exc:
        return json_response({"error": {"type": "api_invalid_request_error", "message": str(exc)}}, 400)
    return web.Response(body=body, content_type="text/plain")



def create_app(
    settings: GatewaySettings,
    config: GoalstreamConfig,
    *,
    warehouse: Warehouse | None = None,
    health: Health | None = None,
    local_token: str | None = None,
    producer: RecordProducer | None = None,
    trainer: Trainer | None = None,
    models: Any = None,
) -> web.Application:
    """Build the gateway. ``warehouse``: a shared, already open one (else opened here)."""
    producer = producer or RecordProducer(
        settings.kafka_bootstrap, idempotence=settings.kafka_idempotence, timeout_s=settings.produce_timeout_s
    )
    services = Services(config=config, credentials=Credentials(config), producer=producer, warehouse=warehouse, models=models)
    dialects = [d(services) for d in DIALECTS]
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[_error_middleware(dialects)])
    app[SERVICES] = services
    app[HEALTH] = health or Health()
    if local_token:
        app[LOCAL_TOKEN] = local_token
    if trainer is not None:
        app[TRAINER] = trainer
    for d in dialects:
        app.router.add_routes(d.routes())
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_post("/admin/v1/sql", admin_sql)
    app.router.add_post("/admin/v1/train", admin_train)

    async def producer_ctx(app: web.Application) -> AsyncIterator[None]:
        await producer.start()
        app[HEALTH].set("gateway", "up")
        yield
        services.draining = True
        await producer.stop()  # flushes anything still buffered
        app[HEALTH].set("gateway", "stopped")

    app.cleanup_ctx.append(producer_ctx)
    if warehouse is None:
        own = Warehouse(settings.clickhouse_dsn)

        async def warehouse_ctx(app: web.Application) -> AsyncIterator[None]:
            try:
                await own.open()
                services.warehouse = own
                app[HEALTH].set("clickhouse", "up")
            except WarehouseError as exc:
                # The write path does not need ClickHouse; reads answer 503 until it is back.
                log.error("ClickHouse unavailable at start (%s); GET endpoints will answer 503", exc)
                app[HEALTH].set("clickhouse", "down")
            yield
            if own.is_open:
                await own.close()

        app.cleanup_ctx.append(warehouse_ctx)
    return app
