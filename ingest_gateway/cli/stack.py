"""``goalstream up``: the whole pipeline in one process tree.

Start order: broker (embedded tansu unless ``--kafka``) -> topics -> ClickHouse (chDB
unless ``--clickhouse``) and its migrations -> stream processors and webhook dispatcher
-> gateway -> the run file -> the ready line. chDB allows one process per data path, so
gateway and processors share one ``Warehouse`` here, and one ``ModelStore``, so the API
answers with a new model as soon as the scorer has it; scaled out, each runs alone
(``processes.py``).

Stop (SIGTERM/Ctrl-C) drains, then closes in the reverse order: the gateway answers 503
to new requests, finishes the ones in flight and flushes its producer; then, because the
embedded broker keeps nothing, we wait until the processors have stored everything up
to the topics' end offsets (and the dispatcher a delivery for every score) before
stopping them and the broker. The same drain recycles the embedded broker when its
memory passes ``--broker-max-rss-mb``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from schemas import topics
from schemas.config import GoalstreamConfig
from schemas.kafka import end_offsets, ensure_topics
from schemas.settings import StackSettings
from schemas.warehouse import Warehouse
from stream_processors.app import Processors
from stream_processors.scoring.goals import ModelStore
from stream_processors.webhooks.dispatcher import Dispatcher

from .. import logsafe
from ..app import SERVICES, create_app
from ..broker import EmbeddedBroker
from ..health import Health
from . import http, runfile
from .adapters import GoalRecommender, ScorerTrainer
from .lifecycle import Process, wait_until
from .processes import DISPATCHER_STOP_S, PROCESSORS_STOP_S, open_warehouse

log = logging.getLogger("goalstream.stack")

BROKER_STOP_S = 30.0
OFFSETS_TIMEOUT_S = 15.0  # reading the topics' end offsets, to know what "drained" is


class Stack(Process):
    ready = "goalstream ready"

    def __init__(self, settings: StackSettings, config: GoalstreamConfig):
        super().__init__()
        self.settings = settings
        self.config = config
        self.health = Health()
        self.broker: EmbeddedBroker | None = None
        self.warehouse: Warehouse | None = None
        self.models: ModelStore | None = None
        self.processors: Processors | None = None
        self.dispatcher: Dispatcher | None = None
        self.server: http.Http | None = None
        self.token = secrets.token_urlsafe(32)
        logsafe.add_secrets(self.token)  # the per-run token is a secret like any configured one
        self._recycling = asyncio.Lock()

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap if self.broker else self.settings.kafka_bootstrap

    # -- the parts, each started and stopped on its own (recycling restarts two of them) --

    async def _start_broker(self) -> None:
        s = self.settings
        if s.embedded_broker:
            self.broker = EmbeddedBroker(s.kafka_port, s.data_dir / "logs")
            await self.broker.start()
            self.health.set("broker", "embedded")
        else:
            self.health.set("broker", "external")
        await ensure_topics(self.bootstrap, s.topic_partitions, s.topic_replication)

    async def _stop_broker(self) -> None:
        if self.broker is not None:
            await self.broker.stop()
            log.debug("broker stopped")

    async def _remove_run_file(self) -> None:
        runfile.remove(self.settings.data_dir)

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
        dispatcher, self.dispatcher = self.dispatcher, None
        processors, self.processors = self.processors, None
        if dispatcher is not None:
            await self.stops.run("the dispatcher", dispatcher.stop, DISPATCHER_STOP_S)
            log.debug("dispatcher stopped")
        if processors is not None:
            await self.stops.run("the processors", processors.stop, PROCESSORS_STOP_S)
            log.debug("processors stopped")

    # -- the life ------------------------------------------------------------------------

    async def open(self) -> list[str]:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self.stops.push("the run file", self._remove_run_file)  # pushed first: removed last
        self.stops.push("the broker", self._stop_broker, BROKER_STOP_S)
        await self._start_broker()
        self.warehouse = await open_warehouse(s, self.stops, admin_concurrency=s.sql_concurrency)
        self.health.set("clickhouse", "up")
        # One model store for the scorer and the API, so both serve a new model at once.
        self.models = ModelStore(self.warehouse, ttl_s=s.model_refresh_s)
        self.stops.push("the processors", self._stop_processors, DISPATCHER_STOP_S + PROCESSORS_STOP_S + 5)
        await self._start_processors()
        app = create_app(
            s, self.config, warehouse=self.warehouse, health=self.health, local_token=self.token,
            trainer=ScorerTrainer(lambda: self.processors),
            recommender=GoalRecommender(self.warehouse, self.config, self.models),
        )
        self.server = http.Http(app, s)
        self.stops.push("the gateway", self.server.stop, http.STOP_TIMEOUT_S)
        urls = await self.server.start()
        runfile.write(s.data_dir, url=urls[0], token=self.token, kafka=self.bootstrap)
        return urls

    async def wait(self, stop: asyncio.Event) -> None:
        """Watch the embedded broker: stop the stack if it dies, recycle it when it grows."""
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

    async def drain(self) -> None:
        if self.server is not None:
            # stops listening, finishes requests in flight, flushes the producer
            await self.stops.run("the gateway", self.server.stop, http.STOP_TIMEOUT_S)
            log.debug("gateway stopped")
        if self.broker is not None and self.broker.running:
            # An external Kafka keeps what is not stored yet; the embedded broker does not.
            await self.stops.run("draining the processors", self._drain_processors, self._drain_bound())

    def _drain_bound(self) -> float:
        # Up to three waits of drain_timeout_s, each after reading end offsets.
        return 3 * (self.settings.drain_timeout_s + OFFSETS_TIMEOUT_S) + 5

    async def _drain_processors(self) -> None:
        """Wait until everything on the broker is in ClickHouse: customers and events
        first, then the dead letters, which include any those two produced meanwhile."""
        if self.processors is None:
            return
        total = 0
        for names in ([topics.EVENTS, topics.CUSTOMERS], [topics.DEADLETTER]):
            try:
                ends = await asyncio.wait_for(end_offsets(self.bootstrap, names), OFFSETS_TIMEOUT_S)
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
                ends = await asyncio.wait_for(end_offsets(self.bootstrap, [topics.PROPENSITY, topics.RECOMMENDATIONS]), OFFSETS_TIMEOUT_S)
            except Exception as exc:
                log.error("cannot read end offsets to drain the dispatcher (%r)", exc)
                return
            total += sum(ends.values())
            dispatcher = self.dispatcher
            await wait_until(lambda: dispatcher.caught_up(ends), self.settings.drain_timeout_s)
        log.info("drained: %d records on the broker are all in ClickHouse", total)

    async def recycle_broker(self) -> None:
        """Drain, restart the embedded broker empty, and resume; requests meanwhile get 503."""
        async with self._recycling:
            services = self.server.app[SERVICES]
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
