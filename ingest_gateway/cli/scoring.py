"""The embedded stack's scoring stage in a process of its own (``cli/scorer.py``), as the
processors see it: ``Processors(scoring=ScoringProcess(warehouse))``.

What flows: the processors start it once their sinks run (the first frame is their settings,
so a new broker's consumer-group names, and the config) -> every ``PUSH_S`` the sinks' stored
offsets, the partitions they hold and their backlog go to it ("progress"), which is what its
stage waits on before scoring -> its ClickHouse reads and inserts are answered here, on a lane
of their own (chDB: one process per data dir) -> its "scored" pushes become ``scored`` and
``acked``, which the ledger and the drain wait on, as they would on the in-process stage.

Supervision: a scorer that exits is restarted (its consumer group resumes at its last commit,
and rescoring is harmless); while it is down, nothing is scored, so the spool is not released
past what was. The processors stop it first when they stop (as they stop the in-process
stage first); with the broker gone it is killed at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from schemas.warehouse import Warehouse
from stream_processors.runtime import Progress

from .. import errors
from ..ipc import PUSH, Channel, ChannelClosed, pack, spawn, started

log = logging.getLogger("goalstream.scoring")

START_TIMEOUT_S = 60.0  # interpreter start, imports, producer and consumer start
PUSH_S = 0.02  # how often the sinks' progress goes to the scorer (its stage scores on it)
STOP_S = 20.0
RESTART_DELAY_S = (0.5, 10.0)


class ScorerFailed(Exception):
    """The scoring process did not start."""


class ScoringProcess:
    def __init__(self, warehouse: Warehouse, restarted: Any = None):
        self.warehouse = warehouse
        self.restarted = restarted  # after a restart (the stack rewrites its run file)
        self.lane: Warehouse | None = None
        self.processors: Any = None
        self.scored = Progress()
        self.acked: dict[tuple[str, int], int] = {}
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: Channel | None = None
        self._reading: asyncio.Task | None = None
        self._ready = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.stopping = False
        self.restarts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    # -- start -------------------------------------------------------------------------------

    async def start(self, processors: Any) -> None:
        self.processors = processors
        # Its reads and three inserts per round on a lane of their own, as in-process.
        self.lane = await self.warehouse.lane()
        await self._spawn()
        self._tasks = [asyncio.create_task(self._keep(), name="goalstream-scorer-keeper"),
                       asyncio.create_task(self._push_progress(), name="goalstream-scorer-progress")]
        log.info("the scoring stage runs in its own process (pid %s)", self.pid)

    async def _spawn(self) -> None:
        proc, parent = await spawn("ingest_gateway.cli.scorer", [], [])
        self._ready = asyncio.Event()
        channel = await Channel.over(parent, handler=self._answer, on_push=self._on_push, name=f"the scorer (pid {proc.pid})")
        self.proc, self.channel = proc, channel
        self._reading = asyncio.create_task(channel.run(), name="goalstream-scorer-ipc")
        channel.writer.write(pack((PUSH, 0, "init", {"settings": self.processors.settings, "config": self.processors.config})))
        why = await started(proc, self._reading, self._ready, START_TIMEOUT_S, "start")
        if why is not None:
            await self._reap()
            raise ScorerFailed(f"the scoring process (pid {proc.pid}) {why}")
        self._push_now()

    def _on_push(self, topic: str, value: Any) -> None:
        if topic == "ready":
            self._ready.set()
        elif topic == "scored":
            offsets, acked = value
            # Acks first: the ledger snapshots what was published once a mark is scored.
            for tp, off in acked.items():
                if off > self.acked.get(tp, -1):
                    self.acked[tp] = off
            for tp, off in offsets.items():
                if off > self.scored.offsets.get(tp, -1):
                    self.scored.offsets[tp] = off

    async def _answer(self, method: str, args: tuple) -> Any:
        lane = self.lane
        assert lane is not None
        if method == "rows":
            return await lane.rows(*args)
        if method == "insert":
            table, rows, columns, token, column_oriented = args
            return await lane.insert(table, rows, columns, token, column_oriented=column_oriented)
        if method == "command":
            return await lane.command(*args)
        raise ValueError(f"the scorer asked for {method!r}, which the stack does not answer")

    # -- running -----------------------------------------------------------------------------

    def _state(self) -> tuple:
        """What the sinks have stored, the partitions they hold, their backlog."""
        p = self.processors
        return (dict(p.progress.offsets), p.owned_partitions(), p._backlog())

    def _push_now(self, state: tuple | None = None) -> tuple | None:
        """The sinks' state (``_state``) to the scorer; returns it, or None if there is no scorer to tell."""
        if self.channel is None:
            return None
        state = self._state() if state is None else state
        self.channel.push("progress", state)
        return state

    async def _push_progress(self) -> None:
        last = None
        while True:
            await asyncio.sleep(PUSH_S)
            state = self._state()
            if state != last:
                last = self._push_now(state)

    async def _keep(self) -> None:
        delay = RESTART_DELAY_S[0]
        while not self.stopping:
            assert self.proc is not None and self._reading is not None
            exited = asyncio.create_task(self.proc.wait())
            try:
                await asyncio.wait([exited, self._reading], return_when=asyncio.FIRST_COMPLETED)
            finally:
                exited.cancel()
            if self.stopping:
                return
            log.error("the scoring process (pid %d) exited (%s); restarting it (scoring resumes at its last commit)",
                      self.proc.pid, f"status {self.proc.returncode}" if self.proc.returncode is not None else "its connection closed")
            await self._reap()
            self.restarts += 1
            while not self.stopping:
                try:
                    await self._spawn()
                    log.warning("the scoring process restarted (pid %s)", self.pid)
                    delay = RESTART_DELAY_S[0]
                    if self.restarted is not None:
                        self.restarted()
                    break
                except ScorerFailed as exc:
                    log.error("restarting the scoring process failed: %s; trying again in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RESTART_DELAY_S[1])

    async def train(self, goal: str | None, workspace: str | None) -> list[dict[str, Any]]:
        """Trained where the stage runs, so it rescores; while it restarts, 503 + Retry-After."""
        try:
            if self.channel is None:
                raise ChannelClosed("not running")
            return await self.channel.call("train", goal, workspace)
        except ChannelClosed:
            raise errors.Unavailable("the scoring process is restarting; retry shortly", retry_after=5) from None

    # -- stop --------------------------------------------------------------------------------

    async def _reap(self) -> None:
        proc, channel, reading = self.proc, self.channel, self._reading
        self.channel = None
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()
        if channel is not None:
            await channel.close(1.0)
        if reading is not None:
            await asyncio.gather(reading, return_exceptions=True)

    async def stop(self, timeout: float = STOP_S, *, broker_gone: bool = False) -> None:
        """Told to stop (it stops its stage and flushes its producer) and waited for, up to
        ``timeout``; then killed. With the broker gone, killed at once: nothing of it may
        reach the next broker."""
        self.stopping = True
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if self.proc is not None and self.proc.returncode is None and self.channel is not None and not broker_gone:
                self._push_now()  # the last of the sinks' progress: what it still has to score
                self.channel.push("stop")
                try:
                    await asyncio.wait_for(self.proc.wait(), min(timeout, STOP_S))
                except asyncio.TimeoutError:
                    log.error("the scoring process (pid %d) did not stop within %.0fs; killed", self.proc.pid, min(timeout, STOP_S))
            if self._reading is not None:
                await asyncio.wait([self._reading], timeout=1.0)  # its last "scored" push
        finally:
            await self._reap()
            if self.lane is not None:
                lane, self.lane = self.lane, None
                await lane.close()
