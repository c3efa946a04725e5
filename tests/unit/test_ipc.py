"""The stack <-> front channel (ingest_gateway/ipc.py) and the front's ports over it (remote.py),
on a socketpair in one process: answers, errors as their own classes, pushes, EOF."""

from __future__ import annotations

import asyncio
import functools
import pickle
import socket

import pytest

from ingest_gateway import app, errors, sqlguard
from ingest_gateway.ipc import Channel, ChannelClosed, RemoteError
from ingest_gateway.remote import RemoteAdmission, RemoteHealth, RemoteReader, RemoteSink
from schemas import model
from schemas.kafka import KafkaUnavailable, RecordTooLarge
from schemas.warehouse import WarehouseBusy


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("no")
        self.gen = (i for i in ())  # a generator does not pickle


async def pair(handler):
    a, b = socket.socketpair()
    pushes: list = []
    stack = await Channel.over(a, handler=handler, name="stack side")
    front = await Channel.over(b, on_push=lambda t, v: pushes.append((t, v)), name="front side")
    tasks = [asyncio.create_task(stack.run()), asyncio.create_task(front.run())]
    return stack, front, pushes, tasks


async def test_calls_answers_and_errors_keep_their_class_and_state():
    async def handler(method, args):
        if method == "echo":
            await asyncio.sleep(0.01 * args[0])
            return args
        if method == "refuse":
            raise errors.Unavailable("the broker is restarting", retry_after=2, param="x")
        if method == "busy":
            raise WarehouseBusy("every admin query slot is busy")
        if method == "odd":
            raise Unpicklable()
        raise ValueError(method)

    stack, front, pushes, tasks = await pair(handler)
    # Many calls in flight at once, answered out of order, each to its caller.
    got = await asyncio.gather(*(front.call("echo", n, b"x" * n) for n in (5, 1, 3)))
    assert got == [(5, b"xxxxx"), (1, b"x"), (3, b"xxx")]
    with pytest.raises(errors.Unavailable) as exc:
        await front.call("refuse")
    assert (exc.value.message, exc.value.retry_after, exc.value.param, exc.value.status) == ("the broker is restarting", 2, "x", 503)
    with pytest.raises(WarehouseBusy) as busy:
        await front.call("busy")
    assert busy.value.retriable is True
    with pytest.raises(RemoteError, match="Unpicklable"):
        await front.call("odd")
    assert stack.push("admission", ("full", 2))
    await asyncio.sleep(0.05)
    assert pushes == [("admission", ("full", 2))]
    # EOF: a call still waiting fails as ChannelClosed, and so does every later one.
    waiting = asyncio.create_task(front.call("echo", 100))
    await asyncio.sleep(0.05)
    await stack.close()
    with pytest.raises(ChannelClosed):
        await waiting
    with pytest.raises(ChannelClosed):
        await front.call("echo", 1)
    await front.close()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_remote_ports_map_the_stack_going_away():
    calls: list = []

    async def handler(method, args):
        calls.append((method, args))
        if method == "health":
            return {"broker": "embedded", "gateway": "up"}, {"backlog": {"records": 3}}
        return None

    stack, front, _, tasks = await pair(handler)
    sink = RemoteSink(front)
    huge = model.dead_letter(reason="x", stage="test", key=None, value=b"x" * (9 * 1024 * 1024), headers={})
    with pytest.raises(RecordTooLarge):  # refused here, before anything is sent
        await sink.publish([huge])
    assert calls == []
    health = RemoteHealth(front)
    health.set("gateway", "draining")  # the front's own state is over the stack's
    await health.probe()
    assert health.report() == {"status": "degraded", "components": {"broker": "embedded", "gateway": "draining"}, "backlog": {"records": 3}}
    await stack.close()
    await asyncio.sleep(0.05)
    reader = RemoteReader(front)
    assert not reader.is_open and await reader.ping() is False
    with pytest.raises(KafkaUnavailable):
        await sink.publish([])
    await health.probe()
    assert health.report()["components"]["stack"] == "down"
    await front.close()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_admission_copy():
    admission = RemoteAdmission()
    assert admission() is None
    admission.update(("the backlog is full", 2))
    refusal = admission()
    assert isinstance(refusal, errors.Unavailable) and refusal.retry_after == 2 and refusal is not admission()


def test_the_admin_lane_call_is_picklable():
    job = functools.partial(app.admin_job, "SELECT 1", "TSV", sqlguard.OPERATOR, sqlguard.Limits.from_settings(_settings()))
    back = pickle.loads(pickle.dumps(job))
    assert back.func is app.admin_job and back.args[2].operator


def _settings():
    from schemas.settings import GatewaySettings

    return GatewaySettings()
