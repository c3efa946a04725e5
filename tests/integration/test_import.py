"""`goalstream import` into a running `goalstream up`: a Segment JSONL and a Customer.io
CSV are stored, a re-run (even with --restart) stores nothing new, and an import stopped
with Ctrl-C resumes where its checkpoint is and ends with every line stored once."""

from __future__ import annotations

import signal
import subprocess
import time

import orjson

from tests.conftest import GOALSTREAM, wait_for


def _import(stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(GOALSTREAM), "import", "--workspace", "acme", *args], cwd=stack.workdir,
                          capture_output=True, text=True, timeout=timeout)


def _count(stack, where: str, table: str = "events") -> int:
    return int(stack.sql(f"SELECT count() FROM {table} WHERE workspace = 'acme' AND {where}").strip())


def _settled(stack, where: str, expected: int, table: str = "events") -> int:
    wait_for(lambda: _count(stack, where, table) >= expected, timeout=60)
    time.sleep(2)  # anything beyond the expected would show up now
    return _count(stack, where, table)


def test_segment_and_customerio_import_rerun_and_resume(stack):
    seg = stack.workdir / "history.jsonl"
    lines = [{"type": "track", "userId": f"imp{i}", "event": "Imported", "timestamp": "2023-05-01T00:00:00Z"} for i in range(50)]
    for m in lines[::2]:
        m["messageId"] = f"imp-msg-{m['userId']}"
    seg.write_bytes(b"\n".join(orjson.dumps(m) for m in lines) + b"\n" + b'{"type":"track","userId":"x"}\n')
    cio = stack.workdir / "people.csv"
    cio.write_text("id,email,created_at,cio_id,plan\n" + "".join(f"cio{i},cio{i}@x.io,1700000000,c{i},pro\n" for i in range(20)))

    r = _import(stack, str(seg), str(cio))
    assert r.returncode == 1, r.stderr  # one refused line
    assert "event_not_defined" in r.stderr and "(lines 51)" in r.stderr
    assert _settled(stack, "name = 'Imported'", 50) == 50
    assert _settled(stack, "startsWith(customer_id, 'cio')", 20, "customers_current") == 20

    r = _import(stack, str(seg), str(cio), "--restart")
    assert r.returncode == 1, r.stderr
    time.sleep(5)
    assert _count(stack, "name = 'Imported'") == 50  # same ids: the sink stored nothing twice

    big = stack.workdir / "big.jsonl"
    big.write_bytes(b"".join(orjson.dumps({"type": "track", "userId": f"r{i}", "event": "Resumed"}) + b"\n" for i in range(3000)))
    checkpoints = stack.workdir / "var" / "import"
    before = len(list(checkpoints.glob("*.json")))
    p = subprocess.Popen([str(GOALSTREAM), "import", "--workspace", "acme", "--batch", "1", str(big)], cwd=stack.workdir,
                         stderr=subprocess.PIPE, text=True)
    # Ctrl-C once the first batches are acknowledged (a checkpoint exists), not during start-up.
    wait_for(lambda: len(list(checkpoints.glob("*.json"))) > before, timeout=60, interval=0.05)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=60)[1]
    assert p.returncode == 130, err
    assert "resume" in err
    r = _import(stack, str(big))
    assert r.returncode == 0, r.stderr
    assert "resuming at line" in r.stderr
    assert _settled(stack, "name = 'Resumed'", 3000) == 3000
