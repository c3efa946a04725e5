"""The stream processors: the faust worker hosting three bulk sinks and the scoring stage.

Flow: ``goalstream.events`` -> ``sinks.EventsSink`` -> ClickHouse ``events``;
``goalstream.customers`` -> ``sinks.CustomersSink`` -> ``customers`` and ``customer_merges``;
``goalstream.deadletter`` -> ``sinks.DeadLettersSink`` -> ``deadletters``. Each bulk sink is a
``SinkService``: its own aiokafka batch consumer (``source.KafkaBatches``: ``getmany`` with a
fetch wait of tens of ms, 500 for dead letters; paying per batch, not per message) -> ``runtime.BatchRuntime``
(decode with the writer's schema, dead-letter, retry/isolate, progress) -> commit, in that order.
Apart from them, ``scoring.stage.ScoringStage`` reads the same two topics in a consumer group
of its own, waits until the sinks have stored what it read, coalesces the customers it touched
across batches and rescores them (``scoring.processor.Scorer``): scoring never delays an insert.

This module only wires: the faust app (faust keeps the worker's lifecycle; its own per-message
consumer is not started: ``_Boot``), the services hosted in it, the one producer (dead letters,
propensity changes and recommended actions), the sinks and their runtimes. Consumer groups:
``<group>`` for the events sink (GOALSTREAM_CONSUMER_GROUP), ``<group>.customers``,
``<group>.deadletter`` and ``<group>.scoring``. The customer cache is dropped whenever the
customers sink's partitions are revoked.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import faust
from mode import Service

from schemas import metrics, model, topics
from schemas.registry import Registry
from schemas.regulations import Forgotten
from schemas.config import GoalstreamConfig
from schemas.kafka import RecordProducer
from schemas.settings import WorkerSettings
from schemas.stopping import bounded
from schemas.warehouse import Warehouse

from .runtime import BatchRuntime, DeadLetterTopic, Progress
from .scoring.processor import Scorer
from .scoring.stage import ScoringStage
from .sinks import CustomersSink, DeadLettersSink, EventsSink
from .source import KafkaBatches, offsets_of
from .stopping import stop_within

log = logging.getLogger("goalstream.processors")

CUSTOMER_SCHEMAS = {model.CUSTOMER_UPSERT, model.CUSTOMER_DELETE, model.CUSTOMER_ARRAYS, model.CUSTOMER_MERGE}
CRASH_PAUSE_S = 1.0  # after a bug in a sink loop, before it reads again from the last commit
TASK_STOP_S = 5.0
# An idle fetch comes back empty after its wait: the broker and this loop pay for each one (20 ms
# waits on the three sink consumers were ~30% of a core with nothing to do). Dead letters carry no
# latency promise, so their consumer waits longer.
DEADLETTER_FETCH_WAIT_MS = 500


class _Boot(faust.App.BootStrategy):
    """The faust worker without faust's own consumer (and its conductor and tables) and its
    producer: the sinks consume through ``KafkaBatches`` and produce through ``RecordProducer``."""

    enable_kafka_consumer = False
    enable_kafka_producer = False
    enable_web = False


class _App(faust.App):
    BootStrategy = _Boot


class SinkService(Service):
    """One bulk sink hosted in the faust worker: batches from its source through its runtime,
    each committed only after the runtime handled it (rows stored, dead letters acknowledged)."""

    def __init__(self, source: KafkaBatches, runtime: BatchRuntime, **kwargs: Any):
        super().__init__(**kwargs)
        self.source = source
        self.runtime = runtime
        self._task: asyncio.Task | None = None

    @property
    def label(self) -> str:
        return f"{type(self).__name__}: {self.runtime.stage}"

    async def on_start(self) -> None:
        await self.source.start()
        self._task = asyncio.create_task(self._consume(), name=f"goalstream-{self.runtime.stage}")

    async def _consume(self) -> None:
        while True:
            try:
                async for batch in self.source:
                    await self.runtime.process(batch)
                    await self.source.commit(offsets_of(batch))
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug, not an outage (the runtime waits those out): what was read and not
                # committed is read again, so nothing is skipped.
                log.exception("%s: the sink loop failed; reading again from the last commit", self.runtime.stage)
                await asyncio.sleep(CRASH_PAUSE_S)
                await self.source.consumer.seek_to_committed()

    def halt(self) -> None:
        """Handle nothing more from now on (the broker is gone: its stop may never finish)."""
        if self._task is not None:
            self._task.cancel()

    async def on_stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await bounded(f"the {self.runtime.stage} loop", asyncio.gather(task, return_exceptions=True), TASK_STOP_S, logger=log)
        await self.source.stop()


def batches(
    settings: WorkerSettings, group: str, names: list[str], fetch_wait_ms: int | None = None, **kwargs: Any
) -> KafkaBatches:
    """A batch consumer of ``names`` in ``group``, as every bulk consumer of a worker reads
    (``fetch_wait_ms``: this one's own, instead of the settings')."""
    s = settings
    return KafkaBatches(
        s.kafka_bootstrap, group, names, max_records=s.batch_max, fetch_wait_ms=fetch_wait_ms or s.fetch_wait_ms,
        window_s=s.batch_within_s,
        session_timeout_s=s.session_timeout_s, rebalance_timeout_s=s.rebalance_timeout_s, **kwargs,
    )


def scoring_stage(settings: WorkerSettings, scorer: Scorer, **kwargs: Any) -> ScoringStage:
    """The scoring stage reading in ``<group>.scoring``, wherever it runs."""
    s = settings
    return ScoringStage(
        # Another member may now score some customers: what this one remembers of them may go stale.
        batches(s, f"{s.consumer_group}.scoring", [topics.EVENTS, topics.CUSTOMERS], on_revoked=scorer.rebalanced), scorer,
        interval_s=s.score_interval_s, bootstrap=s.kafka_bootstrap,
        sink_groups={topics.EVENTS: s.consumer_group, topics.CUSTOMERS: f"{s.consumer_group}.customers"}, **kwargs,
    )


class Processors:
    def __init__(self, settings: WorkerSettings, warehouse: Warehouse, config: GoalstreamConfig, models: Any = None,
                 scoring: Any = None, forgotten: Forgotten | None = None):
        """``scoring``: the scoring stage run elsewhere instead of hosted here (the embedded
        stack runs it in a process of its own, off this loop: ``ingest_gateway/cli/scoring.py``).
        It has ``scored`` (a Progress), ``acked`` (what its producer published), and
        ``start(processors)``, ``stop(timeout, broker_gone)``, ``train(goal, workspace)``.
        ``forgotten``: the regulations' list, kept fresh by the caller (default: one of our
        own, refreshed from ``warehouse`` while we run)."""
        self.settings = settings
        self.warehouse = warehouse
        self.config = config
        self.progress = Progress()
        # Dead letters, propensity changes and recommended actions all go out through this one.
        # Not idempotent: what it sends carries deterministic ids, so a retry duplicate is recognisable.
        self.producer = RecordProducer(settings.kafka_bootstrap, idempotence=False, registry=Registry.from_settings(settings))
        self._own_forgotten = forgotten is None
        self.forgotten = forgotten if forgotten is not None else Forgotten()
        f = self.forgotten
        self.events = EventsSink(warehouse, dedup_window=settings.dedup_window, exact=settings.exact_dedup, forgotten=f)
        self.customers = CustomersSink(warehouse, cache_size=settings.customer_cache_size, forgotten=f)
        self.deadletters = DeadLettersSink(warehouse, forgotten=f)
        self.scorer = Scorer(settings, config, warehouse, self.producer, is_leader=self._owns_partition_zero, models=models,
                             forgotten=f)
        letters = DeadLetterTopic(self.producer)
        shared = {"is_up": warehouse.ping, "progress": self.progress}
        s = self.settings
        # (topic, consumer group, runtime): the stage names are the dead letters' ``stage``.
        wiring = (
            (topics.EVENTS, s.consumer_group,
             BatchRuntime("events-sink", {model.EVENT}, self.events, letters=letters, logical=False, **shared)),
            (topics.CUSTOMERS, f"{s.consumer_group}.customers",
             BatchRuntime("customers-sink", CUSTOMER_SCHEMAS, self.customers, letters=letters, **shared)),
            (topics.DEADLETTER, f"{s.consumer_group}.deadletter",
             BatchRuntime("deadletters-sink", {model.DEAD_LETTER}, self.deadletters, letters=None,
                          rescue=self.deadletters.rescue, **shared)),
        )
        self.sources = {
            topic: self._source(
                group, [topic],
                # Another worker may now own some customers: our cached view of them may go stale.
                on_revoked=self.customers.clear if topic == topics.CUSTOMERS else None,
                # New partitions may resend what another worker stored: remember its ids first.
                on_assigned=self.events.reseed if topic == topics.EVENTS else None,
                # Nobody waits on a dead letter's row within milliseconds, and an idle fetch costs
                # the broker and this loop each time it comes back empty.
                fetch_wait_ms=max(s.fetch_wait_ms, DEADLETTER_FETCH_WAIT_MS) if topic == topics.DEADLETTER else None,
            )
            for topic, group, _ in wiring
        }
        self.services = [SinkService(self.sources[topic], runtime) for topic, _, runtime in wiring]
        # Scoring only where some workspace has a goal: otherwise nothing would ever be scored.
        self.stage: ScoringStage | None = None
        self.external = scoring if config.goals else None
        if config.goals and scoring is None:
            self.stage = scoring_stage(s, self.scorer, stored=self.progress, owned=self._owned, backlog=self._backlog)
        self._scoring_lane: Warehouse | None = None
        self.app = self._make_app()

    @property
    def hosted(self) -> list[Any]:
        """The services the faust worker hosts: the bulk sinks, and the scoring stage if any."""
        return [*self.services, *([self.stage] if self.stage is not None else [])]

    def _source(self, group: str, names: list[str], **kwargs: Any) -> KafkaBatches:
        return batches(self.settings, group, names, **kwargs)

    def owned_partitions(self) -> list[tuple[str, int]]:
        """The events and customers partitions this worker's sinks hold now."""
        return [(tp.topic, tp.partition) for topic in (topics.EVENTS, topics.CUSTOMERS) for tp in self.sources[topic].assignment()]

    @property
    def published(self) -> dict[tuple[str, int], int]:
        """What the processors' producers have had acknowledged, per partition (the scoring
        stage's too, where it runs elsewhere)."""
        out = dict(self.producer.acked)
        if self.external is not None:
            for tp, off in self.external.acked.items():
                out[tp] = max(off, out.get(tp, -1))
        return out

    async def train(self, goal: str | None, workspace: str | None = None) -> list[dict[str, Any]]:
        """``goalstream train`` while running: where the scoring stage runs, so it rescores."""
        if self.external is None:
            return await self.scorer.train(goal, workspace=workspace)
        summaries = await self.external.train(goal, workspace)
        # The models it stored, in the model store this process shares with the API at once.
        for s in summaries:
            g = self.scorer._goal(s["workspace"], s["goal"])
            if g is not None:
                self.scorer.models.put(await self.scorer.models.load(s["workspace"], g))
        return summaries

    # -- faust wiring ------------------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        return _App(
            s.consumer_group,
            broker=[f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",")],
            datadir=str(s.data_dir / "faust"),
            web_enabled=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
        )

    def _owned(self, topic: str, partition: int) -> bool:
        """Whether this worker's sink for ``topic`` holds ``partition`` now."""
        source = self.sources.get(topic)
        return source is not None and any(tp.partition == partition for tp in source.assignment() if tp.topic == topic)

    def _backlog(self) -> int:
        """Records on this worker's events and customers partitions that the sinks have not
        stored yet (as of their last fetch)."""
        n = 0
        for topic in (topics.EVENTS, topics.CUSTOMERS):
            for tp, end in self.sources[topic].highwaters().items():
                n += max(0, end - 1 - self.progress.offsets.get(tp, -1))
        return n

    def observe_lag(self) -> None:
        """``goalstream_consumer_lag`` for the events and customers partitions this worker
        holds (as of the sinks' last fetch); called on a tick or before a scrape, never per record."""
        for topic in (topics.EVENTS, topics.CUSTOMERS):
            source = self.sources.get(topic)
            if source is None:
                continue
            for tp, end in source.highwaters().items():
                lag = max(0, end - 1 - self.progress.offsets.get(tp, -1))
                metrics.CONSUMER_LAG.labels("processors", tp[0], str(tp[1])).set(lag)

    def _owns_partition_zero(self) -> bool:
        """One worker of the group does the group-wide jobs (rescoring after a model change,
        scheduled retraining): the one that holds partition 0 of the events topic."""
        return any(tp.topic == topics.EVENTS and tp.partition == 0 for tp in self.sources[topics.EVENTS].assignment())

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        (self.settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
        if self._own_forgotten:
            # Refreshed while we run; the sinks read it once themselves before their first
            # write (``Forgotten.ready``), so nothing is stored before the list is known.
            self.forgotten.start(self.warehouse)
        # The scorer's reads and its three inserts per round on a lane of their own: with them
        # on the sinks' thread, POST -> row visible at 5k events/s with a goal was 1.6-2.8 s.
        self.scorer.warehouse = self._scoring_lane = await self.warehouse.lane()
        await self.producer.start()
        await self.app.start()
        # Hosted in the faust worker: started now, stopped with it. The consumers join their
        # groups concurrently (each join waits up to the rebalance timeout).
        # The scoring stage run elsewhere starts meanwhile (its interpreter, its own join).
        external = [self.external.start(self)] if self.external is not None else []
        await asyncio.gather(*(self.app.add_runtime_dependency(svc) for svc in self.hosted), *external)
        if self.external is None:
            await self.scorer.start()

    async def stop(self, timeout: float = 30.0, *, broker_gone: bool = False) -> None:
        """Stop scoring, then the faust worker with the services it hosts (each cancels its
        loop first, so nothing more is handled, then leaves its group), then the producer.
        ``broker_gone``: every loop is cancelled at once, before any stop that may overrun,
        so a consumer left behind never handles anything from the next broker."""
        if broker_gone:
            for svc in self.hosted:
                svc.halt()
        if self.external is not None:
            await stop_within("the scoring process", self.external.stop(timeout, broker_gone=broker_gone), timeout)
        await self.scorer.stop()
        if self._own_forgotten:
            await self.forgotten.stop()
        # Bounded: with the broker gone, a consumer leaving its group could wait forever.
        await stop_within("the processors", self.app.stop(), timeout)
        # With the broker gone, what the producer buffers is not delivered later to a new one.
        stop = self.producer.abort() if broker_gone else self.producer.stop()
        await stop_within("the processors' producer", stop, min(10.0, timeout))
        if self._scoring_lane is not None:
            lane, self._scoring_lane = self._scoring_lane, None
            self.scorer.warehouse = self.warehouse
            await stop_within("the scorer's ClickHouse client", lane.close(), min(10.0, timeout))

    # -- draining ----------------------------------------------------------------------

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        """Stored: the sinks have handled every partition up to ``ends``."""
        return self.progress.caught_up(ends)

    def scored(self, ends: dict[tuple[str, int], int]) -> bool:
        """Scored too: the scoring stage has rescored what those records touched (and its
        propensity changes are acknowledged by the broker)."""
        scoring = self.stage or self.external
        return scoring is None or scoring.scored.caught_up(_scoring_part(ends))

    async def wait_caught_up(self, ends: dict[tuple[str, int], int], timeout: float) -> bool:
        """Until stored and scored (a drain waits for both), or False after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not await self.progress.wait_caught_up(ends, timeout):
            return False
        scoring = self.stage or self.external
        if scoring is None:
            return True
        return await scoring.scored.wait_caught_up(_scoring_part(ends), max(0.0, deadline - loop.time()))


def _scoring_part(ends: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    return {tp: end for tp, end in ends.items() if tp[0] in (topics.EVENTS, topics.CUSTOMERS)}
