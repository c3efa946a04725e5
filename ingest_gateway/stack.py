"""``goalstream up``: the whole pipeline in one process tree.

Start order: broker (embedded tansu unless ``--kafka``) -> topics -> ClickHouse (chDB
unless ``--clickhouse``) and its migrations -> stream processors -> gateway -> the ready
line. chDB allows one process per data path, so gateway and processors share one
``Warehouse`` here; scaled out, each runs alone (``goalstream gateway|worker``).

Stop order (SIGTERM/Ctrl-C) is the reverse, and it drains: the gateway answers 503 to
new requests, finishes the ones in flight and flushes its producer; then, because the
embedded broker keeps nothing, we wait until the processors have stored everything up
to the topics' end offsets before stopping them and the broker. The same drain recycles
the embedded broker when its memory passes ``--broker-max-rss-mb``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import ssl
import sys
from pathlib import Path

from aiohttp import web

from schemas import topics
from schemas.config import GoalstreamConfig
from schemas.kafka import end_offsets, ensure_topics
from schemas.settings import StackSettings
from schemas.warehouse import Warehouse
from stream_processors.app import Processors
from stream_processors.webhooks.dispatcher import Dispatcher
from stream_processors.scoring.goals import ModelStore

from . import logsafe
from .app import HEALTH, MAX_LINE, SERVICES, create_app
from .broker import EmbeddedBroker
from .health import Health

log = logging.getLogger("goalstream.stack")


def run_file(data_dir: Path) -> Path:
    return data_dir / "run" / "stack.json"


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Stack:
    def __init__(self, settings: StackSettings, config: GoalstreamConfig):
        self.settings = settings
        self.config = config
        self.health = Health()
        self.broker: EmbeddedBroker | None = None
        self.warehouse: Warehouse | None = None
        self.processors: Processors | None = None
        self.runner: web.AppRunner | None = None
        self.app: web.Application | None = None
        self.token = secrets.token_urlsafe(32)
        logsafe.add_secrets(self.token)  # the per-run token is a secret like any configured one
        self._recycling = asyncio.Lock()
        self.models: ModelStore | None = None
        self.dispatcher: Dispatcher | None = None

    async def _train(self, goal: str | None, workspace: str | None = None) -> list[dict]:
        """``goalstream train`` while the stack runs: the stack's scorer trains and rescores
        (``workspace``: only that workspace's goals, for a workspace's admin token)."""
        if self.processors is None:
            raise RuntimeError("the processors are not running")
        return await self.processors.scorer.train(goal, workspace=workspace)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap if self.broker else self.settings.kafka_bootstrap

    async def _start_broker(self) -> None:
        s = self.settings
        if s.embedded_broker:
            self.broker = EmbeddedBroker(s.kafka_port, s.data_dir / "logs")
            await self.broker.start()
            self.health.set("broker", "embedded")
        else:
            self.health.set("broker", "external")
        await ensure_topics(self.bootstrap, s.topic_partitions, s.topic_replication)

    async def _start_processors(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.processors = Processors(self.settings, self.warehouse, self.config, models=self.models)
        await self.processors.start()
        self.health.set("processors", "running")
        t1 = loop.time()
        self.dispatcher = Dispatcher(self.settings, self.config, self.warehouse)
        await self.dispatcher.start()
        self.health.set("dispatcher", "running")
        log.info("processors started in %.1fs, dispatcher in %.1fs", t1 - t0, loop.time() - t1)

    async def _stop_processors(self) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.stop()
            self.dispatcher = None
            log.debug("dispatcher stopped")
        if self.processors is not None:
            await self.processors.stop()
            log.debug("processors stopped")

    async def start(self) -> list[str]:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        await self._start_broker()
        self.warehouse = await Warehouse(s.clickhouse_dsn, admin_concurrency=s.sql_concurrency).open()
        await self.warehouse.migrate()
        self.health.set("clickhouse", "up")
        # One model store for the scorer and the API, so both serve a new model at once.
        self.models = ModelStore(self.warehouse, ttl_s=s.model_refresh_s)
        await self._start_processors()
        self.app = create_app(
            s, self.config, warehouse=self.warehouse, health=self.health, local_token=self.token,
            trainer=self._train, models=self.models,
        )
        self.runner = web.AppRunner(self.app, access_log=None, max_line_size=MAX_LINE, auto_decompress=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, s.host, s.port, shutdown_timeout=30.0)
        await site.start()
        urls = [f"http://{s.host}:{site._server.sockets[0].getsockname()[1]}"]
        if s.tls:
            tls_site = web.TCPSite(self.runner, s.host, s.tls_port, ssl_context=tls_context(s.tls_cert, s.tls_key), shutdown_timeout=30.0)
            await tls_site.start()
            urls.append(f"https://{s.host}:{tls_site._server.sockets[0].getsockname()[1]}")
        self._write_run_file(urls[0])
        return urls

    def _write_run_file(self, url: str) -> None:
        path = run_file(self.settings.data_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "url": url, "token": self.token, "kafka": self.bootstrap}, f)

    async def _drain_processors(self) -> None:
        """Wait until everything on the broker is in ClickHouse: customers and events
        first, then the dead letters, which include any those two produced meanwhile."""
        if self.processors is None:
            return
        total = 0
        for names in ([topics.EVENTS, topics.CUSTOMERS], [topics.DEADLETTER]):
            try:
                ends = await asyncio.wait_for(end_offsets(self.bootstrap, names), 15)
            except Exception as exc:
                log.error("cannot read end offsets to drain (%r); records not yet stored may be lost", exc)
                return
            total += sum(ends.values())
            if not await self.processors.wait_caught_up(ends, self.settings.drain_timeout_s):
                log.error("drain timed out after %.0fs; progress %s of %s", self.settings.drain_timeout_s, self.processors.progress, ends)
                return
        # Then the dispatcher stores a delivery for every propensity record (it retries from ClickHouse).
        if self.dispatcher is not None:
            try:
                ends = await asyncio.wait_for(end_offsets(self.bootstrap, [topics.PROPENSITY, topics.RECOMMENDATIONS]), 15)
            except Exception as exc:
                log.error("cannot read end offsets to drain the dispatcher (%r)", exc)
                return
            total += sum(ends.values())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.settings.drain_timeout_s
            while not self.dispatcher.caught_up(ends) and loop.time() < deadline:
                await asyncio.sleep(0.05)
        log.info("drained: %d records on the broker are all in ClickHouse", total)

    async def monitor(self, stop: asyncio.Event) -> None:
        """Watch the embedded broker: restart the stack's view if it dies, recycle it when it grows."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 5.0)
                return
            except asyncio.TimeoutError:
                pass
            if self.broker is None:
                continue
            if not self.broker.running:
                log.error("the embedded broker exited; stopping the stack (see %s)", self.settings.data_dir / "logs" / "broker.log")
                self.health.set("broker", "down")
                stop.set()
                return
            rss = self.broker.rss_mb()
            if rss > self.settings.broker_max_rss_mb:
                log.warning("embedded broker uses %.0f MB (> %d MB): draining and recycling it", rss, self.settings.broker_max_rss_mb)
                await self.recycle_broker()

    async def recycle_broker(self) -> None:
        """Drain, restart the embedded broker empty, and resume; requests meanwhile get 503."""
        async with self._recycling:
            services = self.app[SERVICES]
            services.draining = True
            self.health.set("broker", "recycling")
            try:
                await services.wait_idle()
                await services.producer.flush()
                await self._drain_processors()
                await self._stop_processors()
                await services.producer.stop()
                await self.broker.stop()
                await self._start_broker()
                await services.producer.start()
                await self._start_processors()
            finally:
                services.draining = False
                self.health.set("broker", "embedded" if self.broker and self.broker.running else "down")

    async def stop(self) -> None:
        if self.app is not None:
            self.app[SERVICES].draining = True
            self.app[HEALTH].set("gateway", "draining")
        if self.runner is not None:
            await self.runner.cleanup()  # stops listening, finishes requests in flight, flushes the producer
            log.debug("gateway stopped")
        if self.broker is not None and self.broker.running:
            await self._drain_processors()
        await self._stop_processors()
        if self.warehouse is not None:
            await self.warehouse.close()
            log.debug("warehouse closed")
        if self.broker is not None:
            await self.broker.stop()
            log.debug("broker stopped")
        try:
            run_file(self.settings.data_dir).unlink()
        except FileNotFoundError:
            pass


async def run(settings: StackSettings, config: GoalstreamConfig, stop: asyncio.Event) -> int:
    stack = Stack(settings, config)
    try:
        urls = await stack.start()
    except BaseException:
        await stack.stop()
        raise
    print("goalstream ready " + " ".join(urls), flush=True)
    sys.stdout.flush()
    try:
        await stack.monitor(stop)
    finally:
        log.info("stopping: draining the gateway and processors")
        await stack.stop()
        log.info("stopped")
    return 0
