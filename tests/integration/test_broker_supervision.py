"""The embedded broker's supervision, driven from outside: a broker that cannot be restarted
ends the stack with a non-zero status within 10 s, the data dir released (the fault suite in
tests/faults covers a broker that can be restarted)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time

from tests.conftest import StackProcess


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
