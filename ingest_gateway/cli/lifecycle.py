"""The one life of every long-running command: open -> ready -> wait -> drain -> close.

``goalstream up``, ``gateway``, ``worker`` and ``dispatcher`` are each a ``Process``:
``open`` starts its parts in order and registers each part's stop with ``stops`` as it
goes; ``serve`` prints the ready line (the first line scripts and tests wait for), waits
for SIGINT/SIGTERM (or for the process to give up), lets it ``drain`` (stop taking work,
finish and store what was taken) and ``close`` it: the stops in reverse order. If ``open``
fails part-way, what was opened is closed the same way before the error goes on.

Every stop is bounded and cancellation-safe (``Stops.run``): it runs to its end or to its
bound, a cancellation meanwhile waits for it and is raised after, and a stop that fails
or overruns is logged and does not keep the stops after it from running.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import AsyncExitStack
from typing import Any, Awaitable, Callable

from schemas.stopping import outcome

log = logging.getLogger("goalstream.lifecycle")

STOP_TIMEOUT_S = 30.0  # one part's stop, unless its own bound is given


def stop_event() -> asyncio.Event:
    """Set on the first SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_until(done: Callable[[], bool], timeout_s: float, poll_s: float = 0.05) -> bool:
    """Poll ``done`` until it is true (True) or ``timeout_s`` passed (False)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not done():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(poll_s)
    return True


class Stops:
    """What a process opened, as the stops that undo it: ``push`` as each part opens,
    ``close`` runs them last-pushed first."""

    def __init__(self) -> None:
        self._stack = AsyncExitStack()
        self.failed: list[str] = []  # the stops that raised or overran

    def push(self, what: str, stop: Callable[[], Awaitable[Any]], timeout_s: float = STOP_TIMEOUT_S) -> None:
        self._stack.push_async_callback(self.run, what, stop, timeout_s)

    async def run(self, what: str, stop: Callable[[], Awaitable[Any]], timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Run one stop to its end or for ``timeout_s``; True if it ended cleanly
        (``schemas.stopping.bounded``: a cancellation meanwhile waits for it and is raised
        after; a CancelledError out of the stop itself is its failure, not ours)."""
        ok, cancelled = await outcome(what, stop, timeout_s, logger=log)
        if not ok:
            self.failed.append(what)
        if cancelled:
            raise asyncio.CancelledError
        return ok

    async def close(self) -> None:
        await self._stack.aclose()


class Interrupted(Exception):
    """The stop signal came while ``open`` was still waiting (e.g. for the broker)."""


class Process:
    """One long-running command. Subclasses implement ``open`` (return the URLs the ready
    line names), and ``drain`` and ``wait`` where they differ from "nothing to finish" and
    "until the stop signal". ``stopping`` is the stop signal, set already during ``open``
    (which may raise ``Interrupted`` on it: then the process closes and exits 0)."""

    ready = "goalstream ready"  # the ready line's words before the URLs

    def __init__(self) -> None:
        self.stops = Stops()
        self.stopping = asyncio.Event()

    async def open(self) -> list[str]:
        raise NotImplementedError

    async def wait(self, stop: asyncio.Event) -> None:
        await stop.wait()

    async def drain(self) -> None:
        """Stop taking work and store what was taken; each step through ``stops.run``."""

    async def close(self) -> None:
        await self.stops.close()


async def serve(process: Process, stop: asyncio.Event | None = None) -> int:
    """Run ``process`` through its life; 0 when every stop ended cleanly, else 1."""
    stop = stop if stop is not None else stop_event()
    process.stopping = stop
    try:
        urls = await process.open()
    except Interrupted:
        log.info("stopping before the start finished")
        await process.close()
        log.info("stopped")
        return 0
    except BaseException:
        await process.close()
        raise
    print(" ".join([process.ready, *urls]), flush=True)
    try:
        await process.wait(stop)
    finally:
        log.info("stopping: draining")
        try:
            await process.drain()
        finally:
            await process.close()
        log.info("stopped")
    if process.stops.failed:
        log.error("stopped, but not cleanly: %s", ", ".join(process.stops.failed))
        return 1
    return 0
