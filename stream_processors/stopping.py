"""Bounded stops for the processors' own parts (faust app, consumers, producers): the
shared ``schemas.stopping.bounded`` (cancellation-safe, never hangs), logged as ours."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from schemas.stopping import bounded

log = logging.getLogger("goalstream.processors")


async def stop_within(what: str, stop: Callable[[], Awaitable[Any]] | Awaitable[Any], timeout_s: float) -> bool:
    """``stop`` for at most ``timeout_s``; False (and an error logged) if it failed or overran."""
    return await bounded(what, stop, timeout_s, logger=log)
