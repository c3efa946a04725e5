"""The one process life (ingest_gateway/cli/lifecycle.py): stops in reverse order, each
bounded, run to its end through a cancellation, a failing one not skipping the rest, and
what a failed open opened closed again."""

from __future__ import annotations

import asyncio

import pytest

from ingest_gateway.cli.lifecycle import Process, Stops, serve


class Parts(Process):
    ready = "goalstream test ready"

    def __init__(self, log: list[str], fail_open: bool = False, fail_stop: str | None = None):
        super().__init__()
        self.log, self.fail_open, self.fail_stop = log, fail_open, fail_stop

    def _stop(self, name: str):
        async def stop() -> None:
            await asyncio.sleep(0)
            if name == self.fail_stop:
                raise RuntimeError(f"{name} broke")
            self.log.append(f"stop {name}")

        return stop

    async def open(self) -> list[str]:
        for name in ("broker", "warehouse", "gateway"):
            self.stops.push(name, self._stop(name))
            self.log.append(f"open {name}")
            if self.fail_open and name == "warehouse":
                raise RuntimeError("warehouse would not open")
        return ["http://127.0.0.1:1"]

    async def drain(self) -> None:
        self.log.append("drain")


async def _stopped() -> asyncio.Event:
    stop = asyncio.Event()
    stop.set()
    return stop


async def test_serve_opens_then_drains_then_closes_in_reverse(capsys):
    log: list[str] = []
    assert await serve(Parts(log), await _stopped()) == 0
    assert log == ["open broker", "open warehouse", "open gateway", "drain", "stop gateway", "stop warehouse", "stop broker"]
    assert capsys.readouterr().out == "goalstream test ready http://127.0.0.1:1\n"


async def test_a_failed_open_closes_what_it_opened_and_prints_no_ready_line(capsys):
    log: list[str] = []
    with pytest.raises(RuntimeError, match="would not open"):
        await serve(Parts(log, fail_open=True), await _stopped())
    assert log == ["open broker", "open warehouse", "stop warehouse", "stop broker"]
    assert capsys.readouterr().out == ""


async def test_a_failing_stop_does_not_skip_the_others_and_the_exit_says_so():
    log: list[str] = []
    assert await serve(Parts(log, fail_stop="warehouse"), await _stopped()) == 1
    assert log[-2:] == ["stop gateway", "stop broker"]


async def test_a_stop_that_overruns_is_left_behind_at_its_bound():
    stops, done = Stops(), []

    async def hangs() -> None:
        await asyncio.sleep(60)

    async def quick() -> None:
        done.append("quick")

    stops.push("quick", quick)
    stops.push("hangs", hangs, timeout_s=0.05)
    t0 = asyncio.get_running_loop().time()
    await stops.close()
    assert asyncio.get_running_loop().time() - t0 < 5
    assert done == ["quick"] and stops.failed == ["hangs"]


async def test_a_cancelled_close_still_runs_every_stop_then_raises_the_cancellation():
    stops, done = Stops(), []

    async def slow(name: str) -> None:
        await asyncio.sleep(0.1)
        done.append(name)

    stops.push("first", lambda: slow("first"))
    stops.push("second", lambda: slow("second"))
    closing = asyncio.ensure_future(stops.close())
    await asyncio.sleep(0.02)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert done == ["second", "first"] and not stops.failed
