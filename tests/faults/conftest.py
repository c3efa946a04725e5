"""The fault suite's ground: ``goalstream up`` in its own process group, killed from outside.

Each scenario starts its own stack (``FaultStack``: ``StackProcess`` in a process group
of its own, so a supervisor's group kill reaches the whole tree but never pytest) and
records one ``Row`` in ``REPORT``: acknowledged, stored, lost, duplicated, bad statuses and
what the fault itself measured. The terminal summary prints them as one table, which is
what the issue's closing note quotes. Every test is bounded (pytest-timeout), every stack
is killed at the end whatever happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import GOALSTREAM, StackProcess, wait_for
from tests.faults.checks import REPORT


def _children(pid: int) -> list[tuple[int, str]]:
    """(pid, command name) of the live children of ``pid``, read from /proc."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text()
        except OSError:
            continue
        name = fields[fields.index("(") + 1 : fields.rindex(")")]
        state, ppid = fields[fields.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid and state != "Z":
            out.append((int(entry.name), name))
    return out


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def _name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, is not)."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def started(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the pid, its identity, so a
    pid the kernel gave to another process since is never signalled."""
    fields = _stat(pid)
    return fields[19] if fields is not None else None


class FaultStack(StackProcess):
    """``goalstream up`` as a process supervisor runs it: the leader of its own process group."""

    # Not pytest's process group (a group kill would take pytest with it): one it leads.
    popen_options = {"process_group": 0}

    def start(self, timeout: float = 90.0) -> "FaultStack":
        self.brokers_seen: dict[int, str | None] = {}  # every broker pid read -> its start time, for the final kill
        self.started_at = time.monotonic()
        super().start(timeout)
        self.ready_at = time.monotonic()
        self.broker_pid()
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def run_file(self) -> Path:
        return self.workdir / "var" / "run" / "stack.json"

    def run_info(self) -> dict:
        try:
            return json.loads(self.run_file.read_text())
        except (OSError, ValueError):
            return {}

    def broker_pid(self) -> tuple[int | None, str]:
        """The tansu child's pid and where it was read: the run file's ``broker_pid``, else
        the child named tansu in /proc (a run file without the key)."""
        info = self.run_info()
        if isinstance(info.get("broker_pid"), int) and _name(info["broker_pid"]) == "tansu" and alive(info["broker_pid"]):
            pid, source = info["broker_pid"], "stack.json"
        else:
            tansu = [p for p, name in _children(self.pid) if name == "tansu"]
            pid, source = (tansu[0], "/proc") if tansu else (None, "none")
        if pid is not None:
            self.brokers_seen.setdefault(pid, started(pid))
        return pid, source

    def live_brokers(self) -> list[int]:
        """The brokers seen that still run as the same process."""
        return [p for p, t in self.brokers_seen.items() if t is not None and started(p) == t and alive(p)]

    def sql(self, query: str, fmt: str = "TSV", timeout: float = 60.0) -> str:
        """``goalstream sql`` in the work dir (through the running stack, or on the data
        dir itself once it stopped), bounded tighter than StackProcess.sql."""
        out = subprocess.run(
            [str(GOALSTREAM), "sql", query, "--format", fmt], cwd=self.workdir, capture_output=True, text=True, timeout=timeout,
        )
        if out.returncode != 0:
            raise RuntimeError(f"goalstream sql failed: {out.stderr[-2000:]}")
        return out.stdout

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def power_cut(self) -> None:
        """SIGKILL to the whole process group and to the broker (which has a session of its
        own): nothing of the stack runs a line of code after this."""
        self.broker_pid()
        brokers = self.live_brokers()
        # SIGSTOP everything first: between two SIGKILLs the survivor could still act (the
        # stack notice its broker gone, or the broker get its parent-death SIGTERM).
        # The group only while its leader is not reaped (we alone reap it): until then its id
        # cannot name another process group.
        group = self.proc.poll() is None
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            if group:
                os.killpg(self.pid, sig)
            for pid in brokers:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        self.proc.wait(10)
        wait_for(lambda: not self.live_brokers(), timeout=10, interval=0.05)

    def kill(self) -> None:
        if self.proc is not None and (self.proc.poll() is None or self.live_brokers()):
            self.power_cut()


@pytest.fixture
def stacks(tmp_path):
    """Start stacks with ``stacks(workdir=None, **kwargs)``; each is killed at the end."""
    started: list[FaultStack] = []

    def start(workdir: Path | None = None, **kwargs) -> FaultStack:
        s = FaultStack(workdir or tmp_path / "stack", **kwargs)
        started.append(s)
        return s.start()

    yield start
    for s in started:
        s.kill()


def pytest_terminal_summary(terminalreporter):
    if REPORT.rows:
        terminalreporter.section("fault scenarios")
        for line in REPORT.summary():
            terminalreporter.write_line(line)
