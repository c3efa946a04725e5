"""The one retry loop: an operation, tried again with bounded, jittered backoff.

Flow: ``retry(op)`` awaits ``op()``; on an exception it asks ``retriable`` (by default
``errors.retriable``: the error's class and its ``retriable`` flag) whether another try
can help, then the caller's ``give_up`` (for example "ClickHouse answers pings and still
refuses this batch"), then sleeps ``Backoff.delay`` and tries again. A non-retriable
error, or one the caller gives up on, is raised unchanged for the caller to handle
(isolate, dead-letter, log). Cancellation is never caught: every wait is a plain
``asyncio.sleep``, so a stopping service leaves the loop at once.

Used by the batch runtime (store a batch, store one record, publish a dead letter), the
scorer (rescoring after a stored batch) and the webhook dispatcher (joining Kafka,
storing a batch of deliveries).
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from . import errors

log = logging.getLogger("goalstream.retry")
T = TypeVar("T")


def jittered(delay: float, jitter: float, rng: random.Random | None = None) -> float:
    """``delay`` spread by +-``jitter`` (a fraction), so many waiters do not retry at once."""
    return delay * (rng or random).uniform(1 - jitter, 1 + jitter)


@dataclass(frozen=True)
class Backoff:
    """Delay before try ``n + 1`` after ``n`` failures: ``first * factor**(n-1)``, jittered,
    never above ``cap``. ``attempts``: give up after that many failures (None: never)."""

    first: float = 0.4
    factor: float = 2.0
    cap: float = 10.0
    jitter: float = 0.2
    attempts: int | None = None

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        base = self.first * self.factor ** max(0, failures - 1)
        return min(self.cap, jittered(min(self.cap, base), self.jitter, rng))


# ClickHouse or Kafka briefly away: 0.4 s doubling to 10 s, as long as it takes.
STANDARD = Backoff()
# A loop that must not fall behind by more than about a second (dispatcher, dead letters).
EVERY_SECOND = Backoff(first=1.0, factor=1.0, cap=1.0)


def always(exc: BaseException) -> bool:
    """For loops that may never skip work: every error is retried (unknown ones logged
    with their traceback)."""
    return True


async def retry(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    backoff: Backoff = STANDARD,
    retriable: Callable[[BaseException], bool] = errors.retriable,
    give_up: Callable[[int, BaseException], Awaitable[bool]] | None = None,
    before_retry: Callable[[], Awaitable[None]] | None = None,
    level: int = logging.WARNING,
    logger: logging.Logger = log,
    rng: random.Random | None = None,
) -> T:
    """``op()``'s result, after as many tries as ``retriable``, ``give_up`` and
    ``backoff.attempts`` allow; otherwise the last error is raised.

    ``give_up(failures, exc)`` is asked after each retriable failure; ``before_retry``
    runs before each wait (for example: rewind a consumer to its committed offsets)."""
    failures = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            if not retriable(exc):
                raise
            failures += 1
            if give_up is not None and await give_up(failures, exc):
                raise
            if backoff.attempts is not None and failures >= backoff.attempts:
                raise
            delay = backoff.delay(failures, rng)
            # A known error is an outage, said in one line; anything else is a bug worth its traceback.
            logger.log(level, "%s failed (%s); retry %d in %.1fs", what, exc, failures, delay, exc_info=not errors.known(exc))
            if before_retry is not None:
                await before_retry()
            await asyncio.sleep(delay)
