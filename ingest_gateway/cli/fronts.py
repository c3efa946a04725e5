"""The stack's HTTP fronts (``--gateway-processes N``): N processes that serve the gateway, so
the HTTP work runs on cores of its own and the stack's loop keeps the processors.

What flows: the stack binds the listening sockets here (a busy port fails at once, and the
ready line's URL is the bound one) and starts each front (``cli/front.py``) with their fds and
one end of a socketpair; the first frame on it is the front's settings, config, per-run token
and the current admission state. From then on the front sends calls (publish encoded
records, ClickHouse reads, the admin lane, recommend, train, health), answered by the
stack's ``handler``; the stack pushes admission state, "drain" and "stop".

Supervision: a front that exits (or whose connection closes) is restarted, and said so in
the log; the requests it had in flight were never answered, so nothing of them was
acknowledged (what it had asked the stack to spool is stored, at least once). The sockets
stay open in the stack meanwhile, so connections queue in the kernel for the other fronts,
or for the restarted one. Stop: "stop" to each front (its sites close, its requests in flight
finish), bounded; a front that overruns is killed; then the stack's own sockets close.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field
from typing import Any, Callable

from schemas.config import GoalstreamConfig
from schemas.settings import StackSettings

from ..ipc import PUSH, Channel, Handler, pack, spawn, started
from .http import SHUTDOWN_TIMEOUT_S

log = logging.getLogger("goalstream.fronts")

START_TIMEOUT_S = 30.0  # a front's interpreter start, imports and sites (about 1 s here)
STOP_S = SHUTDOWN_TIMEOUT_S + 5.0  # a front's own stop: its requests in flight get SHUTDOWN_TIMEOUT_S
STOP_TIMEOUT_S = STOP_S + 5.0  # the whole stop, for the stack's bound
RESTART_DELAY_S = (0.2, 5.0)  # first and longest wait between restarts of a front that keeps failing
BACKLOG = 1024  # the listening sockets' accept queue: connections wait there while a front restarts


class FrontFailed(Exception):
    """A front did not start serving."""


@dataclass
class _Front:
    slot: int
    proc: asyncio.subprocess.Process
    channel: Channel
    reading: asyncio.Task
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid


def _bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port), as aiohttp's TCPSite would bind it; a port
    that is taken fails here, before any front starts, with the address in the message."""
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"error while attempting to bind on address {addr!r}: {exc.strerror.lower()}") from None
    except BaseException:
        sock.close()
        raise
    return sock


class Fronts:
    def __init__(self, settings: StackSettings, config: GoalstreamConfig, token: str, *,
                 handler: Handler, admission: Callable[[], tuple[str, int | None] | None],
                 restarted: Callable[[], None] | None = None):
        self.settings, self.config, self.token = settings, config, token
        self.handler = handler
        self.admission = admission  # the stack's current admission state, for a front's start
        self.restarted = restarted  # after a front was restarted (the stack rewrites its run file)
        self.count = settings.gateway_processes
        self.http: socket.socket | None = None
        self.https: socket.socket | None = None
        self.slots: list[_Front | None] = [None] * self.count
        self._keepers: list[asyncio.Task] = []
        self._reaping: set[asyncio.Task] = set()  # dead fronts' connections, closing
        self.draining = False
        self.stopping = False
        self.restarts = 0
        self.on_tap: Callable[[Any], None] | None = None  # a front's live-page entry (live.RemoteTap)

    # -- what the stack asks -----------------------------------------------------------------

    @property
    def pids(self) -> list[int]:
        return [f.pid for f in self.slots if f is not None and f.proc.returncode is None]

    @property
    def serving(self) -> int:
        return sum(1 for f in self.slots if f is not None and f.ready.is_set() and f.proc.returncode is None)

    @property
    def answering(self) -> int:
        """The fronts' calls the stack is answering right now (publishes among them)."""
        return sum(f.channel.answering for f in self.slots if f is not None)

    def push(self, topic: str, value: Any = None) -> None:
        for f in self.slots:
            if f is not None:
                f.channel.push(topic, value)

    def drain(self) -> None:
        """New writes get 503 + Retry-After at every front (and at any front started from now)."""
        self.draining = True
        self.push("drain")

    def stats(self) -> dict[str, int]:
        return {"processes": self.count, "serving": self.serving, "restarts": self.restarts}

    # -- start -------------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Bind, start every front, wait until each serves; the URLs bound."""
        s = self.settings
        self.http = _bind(s.host, s.port)
        urls = [f"http://{s.host}:{self.http.getsockname()[1]}"]
        if s.tls:
            self.https = _bind(s.host, s.tls_port)
            urls.append(f"https://{s.host}:{self.https.getsockname()[1]}")
        started = await asyncio.gather(*(self._spawn(i) for i in range(self.count)), return_exceptions=True)
        failed = [r for r in started if isinstance(r, BaseException)]
        for r in started:
            if isinstance(r, _Front):
                self.slots[r.slot] = r
        if failed:
            raise FrontFailed(f"{len(failed)} of {self.count} HTTP fronts did not start: {failed[0]}")
        self._keepers = [asyncio.create_task(self._keep(i), name=f"goalstream-front-{i}") for i in range(self.count)]
        log.info("%d HTTP front processes serving (pids %s)", self.count, ", ".join(map(str, self.pids)))
        return urls

    async def _spawn(self, slot: int) -> _Front:
        assert self.http is not None
        listening = [self.http] + ([self.https] if self.https is not None else [])
        args = ["--http", str(self.http.fileno())] + (["--https", str(self.https.fileno())] if self.https is not None else [])
        proc, parent = await spawn("ingest_gateway.cli.front", args, [s.fileno() for s in listening])
        front: _Front | None = None
        try:
            channel = await Channel.over(parent, handler=self.handler, name=f"HTTP front {slot} (pid {proc.pid})")
            reading = asyncio.create_task(channel.run(), name=f"goalstream-front-{slot}-ipc")
            front = _Front(slot, proc, channel, reading)
            channel.on_push = lambda topic, value, f=front: self._on_push(f, topic, value)
            init = {"settings": self.settings, "config": self.config, "token": self.token,
                    "admission": self.admission(), "draining": self.draining}
            channel.writer.write(pack((PUSH, 0, "init", init)))
            why = await started(proc, reading, front.ready, START_TIMEOUT_S, "serve")
            if why is not None:
                raise FrontFailed(f"HTTP front {slot} (pid {proc.pid}) {why}")
            if self.draining:
                channel.push("drain")  # a drain began while it started
            return front
        except BaseException:
            await self._reap(proc, front)
            raise

    def _on_push(self, front: _Front, topic: str, value: Any) -> None:
        if topic == "ready":
            front.ready.set()
            log.debug("HTTP front %d serving (pid %s)", front.slot, value)
        elif topic == "tap" and self.on_tap is not None:
            self.on_tap(value)

    async def _reap(self, proc: asyncio.subprocess.Process, front: _Front | None, answering_s: float = 0.0) -> None:
        """The process killed if it still runs, and waited for; its connection closed once
        the calls the stack is still answering for it ended (up to ``answering_s``)."""
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await proc.wait()
        if front is not None:
            await front.channel.close(answering_s)
            await asyncio.gather(front.reading, return_exceptions=True)

    # -- supervision -------------------------------------------------------------------------

    async def _keep(self, slot: int) -> None:
        """Restart the front of ``slot`` whenever it exits (or its connection closes)."""
        delay = RESTART_DELAY_S[0]
        while not self.stopping:
            front = self.slots[slot]
            if front is not None:
                exited = asyncio.create_task(front.proc.wait())
                try:
                    await asyncio.wait([exited, front.reading], return_when=asyncio.FIRST_COMPLETED)
                    if not exited.done():  # the connection closed first: the exit status follows at once
                        await asyncio.wait([exited], timeout=1.0)
                finally:
                    exited.cancel()
                if self.stopping:
                    return
                status = front.proc.returncode
                # Its calls in flight still finish here (what they spool is stored, at least
                # once), in the background: their answers go nowhere, the restart need not wait.
                reap = asyncio.create_task(self._reap(front.proc, front, answering_s=STOP_S))
                self._reaping.add(reap)
                reap.add_done_callback(self._reaping.discard)
                self.slots[slot] = None
                self.restarts += 1
                log.error("HTTP front %d (pid %d) exited (%s); restarting it (the requests it had in flight were not acknowledged)",
                          slot, front.pid, f"status {status}" if status is not None else "its connection closed")
            try:
                self.slots[slot] = await self._spawn(slot)
                log.warning("HTTP front %d restarted (pid %d)", slot, self.slots[slot].pid)
                delay = RESTART_DELAY_S[0]
                if self.restarted is not None:
                    self.restarted()
            except FrontFailed as exc:
                log.error("restarting HTTP front %d failed: %s; trying again in %.1fs", slot, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_DELAY_S[1])

    # -- stop ----------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Every front told to stop and waited for (``STOP_S``, then killed); then the sockets
        close. Idempotent; a cancellation meanwhile still kills what runs and closes them."""
        self.stopping = True
        try:
            keepers, self._keepers = self._keepers, []
            for k in keepers:
                k.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            fronts = [f for f in self.slots if f is not None]
            self.push("stop")

            async def one(front: _Front) -> None:
                try:
                    await asyncio.wait_for(front.proc.wait(), STOP_S)
                except asyncio.TimeoutError:
                    log.error("HTTP front %d (pid %d) did not stop within %.0fs; killed", front.slot, front.pid, STOP_S)
                await self._reap(front.proc, front, answering_s=1.0)

            await asyncio.gather(*(one(f) for f in fronts), *self._reaping)
        finally:
            for f in self.slots:
                if f is not None and f.proc.returncode is None:
                    try:
                        f.proc.kill()
                    except ProcessLookupError:
                        pass
            self.slots = [None] * self.count
            for sock in (self.http, self.https):
                if sock is not None:
                    sock.close()
            self.http = self.https = None
