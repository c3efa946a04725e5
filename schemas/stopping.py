"""One bounded, cancellation-safe way to stop a part: every stop in goalstream goes through it.

A part whose broker is gone can wait forever in its stop (faust's final commit, a consumer
leaving its group, a producer flushing), or end by raising ``CancelledError`` out of its own
internals (aiokafka's ``consumer.stop()`` does, once its coordinator's tasks are cancelled
under it). ``bounded`` runs the stop as its own task and waits for it up to a bound:

- a stop that overruns is cancelled, logged and left behind (the stops after it still run);
- a ``CancelledError`` raised *by the stop itself* is a failed stop, not a cancellation of
  the caller (``asyncio.wait_for`` would pass it on, and the rest of a stack's stop would
  never run: the chDB lock stayed held for minutes that way);
- a cancellation *of the caller* while the stop runs does not abandon it half-way: it is
  waited for up to the same bound, and the cancellation is raised after.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger("goalstream.stopping")


async def bounded(what: str, stop: Callable[[], Awaitable[Any]] | Awaitable[Any], timeout_s: float, logger: logging.Logger = log) -> bool:
    """Run ``stop`` (a coroutine function or an awaitable) for at most ``timeout_s``;
    True if it ended cleanly, False (and an error logged) if it raised or overran."""
    ok, cancelled = await outcome(what, stop, timeout_s, logger)
    if cancelled:
        raise asyncio.CancelledError
    return ok


async def outcome(what: str, stop: Callable[[], Awaitable[Any]] | Awaitable[Any], timeout_s: float, logger: logging.Logger = log) -> tuple[bool, bool]:
    """``bounded`` without raising: (ended cleanly, the caller was cancelled meanwhile)."""
    task = asyncio.ensure_future(stop() if callable(stop) else stop)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    cancelled = False
    while not task.done():
        remaining = deadline - loop.time()
        if remaining <= 0:
            logger.error("stopping %s took over %.0fs; left behind", what, timeout_s)
            task.cancel()
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # nothing left to report it to
            break
        try:
            await asyncio.wait([task], timeout=remaining)
        except asyncio.CancelledError:
            cancelled = True
    ok = False
    if task.done():
        if task.cancelled():
            logger.error("stopping %s failed: it was cancelled from inside", what)
        elif (exc := task.exception()) is not None:
            logger.error("stopping %s failed: %s: %s", what, type(exc).__name__, exc, exc_info=exc)
        else:
            ok = True
    return ok, cancelled
