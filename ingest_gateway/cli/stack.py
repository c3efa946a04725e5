"""``goalstream up``: the whole pipeline in one process tree.

Start order: broker (embedded tansu unless ``--kafka``) -> topics -> ClickHouse (chDB
unless ``--clickhouse``) and its migrations -> stream processors and webhook dispatcher
-> gateway (with the embedded broker: its spooled sink, which re-sends what the spool still
holds) -> the run file -> the ready line. chDB allows one process per data path, so gateway
and processors share one ``Warehouse`` here, and one ``ModelStore``, so the API answers with
a new model as soon as the scorer has it; scaled out, each runs alone (``processes.py``).

The gateway is served by ``--gateway-processes`` HTTP front processes (``fronts.py``; default
1), so its CPU is not taken from this loop, which the processors need: this process binds the
sockets, each front parses, validates and encodes, and sends the encoded records here
(``_front_call``), where they are spooled (or produced, without a spool) before the front
answers 2xx; reads, the admin lane, training, recommendations and health are answered here
too. Admission (503 while the broker is down or the backlog full) is pushed to the fronts on
every tick and change, and checked again on every publish. With 0 the app runs on this loop
(``http.py``), as it always did.

While it runs (``wait``), every 0.2 s: the ledger releases what ClickHouse holds from the
spool, the backlog is published in ``/healthz`` (writers get 503 above ``--max-backlog``),
and the embedded broker's RSS is checked (recycled above ``--broker-max-rss-mb``). The broker
child's exit is noticed at once: writers get 503 and ``/healthz`` says ``broker: down`` while
it is restarted on the same port with its topics, the sink reconnected (the spool re-sent in
order) and the processors and dispatcher started afresh; if it cannot be restarted the stack
stops and exits non-zero.

Stop (SIGTERM/Ctrl-C) drains, then closes in the reverse order: the gateway keeps listening
and answers 503 + Retry-After to new writes, finishes the ones in flight, and waits until
the processors have stored everything accepted (the spool is released to its end; without a
spool, up to the topics' end offsets) and the dispatcher a delivery for every score; only
then does the port close. A drain that does not finish in ``--drain-timeout`` leaves the rest
in the spool, says so, and the exit status is 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from typing import Any

from schemas import metrics, topics
from schemas.config import GoalstreamConfig
from schemas.kafka import RecordProducer, end_offsets, ensure_topics
from schemas.settings import StackSettings
from schemas.stopping import bounded
from schemas.warehouse import Warehouse
from schemas.regulations import Forgotten
from stream_processors.app import Processors
from stream_processors.forget import Regulator
from stream_processors.scoring.goals import ModelStore
from stream_processors.webhooks.dispatcher import Dispatcher

from .. import errors, live, logsafe
from ..app import SERVICES, create_app
from ..broker import EmbeddedBroker
from ..durable import SpooledSink
from ..health import Health
from . import fronts, http, runfile
from .adapters import GoalRecommender, ScorerTrainer
from .ledger import Ledger, lag
from .lifecycle import Process, wait_until
from .processes import DISPATCHER_STOP_S, PROCESSORS_STOP_S, open_warehouse
from .scoring import ScoringProcess

log = logging.getLogger("goalstream.stack")

BROKER_STOP_S = 30.0
OFFSETS_TIMEOUT_S = 15.0  # reading the topics' end offsets, to know what "drained" is
TICK_S = 0.2  # how often the ledger, the backlog and the broker's RSS are looked at
# With the broker dead, nothing is left to commit or flush: parts get this long to stop.
DEAD_BROKER_STOP_S = 4.0
DEAD_BROKER_PART_S = 1.0  # each step inside (faust's app, a consumer, a producer)
RESTART_ATTEMPTS = 3
RESTART_TIMEOUT_S = 5.0  # one attempt: the broker listening and its topics created
RETRY_AFTER_S = 2  # what writers are told while the broker restarts or the backlog is full


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
        self.sink: SpooledSink | RecordProducer | None = None
        self.ledger: Ledger | None = None
        self.url = ""
        self.token = secrets.token_urlsafe(32)
        self.tap = live.Tap()  # the live page's entries, of every HTTP front (or of the in-process gateway)
        logsafe.add_secrets(self.token)  # the per-run token is a secret like any configured one
        self._recycling = asyncio.Lock()
        self.fronts: fronts.Fronts | None = None  # the HTTP front processes (--gateway-processes > 0)
        self.recommender: GoalRecommender | None = None
        self.trainer: ScorerTrainer | None = None
        self._draining = False  # the fronts' writes are refused here too (one may not have heard yet)
        self._publishing = 0  # the fronts' publishes being made durable right now
        self._blocked: str | None = None  # why writers get 503 right now (broker restarting ...)
        self._admitted: tuple[str, int | None] | None = None  # the admission state the fronts have
        self._broker_died = asyncio.Event()
        self._watch: asyncio.Task | None = None
        self._starting: asyncio.Task | None = None  # processors starting after a broker restart
        self._resent_upto = 0  # the last seq a broker recycle sent again (see _may_recycle)
        self._generation = 0  # processors started so far (one per broker, see _start_processors)
        self._seen = None  # the events sink's memory of recent ids, handed to the next processors
        # The regulations in force (one list for the sinks, the dispatcher and the in-process
        # gateway; the fronts and the scorer read theirs through this process) and their executor.
        self.forgotten = Forgotten()
        self.forgotten.on_forgotten(self.tap.forget)  # the live page forgets them too
        self.regulator: Regulator | None = None

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap if self.broker else self.settings.kafka_bootstrap

    def _make_producer(self) -> RecordProducer:
        s = self.settings
        return RecordProducer(self.bootstrap, idempotence=s.kafka_idempotence, timeout_s=s.produce_timeout_s)

    # -- admission: what the gateway asks before every publish -----------------------------

    @property
    def backlog(self) -> int:
        """Accepted records ClickHouse does not hold yet."""
        if self.ledger is not None:
            return self.ledger.backlog
        if isinstance(self.sink, RecordProducer):
            return lag(self.sink.acked, self.processors.progress if self.processors else None)
        return 0

    @property
    def blocked(self) -> str | None:
        return self._blocked

    @blocked.setter
    def blocked(self, reason: str | None) -> None:
        # The fronts answer from their copy of the admission state: they hear of a change at once.
        self._blocked = reason
        self._push_admission()

    def _admission_state(self) -> tuple[str, int | None] | None:
        refusal = self.admission()
        return None if refusal is None else (refusal.message, refusal.retry_after)

    def _push_admission(self, *, always: bool = False) -> None:
        if self.fronts is None:
            return
        state = self._admission_state()
        if always or state != self._admitted:
            self._admitted = state
            self.fronts.push("admission", state)

    def admission(self) -> errors.GatewayError | None:
        if self.blocked is not None:
            return errors.Unavailable(self.blocked, retry_after=RETRY_AFTER_S)
        bound = self.settings.max_backlog
        if bound and (backlog := self.backlog) >= bound:
            return errors.Unavailable(
                f"{backlog} accepted records are waiting to be stored (the bound is {bound}); retry shortly",
                retry_after=RETRY_AFTER_S,
            )
        return None

    # -- the parts, each started and stopped on its own (recycling restarts two of them) --

    async def _start_broker(self, timeout: float = 20.0) -> None:
        s = self.settings
        if s.embedded_broker:
            if self.broker is None:
                self.broker = EmbeddedBroker(s.kafka_port, s.data_dir / "logs")
            await self.broker.start(timeout=timeout)
            self._broker_died.clear()
            self._watch = asyncio.create_task(self._watch_broker(self.broker), name="goalstream-broker-watch")
            self.health.set("broker", "embedded")
        else:
            self.health.set("broker", "external")
        await asyncio.wait_for(ensure_topics(self.bootstrap, s.topic_partitions, s.topic_replication), timeout)

    async def _watch_broker(self, broker: EmbeddedBroker) -> None:
        """Notice the broker's exit the moment it happens: writers are refused at once."""
        status = await broker.exited()
        if self._broker_died.is_set() or broker.stopping:
            return  # we stopped it ourselves
        self.blocked = "the pipeline's broker is restarting; retry shortly"
        self.health.set("broker", "down")
        log.error("the embedded broker exited (status %s); restarting it (see %s)", status, self.settings.data_dir / "logs" / "broker.log")
        self._broker_died.set()

    async def _stop_broker(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.broker is not None:
            await self.broker.stop()
            log.debug("broker stopped")

    async def _remove_run_file(self) -> None:
        runfile.remove(self.settings.data_dir)

    def _write_run_file(self) -> None:
        runfile.write(self.settings.data_dir, url=self.url, token=self.token, kafka=self.bootstrap,
                      broker_pid=self.broker.pid if self.broker else None,
                      front_pids=self.fronts.pids if self.fronts is not None else None,
                      scorer_pid=self._scorer_pid())

    def _scorer_pid(self) -> int | None:
        external = self.processors.external if self.processors is not None else None
        return external.pid if isinstance(external, ScoringProcess) else None

    # -- the HTTP fronts (--gateway-processes N): the gateway's work off this loop -----------

    async def _start_fronts(self) -> list[str]:
        """The record sink started here (the spool re-sends what it holds), then the fronts;
        stopped the other way round: the sink outlives every front's last publish."""
        s = self.settings
        assert self.sink is not None and self.warehouse is not None
        sink = self.sink
        self.stops.push("the record sink", sink.stop, http.STOP_TIMEOUT_S - http.SHUTDOWN_TIMEOUT_S)
        await sink.start()
        # In-process, the app probes ClickHouse for /healthz; here the fronts ask the stack's report.
        self.health.add_probe("clickhouse", self.warehouse.ping)
        self.fronts = fronts.Fronts(s, self.config, self.token, handler=self._front_call, admission=self._admission_state,
                                    restarted=self._write_run_file)
        self.fronts.on_tap = self.tap.add
        self.stops.push("the HTTP fronts", self.fronts.stop, fronts.STOP_TIMEOUT_S)
        urls = await self.fronts.start()
        self.health.set("gateway", "up")
        return urls

    async def _front_call(self, method: str, args: tuple) -> object:
        """One call of an HTTP front, answered with this process's parts (remote.py is the other side)."""
        if method == "publish":
            return await self._publish_encoded(*args)
        assert self.warehouse is not None
        if method == "rows":
            return await self.warehouse.rows(*args)
        if method == "ping":
            return await self.warehouse.ping()
        if method == "admin":
            return await self.warehouse.admin(*args)
        if method == "recommend":
            assert self.recommender is not None
            return await self.recommender.recommend(*args)
        if method == "train":
            assert self.trainer is not None
            return await self.trainer(*args)
        if method == "tap":
            return await self.tap.feed(*args)
        if method in ("forget", "regulations", "regulation_wait"):
            assert self.regulator is not None
            if method == "forget":
                workspace, customer_id, suppress, requested_by = args
                return await self.regulator.request(workspace, customer_id, suppress=suppress, requested_by=requested_by)
            if method == "regulations":
                return await self.regulator.list(*args)
            return await self.regulator.wait(*args)
        if method == "health":
            await self.health.probe()
            if self.fronts is not None:
                self.health.detail("fronts", self.fronts.stats())
            return self.health.states(), dict(self.health.details)
        raise ValueError(f"an HTTP front asked for {method!r}, which the stack does not answer")

    async def _publish_encoded(self, entries: list) -> None:
        """A front's encoded records, durable when this returns (the front answers 2xx then).
        Admission is checked again here: a front's copy of it may be a tick old."""
        if self._draining:
            raise errors.Unavailable("the gateway is draining; retry shortly", retry_after=5)
        if (refusal := self.admission()) is not None:
            raise refusal
        self._publishing += 1
        try:
            if isinstance(self.sink, SpooledSink):
                await self.sink.publish_encoded(entries)
            elif self.sink is not None:
                await self.sink.send_encoded(entries)
            else:
                raise errors.Unavailable("the gateway is not started; retry shortly", retry_after=5)
        finally:
            self._publishing -= 1

    async def _writes_idle(self) -> None:
        """Until no write is in flight: in-process publishes, and the fronts' being made durable."""
        if self.server is not None:
            await self.server.app[SERVICES].wait_idle()
        while self._publishing:
            await asyncio.sleep(0.01)

    def _stop_writes(self) -> None:
        """From now on every write is answered 503 + Retry-After (the drain)."""
        self._draining = True
        if self.server is not None:
            self.server.app[SERVICES].draining = True
        if self.fronts is not None:
            self.fronts.drain()
        self.health.set("gateway", "draining")

    async def _close_gateway(self) -> None:
        if self.server is not None:
            await self.stops.run("the gateway", self.server.stop, http.STOP_TIMEOUT_S)
        if self.fronts is not None:
            await self.stops.run("the HTTP fronts", self.fronts.stop, fronts.STOP_TIMEOUT_S)
            self.health.set("gateway", "stopped")

    async def _start_processors(self) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        # A resent record is skipped by the events sink's memory of recent ids: keep it
        # across a broker restart, so what the spool sends again is not inserted twice.
        settings = self.settings
        if self._generation and self.settings.embedded_broker:
            # Each new embedded broker gets a group of its own: a faust consumer of the old one
            # that outlived its stop (a dead broker leaves faust's stop hanging) rejoins its
            # old group on the new broker and would hold up this one's rebalance. The broker
            # starts empty, so a new group loses no committed offset.
            settings = settings.model_copy(update={"consumer_group": f"{settings.consumer_group}-{self._generation}"})
        self._generation += 1
        # With a goal, scoring in a process of its own: off this loop, which keeps the sinks,
        # the spool's relay and the fronts' publishes (it asks this process for ClickHouse).
        scoring = ScoringProcess(self.warehouse, restarted=self._write_run_file) if self.config.goals and settings.scoring_process else None
        self.processors = Processors(settings, self.warehouse, self.config, models=self.models, scoring=scoring,
                                     forgotten=self.forgotten)
        if self._seen is not None:
            self.processors.events.seen = self._seen
        self.health.set("processors", "starting")
        await self.processors.start()
        self.health.set("processors", "running")
        t1 = loop.time()
        self.dispatcher = Dispatcher(self.settings, self.config, self.warehouse, forgotten=self.forgotten)
        await self.dispatcher.start()
        self.health.set("dispatcher", "running")
        log.info("processors started in %.1fs, dispatcher in %.1fs", t1 - t0, loop.time() - t1)

    def _quiet_events(self) -> Any:
        """The events sink of the processors running now, paused (a regulation's sweep)."""
        return self.processors.events.paused if self.processors is not None else contextlib.nullcontext()

    async def _stop_regulations(self) -> None:
        if self.regulator is not None:
            await self.regulator.stop()  # a regulation cut short stays "running": resumed at the next start
        await self.forgotten.stop()

    async def _stop_processors(self) -> None:
        """The stack's own stop of the processors and dispatcher (its outcome counts)."""
        await self._stop_consumers(self.stops.run)

    async def _stop_consumers(self, run=None) -> None:
        """Stop the processors and the dispatcher; ``run`` is how each stop is run (bounded)."""
        run = run or (lambda what, stop, timeout_s: bounded(what, stop, timeout_s, logger=log))
        starting, self._starting = self._starting, None
        if starting is not None and not starting.done():
            starting.cancel()
            await bounded("starting the processors", asyncio.gather(starting, return_exceptions=True), DEAD_BROKER_STOP_S, logger=log)
        dispatcher, self.dispatcher = self.dispatcher, None
        processors, self.processors = self.processors, None
        if processors is not None:
            self._seen = processors.events.seen  # the next processors inherit its memory of recent ids
        if self.broker is not None and not self.broker.running:
            # Nothing to commit to a dead broker: stop both at once, briefly.
            stops = []
            if dispatcher is not None:
                stops.append(run("the dispatcher", lambda: dispatcher.stop(timeout=DEAD_BROKER_PART_S), DEAD_BROKER_STOP_S))
            if processors is not None:
                stops.append(run("the processors", lambda: processors.stop(timeout=DEAD_BROKER_PART_S, broker_gone=True), DEAD_BROKER_STOP_S))
            await asyncio.gather(*stops)
            return
        if dispatcher is not None:
            await run("the dispatcher", dispatcher.stop, DISPATCHER_STOP_S)
            log.debug("dispatcher stopped")
        if processors is not None:
            await run("the processors", processors.stop, PROCESSORS_STOP_S)
            log.debug("processors stopped")

    # -- the life ------------------------------------------------------------------------

    async def open(self) -> list[str]:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = runfile.lock(s.data_dir)  # first: a second `up` here is told who holds it
        self.stops.push("the run file", self._remove_run_file)  # pushed first: removed last
        self.stops.push("the broker", self._stop_broker, BROKER_STOP_S)
        await self._start_broker()
        self.warehouse = await open_warehouse(s, self.stops, admin_concurrency=s.sql_concurrency)
        self.health.set("clickhouse", "up")
        # Before any Python child starts and any metric is counted, and only once chDB's lock
        # is ours (a second `up` on this data dir must not empty the running one's files): the
        # fronts and the scoring process write there too, a scrape merges them all (schemas/metrics.py).
        metrics.use_directory(metrics.directory_of(s.data_dir))
        # What was forgotten is known before anything is stored, and kept fresh while we run.
        await self.forgotten.refresh(self.warehouse)
        self.forgotten.start(self.warehouse)
        self.regulator = Regulator(self.warehouse, self.forgotten, settle_s=s.forget_settle_s, quiesce=self._quiet_events)
        self.stops.push("the regulations", self._stop_regulations, 10.0)
        # One model store for the scorer and the API, so both serve a new model at once.
        self.models = ModelStore(self.warehouse, ttl_s=s.model_refresh_s)
        self.stops.push("the processors", self._stop_processors, DISPATCHER_STOP_S + PROCESSORS_STOP_S + 5)
        await self._start_processors()
        if s.spooled:
            self.sink = SpooledSink(s.data_dir / "spool", self._make_producer)
        else:
            self.sink = self._make_producer()
        self.trainer = ScorerTrainer(lambda: self.processors)
        self.recommender = GoalRecommender(self.warehouse, self.config, self.models)
        if s.gateway_processes:
            urls = await self._start_fronts()
        else:
            app = create_app(
                s, self.config, warehouse=self.warehouse, health=self.health, local_token=self.token,
                producer=self.sink, admission=self.admission, trainer=self.trainer, recommender=self.recommender,
                tap=self.tap, forgotten=self.forgotten, regulator=self.regulator,
            )
            self.server = http.Http(app, s)
            self.stops.push("the gateway", self.server.stop, http.STOP_TIMEOUT_S)
            urls = await self.server.start()  # starts the sink: the spool re-sends what it holds
        await self.regulator.resume()  # what a stop cut short is carried out now
        if isinstance(self.sink, SpooledSink):
            self.ledger = Ledger(self.sink, lambda: self.processors, lambda: self.dispatcher)
        self.url = urls[0]
        self._write_run_file()
        await self._tick()
        return urls

    async def wait(self, stop: asyncio.Event) -> None:
        """Keep the books and watch the embedded broker until the stop signal."""
        while not stop.is_set():
            await _first((stop, self._broker_died), TICK_S)
            if stop.is_set():
                return
            if self._broker_died.is_set():
                if not await self.recover():
                    self.stops.failed.append("the embedded broker")
                    stop.set()
                    return
                continue
            await self._tick()
            if self.broker is not None and self.broker.running:
                rss = self.broker.rss_mb()
                if rss > self.settings.broker_max_rss_mb and self._may_recycle():
                    log.warning("embedded broker uses %.0f MB (> %d MB): recycling it", rss, self.settings.broker_max_rss_mb)
                    await self.recycle_broker()

    async def _tick(self) -> None:
        """Release what is stored from the spool; publish the backlog in /healthz."""
        if self.ledger is not None:
            upto = self.ledger.step()
            if upto is not None:
                await self.ledger.sink.spool.release(upto)
        if self.fronts is not None:
            self.fronts.push("tap_armed", self.tap.armed)  # the fronts capture only while the live page is watched
        detail: dict[str, object] = {"records": self.backlog, "max": self.settings.max_backlog}
        if isinstance(self.sink, SpooledSink):
            detail["spool"] = self.sink.spool.stats()
        self.health.detail("backlog", detail)
        if self.processors is not None:
            self.processors.observe_lag()
        self._push_admission(always=True)  # every tick: a front started meanwhile, a backlog that moved

    # -- the broker's death, and its recycling ---------------------------------------------

    def _may_recycle(self) -> bool:
        # Not again before what the last recycle sent to the new broker is stored: the re-sent
        # backlog itself grows the new broker, and recycling it again would only send it again.
        return self.ledger is None or self.ledger.stored_seq >= self._resent_upto

    async def _restart_broker(self) -> bool:
        """A new embedded broker on the same port, its topics, the sink reconnected."""
        assert self.broker is not None
        for attempt in range(1, RESTART_ATTEMPTS + 1):
            try:
                await self.broker.stop()  # reaps the old process
                await self._start_broker(timeout=RESTART_TIMEOUT_S)
                break
            except Exception as exc:
                log.error("restarting the embedded broker failed (attempt %d of %d): %s", attempt, RESTART_ATTEMPTS, exc)
                await asyncio.sleep(0.5)
        else:
            return False
        if isinstance(self.sink, SpooledSink):
            await self.sink.reconnect()  # everything not yet released, in order, then new records
        elif self.sink is not None:
            # Without a spool: what it still buffers was for the old broker (flushed before a
            # recycle; lost with a dead one, as documented), never to be delivered late.
            await bounded("the gateway's producer", self.sink.abort, DEAD_BROKER_STOP_S, logger=log)
            await self.sink.start()
        self._write_run_file()
        return True

    def _start_processors_later(self) -> None:
        # Joining the consumer group takes seconds; writers need not wait for it.
        async def start() -> None:
            try:
                await self._start_processors()
            except Exception:
                log.exception("the processors did not start after the broker restart; stopping the stack")
                self._broker_died.set()  # the next tick treats it as a failed broker

        self._starting = asyncio.create_task(start(), name="goalstream-processors-start")

    async def recover(self) -> bool:
        """The embedded broker died: restart it and everything that talks to it."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        self.blocked = self.blocked or "the pipeline's broker is restarting; retry shortly"
        self.health.set("broker", "down")
        if isinstance(self.sink, SpooledSink):
            await asyncio.gather(self.sink.pause(broker_gone=True), self._stop_consumers())
        else:
            await self._stop_consumers()
        self.health.set("broker", "recovering")
        if not await self._restart_broker():
            self.health.set("broker", "down")
            log.error("the embedded broker cannot be restarted; stopping the stack (what was accepted stays in the spool)")
            return False
        self.blocked = None
        log.warning("embedded broker restarted in %.1fs; taking records again", loop.time() - t0)
        self._start_processors_later()
        return True

    async def recycle_broker(self) -> None:
        """Replace the embedded broker (its memory is never given back); writers get 503 for
        the few seconds it takes. With the spool, what is not stored yet is sent to the new
        broker again; without it, the processors drain the old broker first."""
        async with self._recycling:
            t0 = asyncio.get_running_loop().time()
            self.blocked = "the pipeline's broker is being recycled; retry shortly"
            self.health.set("broker", "recycling")
            try:
                await bounded("requests in flight", self._writes_idle, http.SHUTDOWN_TIMEOUT_S, logger=log)
                if isinstance(self.sink, SpooledSink):
                    await bounded("sending the spool", self.sink.flush, 5.0, logger=log)
                    await self.sink.pause()
                else:
                    await self.sink.flush()
                    await self._drain_processors()
                await self._stop_consumers()
                if not await self._restart_broker():
                    self._broker_died.set()  # handled as a broker that died
                    return
                if isinstance(self.sink, SpooledSink):
                    self._resent_upto = self.sink.spool.last_seq
                self.blocked = None
                log.warning("recycled the embedded broker: writers were refused for %.1fs", asyncio.get_running_loop().time() - t0)
                self._start_processors_later()
            finally:
                if not self._broker_died.is_set():
                    self.blocked = None
                    self.health.set("broker", "embedded" if self.broker and self.broker.running else "down")

    # -- the drain ----------------------------------------------------------------------------

    async def drain(self) -> None:
        if self.server is None and self.fronts is None:
            return
        # The port stays open: new writes get 503 + Retry-After until the drain has ended.
        self._stop_writes()
        await self.stops.run("finishing requests in flight", self._writes_idle, http.SHUTDOWN_TIMEOUT_S)
        broker_up = self.broker is None or self.broker.running
        if self._starting is not None and broker_up:
            await bounded("starting the processors", asyncio.shield(self._starting), 30.0, logger=log)
        if isinstance(self.sink, SpooledSink):
            if not await self._drain_spool():
                self.stops.failed.append("draining")
        elif self.broker is not None and self.broker.running:
            # An external Kafka keeps what is not stored yet; the embedded broker does not.
            await self.stops.run("flushing the producer", self.sink.flush, 30.0)
            await self.stops.run("draining the processors", self._drain_processors, self._drain_bound())
        await self._close_gateway()
        log.debug("gateway stopped")

    async def _drain_spool(self) -> bool:
        """Until the spool is released to its end: everything accepted is in ClickHouse, and
        everything it led to. False (and said) if that did not happen in the drain timeout."""
        assert isinstance(self.sink, SpooledSink) and self.ledger is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout_s
        while not self.ledger.settled:
            if self.broker is not None and not self.broker.running:
                reason = "the broker is down"
                break
            if loop.time() >= deadline:
                reason = f"it did not finish within {self.settings.drain_timeout_s:.0f}s"
                break
            await asyncio.sleep(0.05)
            await self._tick()
        else:
            await self._tick()  # /healthz shows the empty backlog until the port closes
            log.info("drained: all %d records accepted are in ClickHouse", self.sink.spool.last_seq)
            return True
        log.error(
            "the drain stopped because %s: %d accepted records are not stored yet; they stay in the spool (%s) "
            "and are stored at the next start", reason, self.backlog, self.sink.spool_dir,
        )
        return False

    def _drain_bound(self) -> float:
        # Up to three waits of drain_timeout_s, each after reading end offsets.
        return 3 * (self.settings.drain_timeout_s + OFFSETS_TIMEOUT_S) + 5

    async def _drain_processors(self) -> None:
        """Without a spool: wait until everything on the broker is in ClickHouse: customers
        and events first, then the dead letters, which include any those two produced meanwhile."""
        if self.processors is None:
            return
        total = 0
        for names in ([topics.EVENTS, topics.CUSTOMERS], [topics.DEADLETTER]):
            try:
                ends = await asyncio.wait_for(end_offsets(self.bootstrap, names), OFFSETS_TIMEOUT_S)
            except Exception as exc:
                raise DrainIncomplete(f"cannot read end offsets to drain ({exc!r}); records not yet stored may be lost") from None
            total += sum(ends.values())
            if not await self.processors.wait_caught_up(ends, self.settings.drain_timeout_s):
                raise DrainIncomplete(f"drain timed out after {self.settings.drain_timeout_s:.0f}s; progress {self.processors.progress} of {ends}")
        # Then the dispatcher stores a delivery for every propensity record (it retries from ClickHouse).
        if self.dispatcher is not None:
            try:
                ends = await asyncio.wait_for(end_offsets(self.bootstrap, [topics.PROPENSITY, topics.RECOMMENDATIONS]), OFFSETS_TIMEOUT_S)
            except Exception as exc:
                raise DrainIncomplete(f"cannot read end offsets to drain the dispatcher ({exc!r})") from None
            total += sum(ends.values())
            dispatcher = self.dispatcher
            if not await wait_until(lambda: dispatcher.caught_up(ends), self.settings.drain_timeout_s):
                raise DrainIncomplete("the dispatcher did not catch up within the drain timeout")
        log.info("drained: %d records on the broker are all in ClickHouse", total)


class DrainIncomplete(Exception):
    """A drain that could not finish: what was not stored is named in the message."""


async def _first(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    """Until one of ``events`` is set, or ``timeout``."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
