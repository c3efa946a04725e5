"""The scaled-out processes: ``goalstream gateway``, ``worker`` and ``dispatcher``, each one
part of the pipeline alone against a shared Kafka and ClickHouse (``goalstream up`` runs
all of them in one process: ``stack.py``).

- gateway: topics -> ClickHouse for reads (the write path needs only Kafka: if ClickHouse
  is down at start, reads answer 503 and records are still accepted) -> the HTTP app on
  its sites. Drain: 503 to new requests (the port stays open), finish those in flight,
  flush the producer, then close the port.
- worker: topics -> ClickHouse and its migrations -> the stream processors.
- dispatcher: topics -> ClickHouse and its migrations -> the webhook dispatcher.
Each stops in the reverse order (``lifecycle``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiokafka.errors import KafkaError

from schemas import metrics
from schemas.config import GoalstreamConfig
from schemas.kafka import KafkaUnavailable, ensure_topics
from schemas.settings import CommonSettings, GatewaySettings
from schemas.warehouse import Warehouse, WarehouseError

from ..app import HEALTH, SERVICES, create_app
from ..health import Health
from . import http
from .lifecycle import Interrupted, Process, Stops

log = logging.getLogger("goalstream")

PROCESSORS_STOP_S = 45.0  # the processors' own stop gives up after 30 s
DISPATCHER_STOP_S = 30.0  # the dispatcher's after 20 s


async def open_warehouse(settings: CommonSettings, stops: Stops, *, migrate: bool = True, admin_concurrency: int = 2) -> Warehouse:
    """ClickHouse opened (and migrated), its close pushed onto ``stops``."""
    warehouse = Warehouse(settings.clickhouse_dsn, admin_concurrency=admin_concurrency)
    stops.push("the warehouse", warehouse.close)
    await warehouse.open()
    if migrate:
        await warehouse.migrate()
        await warehouse.retain(settings.retention)
    return warehouse


BROKER_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)  # then every 5 s, up to --broker-wait


async def wait_for_topics(settings: CommonSettings, stopping: asyncio.Event) -> None:
    """The topics ensured, retrying while the broker is not up yet (a scaled-out process
    may start before Kafka): each failure logged with the next try, for at most
    ``broker_wait_s``; ``Interrupted`` at once on the stop signal, ``KafkaUnavailable`` when
    the bound is spent."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.broker_wait_s
    tries = 0
    while True:
        try:
            await ensure_topics(settings.kafka_bootstrap, settings.topic_partitions, settings.topic_replication)
            if tries:
                log.info("Kafka at %s is reachable", settings.kafka_bootstrap)
            return
        except (KafkaError, OSError) as exc:
            delay = BROKER_BACKOFF_S[min(tries, len(BROKER_BACKOFF_S) - 1)]
            tries += 1
            left = deadline - loop.time()
            if left <= 0:
                raise KafkaUnavailable(
                    f"Kafka at {settings.kafka_bootstrap} is not reachable ({type(exc).__name__}); gave up after {settings.broker_wait_s:g}s (--broker-wait)"
                ) from exc
            delay = min(delay, left)
            log.warning("Kafka at %s is not reachable yet (%s); retrying in %.1fs (up to %.0fs more)",
                        settings.kafka_bootstrap, type(exc).__name__, delay, left)
        try:
            await asyncio.wait_for(stopping.wait(), delay)
        except asyncio.TimeoutError:
            continue
        raise Interrupted


class HealthPort:
    """``goalstream worker``/``dispatcher``'s own small HTTP port: ``GET /healthz`` (200 when
    every component is up, else 503, with their states) and ``GET /metrics`` (this process's
    registry). Unauthenticated: bind it to a private address (default 127.0.0.1)."""

    def __init__(self, host: str, port: int, health: Health):
        self.host, self.port, self.health = host, port, health
        self.runner: web.AppRunner | None = None

    async def _healthz(self, request: web.Request) -> web.Response:
        await self.health.probe()
        return web.json_response(self.health.report(), status=200 if self.health.ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz, allow_head=True)
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # the port given, or the one picked for 0
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class _Alone(Process):
    """One part of the pipeline as its own process, with the settings and config it runs on."""

    def __init__(self, settings: Any, config: GoalstreamConfig):
        super().__init__()
        self.settings, self.config = settings, config


class Gateway(_Alone):
    ready = "goalstream gateway ready"
    settings: GatewaySettings

    def __init__(self, settings: GatewaySettings, config: GoalstreamConfig):
        super().__init__(settings, config)
        self.server: http.Http | None = None

    async def open(self) -> list[str]:
        from .adapters import GoalRecommender

        s = self.settings
        await wait_for_topics(s, self.stopping)
        health = Health()
        try:
            warehouse = await open_warehouse(s, self.stops, migrate=False, admin_concurrency=s.sql_concurrency)
            health.set("clickhouse", "up")
        except WarehouseError as exc:
            # The write path does not need ClickHouse; reads answer 503.
            log.error("ClickHouse unavailable at start (%s); GET endpoints will answer 503", exc)
            health.set("clickhouse", "down")
            warehouse = None
        # Regulations: suppressed people refused here; POST /admin/v1/forget carried out here.
        from schemas.regulations import Forgotten
        from stream_processors.forget import Regulator

        forgotten = Forgotten()
        regulator = None
        if warehouse is not None:
            forgotten.start(warehouse)
            regulator = Regulator(warehouse, forgotten, settle_s=s.forget_settle_s)

            async def stop_regulations() -> None:
                await regulator.stop()
                await forgotten.stop()

            self.stops.push("the regulations", stop_regulations, 10.0)
        app = create_app(
            s, self.config, warehouse=warehouse, health=health,
            recommender=GoalRecommender(warehouse, self.config) if warehouse is not None else None,
            forgotten=forgotten, regulator=regulator,
        )
        self.server = http.Http(app, s)
        self.stops.push("the gateway", self.server.stop, http.STOP_TIMEOUT_S)
        urls = await self.server.start()
        if regulator is not None:
            await regulator.resume()
        return urls

    async def drain(self) -> None:
        if self.server is not None:
            # The port stays open until the producer is flushed: new writes get 503 + Retry-After.
            services = self.server.app[SERVICES]
            services.draining = True
            self.server.app[HEALTH].set("gateway", "draining")
            await self.stops.run("finishing requests in flight", services.wait_idle, http.SHUTDOWN_TIMEOUT_S)
            await self.stops.run("flushing the producer", services.producer.flush, 30.0)
            await self.stops.run("the gateway", self.server.stop, http.STOP_TIMEOUT_S)


class _Consumer(_Alone):
    """A consumer alone: topics -> ClickHouse and its migrations -> ``part`` started."""

    what: str
    stop_timeout_s: float
    health_port: int  # the default of --health-port

    def observe(self, part: Any) -> None:
        """Register what this part computes for a scrape (e.g. consumer lag)."""

    def part(self, warehouse: Warehouse) -> Any:
        """The consumer, with ``start`` and ``stop`` (imported here: a gateway never loads faust)."""
        raise NotImplementedError

    async def open(self) -> list[str]:
        s = self.settings
        health = Health()
        health.set("kafka", "waiting")
        urls = []
        port = self.health_port if s.health_port is None else s.health_port
        if port:
            # First: /healthz answers 503 "waiting" while the broker is not up yet.
            server = HealthPort(s.health_host, port, health)
            self.stops.push("the health port", server.stop, 5.0)
            try:
                urls.append(await server.start())
            except OSError as exc:
                if s.health_port is not None:
                    raise  # asked for: a busy port is an error
                # The default is busy (a second worker on this host): run on without it.
                log.warning("the default health port %s:%s is not free (%s); no /healthz or /metrics: give --health-port",
                            s.health_host, port, exc.strerror or exc)
        await wait_for_topics(s, self.stopping)
        health.set("kafka", "up")
        warehouse = await open_warehouse(s, self.stops)
        health.add_probe("clickhouse", warehouse.ping)
        part = self.part(warehouse)
        self.stops.push(self.what, part.stop, self.stop_timeout_s)
        health.set(self.what.removeprefix("the "), "starting")
        await part.start()
        health.set(self.what.removeprefix("the "), "running")
        self.observe(part)
        return urls


class Worker(_Consumer):
    ready = "goalstream worker ready"
    what, stop_timeout_s, health_port = "the processors", PROCESSORS_STOP_S, 9464

    def observe(self, part: Any) -> None:
        metrics.on_collect(part.observe_lag)

    def part(self, warehouse: Warehouse) -> Any:
        from stream_processors.app import Processors

        return Processors(self.settings, warehouse, self.config)


class Dispatcher(_Consumer):
    ready = "goalstream dispatcher ready"
    what, stop_timeout_s, health_port = "the dispatcher", DISPATCHER_STOP_S, 9465

    def part(self, warehouse: Warehouse) -> Any:
        from stream_processors.webhooks.dispatcher import Dispatcher

        return Dispatcher(self.settings, self.config, warehouse)
