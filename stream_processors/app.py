"""The stream processors: three faust agents, each a batch runtime in front of one sink.

Flow: ``goalstream.events`` (agent ``goalstream.events-sink``) -> ``sinks.EventsSink`` ->
ClickHouse ``events``; ``goalstream.customers`` (``goalstream.customers-sink``) ->
``sinks.CustomersSink`` -> ``customers`` and ``customer_merges``; ``goalstream.deadletter``
(``goalstream.deadletters-sink``) -> ``sinks.DeadLettersSink`` -> ``deadletters``. After
the events or customers sink stored a batch, the scoring processor (``scoring.processor.
Scorer``) rescores the customers it touched, in every goal of their workspace, and
publishes propensity changes and recommended actions.

This module only wires: the faust app and its agents (batches from ``take_events``, which
acknowledges a batch only once the runtime asks for the next), the one producer (dead
letters, propensity changes and recommended actions), the sinks and their runtimes
(``runtime.BatchRuntime``: decode, dead-letter, retry/isolate, progress, commit after
store), and the lifecycle. The customer cache is dropped whenever partitions are revoked.
"""

from __future__ import annotations

import logging
from typing import Any, AsyncIterator, Sequence

import faust

from schemas import model, topics
from schemas.config import GoalstreamConfig
from schemas.kafka import RecordProducer
from schemas.settings import WorkerSettings
from schemas.warehouse import Warehouse

from .runtime import BatchRuntime, DeadLetterTopic, Progress
from .scoring.processor import Scorer
from .sinks import CustomersSink, DeadLettersSink, EventsSink
from .stopping import stop_within

log = logging.getLogger("goalstream.processors")

CUSTOMER_SCHEMAS = {model.CUSTOMER_UPSERT, model.CUSTOMER_DELETE, model.CUSTOMER_ARRAYS, model.CUSTOMER_MERGE}


async def _messages(events: AsyncIterator[Sequence[Any]]) -> AsyncIterator[list[Any]]:
    # faust events -> their Kafka messages; resuming ``events`` is what acks the last batch.
    async for batch in events:
        yield [e.message for e in batch]


class Processors:
    def __init__(self, settings: WorkerSettings, warehouse: Warehouse, config: GoalstreamConfig, models: Any = None):
        self.settings = settings
        self.warehouse = warehouse
        self.config = config
        self.progress = Progress()
        # Dead letters, propensity changes and recommended actions all go out through this one.
        # Not idempotent: what it sends carries deterministic ids, so a retry duplicate is recognisable.
        self.producer = RecordProducer(settings.kafka_bootstrap, idempotence=False)
        self.scorer = Scorer(settings, config, warehouse, self.producer, is_leader=self._owns_partition_zero, models=models)
        self.events = EventsSink(warehouse, self.scorer.score_with_retry, dedup_window=settings.dedup_window)
        self.customers = CustomersSink(warehouse, self.scorer.score_with_retry, cache_size=settings.customer_cache_size)
        self.deadletters = DeadLettersSink(warehouse)
        letters = DeadLetterTopic(self.producer)
        shared = {"is_up": warehouse.ping, "progress": self.progress}
        # (topic, agent name, runtime): the stage names are the dead letters' ``stage``.
        self.agents = (
            (topics.EVENTS, "goalstream.events-sink",
             BatchRuntime("events-sink", {model.EVENT}, self.events, letters=letters, **shared)),
            (topics.CUSTOMERS, "goalstream.customers-sink",
             BatchRuntime("customers-sink", CUSTOMER_SCHEMAS, self.customers, letters=letters, **shared)),
            (topics.DEADLETTER, "goalstream.deadletters-sink",
             BatchRuntime("deadletters-sink", {model.DEAD_LETTER}, self.deadletters, letters=None,
                          rescue=self.deadletters.rescue, **shared)),
        )
        self.app = self._make_app()

    # -- faust wiring ------------------------------------------------------------------

    def _make_app(self) -> faust.App:
        s = self.settings
        app = faust.App(
            s.consumer_group,
            broker=[f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",")],
            datadir=str(s.data_dir / "faust"),
            web_enabled=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
            consumer_auto_offset_reset="earliest",
            stream_wait_empty=False,
            stream_buffer_maxsize=max(4096, s.batch_max * 2),
            broker_rebalance_timeout=s.rebalance_timeout_s,
            broker_session_timeout=s.session_timeout_s,
            broker_heartbeat_interval=min(1.0, s.session_timeout_s / 4),
            broker_commit_interval=1.0,
        )
        for topic, name, runtime in self.agents:
            channel = app.topic(topic, value_serializer="raw", key_serializer="raw")
            app.agent(channel, name=name)(self._agent(runtime))

        @app.on_partitions_revoked.connect
        async def _revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
            # Another worker may now own some customers: our cached view of them may go stale.
            self.customers.clear()

        return app

    def _agent(self, runtime: BatchRuntime):
        s = self.settings

        async def agent(stream: Any) -> None:
            await runtime.run(_messages(stream.take_events(s.batch_max, within=s.batch_within_s)))

        return agent

    def _owns_partition_zero(self) -> bool:
        """One worker of the group does the group-wide jobs (rescoring after a model change,
        scheduled retraining): the one that holds partition 0 of the events topic."""
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # not started, or between rebalances
            return False
        return any(tp.topic == topics.EVENTS and tp.partition == 0 for tp in assigned)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        (self.settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
        await self.producer.start()
        await self.app.start()
        await self.scorer.start()

    async def stop(self, timeout: float = 30.0, *, broker_gone: bool = False) -> None:
        """Stop scoring, then faust, then the producer. ``broker_gone``: nothing can be
        committed any more, so the agents are cancelled first: a faust app whose stop
        overruns (its consumer thread dies on a dead broker) then handles nothing more."""
        if broker_gone:
            self.app.agents.cancel()
        await self.scorer.stop()
        # Bounded: with the broker gone, faust's final commit could wait forever.
        await stop_within("the processors", self.app.stop(), timeout)
        # With the broker gone, what the producer buffers is not delivered later to a new one.
        stop = self.producer.abort() if broker_gone else self.producer.stop()
        await stop_within("the processors' producer", stop, min(10.0, timeout))

    # -- draining ----------------------------------------------------------------------

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        return self.progress.caught_up(ends)

    async def wait_caught_up(self, ends: dict[tuple[str, int], int], timeout: float) -> bool:
        return await self.progress.wait_caught_up(ends, timeout)
