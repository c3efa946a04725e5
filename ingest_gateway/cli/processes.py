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

import logging
from typing import Any

from schemas.config import GoalstreamConfig
from schemas.kafka import ensure_topics
from schemas.settings import CommonSettings, GatewaySettings
from schemas.warehouse import Warehouse, WarehouseError

from ..app import HEALTH, SERVICES, create_app
from ..health import Health
from . import http
from .lifecycle import Process, Stops

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
        await ensure_topics(s.kafka_bootstrap, s.topic_partitions, s.topic_replication)
        health = Health()
        try:
            warehouse = await open_warehouse(s, self.stops, migrate=False, admin_concurrency=s.sql_concurrency)
            health.set("clickhouse", "up")
        except WarehouseError as exc:
            # The write path does not need ClickHouse; reads answer 503.
            log.error("ClickHouse unavailable at start (%s); GET endpoints will answer 503", exc)
            health.set("clickhouse", "down")
            warehouse = None
        app = create_app(
            s, self.config, warehouse=warehouse, health=health,
            recommender=GoalRecommender(warehouse, self.config) if warehouse is not None else None,
        )
        self.server = http.Http(app, s)
        self.stops.push("the gateway", self.server.stop, http.STOP_TIMEOUT_S)
        return await self.server.start()

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

    def part(self, warehouse: Warehouse) -> Any:
        """The consumer, with ``start`` and ``stop`` (imported here: a gateway never loads faust)."""
        raise NotImplementedError

    async def open(self) -> list[str]:
        s = self.settings
        await ensure_topics(s.kafka_bootstrap, s.topic_partitions, s.topic_replication)
        part = self.part(await open_warehouse(s, self.stops))
        self.stops.push(self.what, part.stop, self.stop_timeout_s)
        await part.start()
        return []


class Worker(_Consumer):
    ready = "goalstream worker ready"
    what, stop_timeout_s = "the processors", PROCESSORS_STOP_S

    def part(self, warehouse: Warehouse) -> Any:
        from stream_processors.app import Processors

        return Processors(self.settings, warehouse, self.config)


class Dispatcher(_Consumer):
    ready = "goalstream dispatcher ready"
    what, stop_timeout_s = "the dispatcher", DISPATCHER_STOP_S

    def part(self, warehouse: Warehouse) -> Any:
        from stream_processors.webhooks.dispatcher import Dispatcher

        return Dispatcher(self.settings, self.config, warehouse)
