"""``python -m ingest_gateway.cli.scorer``: the scoring stage of ``goalstream up`` in a process of its own.

Why: scoring 5,000 distinct customers a second is most of a core of Python (goal states,
likelihoods, two records encoded per customer); on the stack's loop it took the sinks' and
the relay's time (POST -> row visible at 5k events/s went from ~0.2 s without goals to
~0.9 s with them). Here it has its own interpreter and core.

What flows: the stack's first frame (the processors' settings and the config) -> the scoring
stage (``stream_processors.scoring.stage``) with its own consumer (``<group>.scoring``) and
producer, as in-process -> its ClickHouse reads and inserts are calls to the stack (chDB
allows one process per data dir; ``RemoteWarehouse``) -> after each cycle, "scored" (its
scored offsets and its producer's acknowledged offsets) to the stack, whose ledger and drains
wait on them. The stack pushes "progress" (what its sinks have stored, which partitions they
hold, their backlog), answered nothing; "stop" ends it; "train" is a call.

It obeys the stack, not signals (SIGINT and SIGTERM ignored). EOF on the connection means the
stack is gone: it exits at once; its consumer group resumes from its last commit next time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from typing import Any, Sequence

from schemas.regulations import Forgotten
from schemas import topics
from schemas.registry import Registry
from schemas.kafka import RecordProducer
from schemas.stopping import bounded
from stream_processors.app import scoring_stage
from stream_processors.runtime import Progress
from stream_processors.scoring.processor import Scorer

from ..ipc import Channel, child_start
from ..remote import RemoteReader

log = logging.getLogger("goalstream.scorer")

STOP_PART_S = 10.0


class RemoteWarehouse(RemoteReader):
    """The ``Warehouse`` calls the scorer makes (the fronts' reads, and its inserts), asked of
    the stack, which owns chDB."""

    embedded = True

    async def insert(self, table: str, rows: Sequence[Sequence[Any]], columns: Sequence[str], dedup_token: str | None = None,
                     *, column_oriented: bool = False) -> None:
        if rows:
            await self._call("insert", table, list(rows), tuple(columns), dedup_token, column_oriented)

    async def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return await self._call("command", sql, parameters)

    async def lane(self) -> "RemoteWarehouse":
        return self

    async def close(self) -> None:
        pass


class Stored:
    """The stack's sinks as the stage needs them, from its "progress" pushes."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.held: frozenset[tuple[str, int]] = frozenset()
        self.pending = 0

    def update(self, value: tuple[dict[tuple[str, int], int], list[tuple[str, int]], int]) -> None:
        offsets, held, pending = value
        for tp, off in offsets.items():
            if off > self.progress.offsets.get(tp, -1):
                self.progress.offsets[tp] = off
        self.held, self.pending = frozenset(held), pending

    def owned(self, topic: str, partition: int) -> bool:
        return (topic, partition) in self.held

    def backlog(self) -> int:
        return self.pending


async def run(ipc: socket.socket, init: dict[str, Any]) -> int:
    """Score until the stack says stop (0) or is gone (1)."""
    settings, config = init["settings"], init["config"]
    stop = asyncio.Event()
    stored = Stored()
    scorer: Scorer | None = None

    def on_push(topic: str, value: Any) -> None:
        if topic == "progress":
            stored.update(value)
        elif topic == "stop":
            stop.set()

    async def handler(method: str, args: tuple) -> Any:
        if method == "train" and scorer is not None:
            goal, workspace = args
            return await scorer.train(goal, workspace=workspace)
        raise ValueError(f"the stack asked the scorer for {method!r}, which it does not answer")

    channel = await Channel.over(ipc, handler=handler, on_push=on_push, name="the stack")
    reading = asyncio.create_task(channel.run(), name="goalstream-scorer-ipc")
    warehouse = RemoteWarehouse(channel)
    producer = RecordProducer(settings.kafka_bootstrap, idempotence=False, registry=Registry.from_settings(settings))
    stage = None

    def leads() -> bool:
        # Group-wide jobs (rescoring after a model change, scheduled retraining): the member
        # of the scoring group that holds partition 0 of the events topic.
        return stage is not None and any(tp.topic == topics.EVENTS and tp.partition == 0 for tp in stage.source.assignment())

    # The regulations, read through the stack like everything else: nobody forgotten is scored.
    forgotten = Forgotten()
    forgotten.start(warehouse)
    scorer = Scorer(settings, config, warehouse, producer, is_leader=leads, forgotten=forgotten)  # type: ignore[arg-type]
    stage = scoring_stage(settings, scorer, stored=stored.progress, owned=stored.owned, backlog=stored.backlog)

    def report() -> None:
        channel.push("scored", (dict(stage.scored.offsets), dict(producer.acked)))

    stage.on_scored = report
    await producer.start()
    await scorer.start()
    # Ready before the stage's consumer is in its group: a join waits for the rebalance (and,
    # after a crash, for the dead member's session to time out); records wait on the topics.
    starting = asyncio.create_task(stage.start(), name="goalstream-scorer-stage-start")
    channel.push("ready", os.getpid())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    orphan = not stop.is_set()
    if orphan:
        log.error("the stack process is gone (its connection closed); the scorer (pid %d) exits", os.getpid())
    await bounded("the scorer", scorer.stop, STOP_PART_S, logger=log)
    await bounded("the regulations' refresh", forgotten.stop, STOP_PART_S, logger=log)
    await bounded("the scoring stage's start", asyncio.gather(starting, return_exceptions=True), STOP_PART_S, logger=log)
    await bounded("the scoring stage", stage.stop, STOP_PART_S, logger=log)
    await bounded("the scorer's producer", producer.abort if orphan else producer.stop, STOP_PART_S, logger=log)
    if not orphan:
        report()
        await channel.close()
    await asyncio.gather(reading, return_exceptions=True)
    return 1 if orphan else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="goalstream-scorer", description="the scoring stage of goalstream up (started by it)")
    ap.add_argument("--ipc", type=int, required=True, help="fd: this process's connection to the stack")
    args = ap.parse_args(argv)
    got = child_start(args.ipc, "scorer")
    if isinstance(got, int):
        return got
    ipc, init = got
    from .commands import _setup_logging

    _setup_logging(init["settings"], init["config"])
    with asyncio.Runner() as runner:
        return runner.run(run(ipc, init))


if __name__ == "__main__":
    sys.exit(main())
