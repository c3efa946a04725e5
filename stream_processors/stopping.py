"""Bounded stops for the processors' own parts (faust app, consumers, producers).

A part whose broker is gone can wait forever in its stop (faust's final commit, a
consumer leaving its group, a producer flushing): each is given a bound, and one that
overruns is logged and left behind so the stops after it still run.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable

log = logging.getLogger("goalstream.processors")


async def stop_within(what: str, stop: Awaitable[object], timeout_s: float) -> bool:
    """Await ``stop`` for at most ``timeout_s``; False (and an error logged) if it overran."""
    try:
        await asyncio.wait_for(stop, timeout_s)
        return True
    except asyncio.TimeoutError:
        log.error("%s did not stop within %.0fs (broker unreachable?); leaving it behind", what, timeout_s)
        return False
