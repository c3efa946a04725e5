"""The one retry helper and the one table of what is retriable (stream_processors.retry, .errors)."""

import asyncio
import random

import pytest

from schemas.kafka import KafkaUnavailable, RecordTooLarge
from schemas.warehouse import WarehouseBusy, WarehouseError
from stream_processors import errors
from stream_processors.retry import STANDARD, Backoff, always, jittered, retry

FAST = Backoff(first=0.001, factor=1.0, cap=0.001, jitter=0.0)


def failing(*excs, result="ok"):
    """An operation that raises each of ``excs`` in turn, then returns ``result``."""
    calls = []

    async def op():
        calls.append(len(calls))
        if len(calls) <= len(excs):
            raise excs[len(calls) - 1]
        return result

    return op, calls


def test_retriable_is_decided_by_class_and_flag():
    assert errors.retriable(WarehouseError("down"))
    assert errors.retriable(WarehouseBusy("busy"))
    assert not errors.retriable(WarehouseError("bad DDL", retriable=False))
    assert errors.retriable(KafkaUnavailable("no ack"))
    assert not errors.retriable(RecordTooLarge("huge"))
    assert not errors.retriable(errors.BadRecord("garbage"))
    assert errors.retriable(errors.ProcessorError("later", retriable=True))
    # A bug is neither retried nor one of ours.
    assert not errors.retriable(ValueError("bug")) and not errors.known(ValueError("bug"))
    assert errors.known(RecordTooLarge("huge"))


async def test_a_retriable_error_is_retried_until_it_works():
    op, calls = failing(WarehouseError("down"), KafkaUnavailable("no ack"), result=42)
    assert await retry(op, what="t", backoff=FAST) == 42
    assert len(calls) == 3


async def test_a_non_retriable_error_or_a_bug_is_raised_at_once():
    for exc in (WarehouseError("refused", retriable=False), RecordTooLarge("huge"), ValueError("bug")):
        op, calls = failing(exc)
        with pytest.raises(type(exc)):
            await retry(op, what="t", backoff=FAST)
        assert len(calls) == 1


async def test_always_retries_even_a_bug_and_before_retry_runs_before_each_wait():
    rewinds = []

    async def rewind():
        rewinds.append(1)

    op, calls = failing(ValueError("bug"), WarehouseError("down"))
    assert await retry(op, what="t", backoff=FAST, retriable=always, before_retry=rewind) == "ok"
    assert len(calls) == 3 and len(rewinds) == 2


async def test_give_up_and_attempts_bound_the_loop():
    seen = []

    async def give_up(failures, exc):
        seen.append(failures)
        return failures >= 2

    op, calls = failing(*[WarehouseError("x")] * 9)
    with pytest.raises(WarehouseError):
        await retry(op, what="t", backoff=FAST, give_up=give_up)
    assert len(calls) == 2 and seen == [1, 2]

    op, calls = failing(*[WarehouseError("x")] * 9)
    with pytest.raises(WarehouseError):
        await retry(op, what="t", backoff=Backoff(first=0.001, cap=0.001, jitter=0, attempts=3))
    assert len(calls) == 3


async def test_a_waiting_retry_is_cancelled_at_once():
    op, _ = failing(*[WarehouseError("down")] * 99)
    task = asyncio.create_task(retry(op, what="t", backoff=Backoff(first=60, cap=60, jitter=0)))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)


def test_backoff_doubles_from_its_first_delay_jittered_and_never_above_the_cap():
    exact = Backoff(jitter=0.0)
    assert [exact.delay(n) for n in range(1, 8)] == [0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
    rng = random.Random(3)
    for n in range(1, 12):
        d = STANDARD.delay(n, rng)
        base = min(10.0, 0.4 * 2 ** (n - 1))
        assert 0.8 * base <= d <= min(10.0, 1.2 * base)
    assert all(4.0 <= jittered(5.0, 0.2, rng) <= 6.0 for _ in range(100))
