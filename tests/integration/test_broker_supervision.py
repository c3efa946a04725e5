"""The embedded stack's stops that cannot end well, driven from outside: a broker that cannot
be restarted ends the stack with a non-zero status within 10 s, the data dir released; a drain
that cannot finish in its timeout says so, exits 1 and leaves the rest in the spool for the
next start (the fault suite in tests/faults covers a broker that can be restarted)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time

import aiohttp

from tests.conftest import StackProcess, wait_for


def test_a_broker_that_cannot_be_restarted_ends_the_stack_non_zero_within_10s_and_frees_the_data_dir(tmp_path):
    s = StackProcess(tmp_path / "stack").start()
    blocker = socket.socket()
    try:
        info = json.loads((s.workdir / "var" / "run" / "stack.json").read_text())
        assert info["broker_pid"]
        os.kill(info["broker_pid"], signal.SIGKILL)
        t0 = time.monotonic()
        # Take the broker's port the moment it is free, so the stack cannot restart it there.
        while True:
            try:
                blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                blocker.bind(("127.0.0.1", s.kafka_port))
                blocker.listen(1)
                break
            except OSError:
                assert time.monotonic() - t0 < 5, "the dead broker's port never came free"
                time.sleep(0.005)
        status = s.proc.wait(30)
        took = time.monotonic() - t0
        print(f"\nbroker killed, port taken: the stack exited with {status} after {took:.1f}s")
        assert status != 0 and took < 10
        assert not (s.workdir / "var" / "run" / "stack.json").exists()
        # The chDB lock is released: a one-shot command opens the data dir itself.
        assert s.sql("SELECT 1").strip() == "1"
    finally:
        blocker.close()
        s.kill()


def test_a_drain_that_cannot_finish_keeps_the_rest_in_the_spool_says_so_and_exits_1(tmp_path):
    workdir = tmp_path / "drain"
    # Processors storing 100 records per insert: the drain cannot be over in 0.5 s.
    env = {"GOALSTREAM_DRAIN_TIMEOUT_S": "0.5", "GOALSTREAM_BATCH_MAX": "100"}
    s = StackProcess(workdir, env=env).start()
    acked = 0

    async def burst() -> None:
        async with aiohttp.ClientSession(headers={"Authorization": "Token tk_live_123"}) as http:
            async def one(b: int) -> None:
                nonlocal acked
                body = json.dumps([{"customer_id": f"d{b}-{i}", "name": "undrained"} for i in range(500)])
                async with http.post(f"{s.url}/api/v1/event", data=body) as r:
                    if r.status == 200:
                        acked += 500

            await asyncio.gather(*(one(b) for b in range(60)))

    try:
        asyncio.run(burst())
        assert acked >= 20_000
        status = s.terminate(60)
    finally:
        s.kill()
    log = s.err_path.read_text()
    print(f"\n{acked} acknowledged; SIGTERM with a 0.5 s drain timeout -> exit {status}")
    assert status == 1
    assert "accepted records are not stored yet; they stay in the spool" in log
    again = StackProcess(workdir).start()  # the same data dir: the spool sends the rest
    try:
        wait_for(lambda: again.sql("SELECT uniqExact(customer_id) FROM events WHERE name = 'undrained'").strip() == str(acked), timeout=120, interval=1)
    finally:
        again.close()
