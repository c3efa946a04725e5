"""One local connection between the stack process and one of its HTTP fronts: framed, multiplexed calls.

What flows: pickled tuples in length-prefixed frames (``[u32 length][pickle]``), both ways over
one unix socket (a socketpair the stack made; nothing else can open it). A ``call`` sends
``(CALL, id, method, args)`` and waits for ``(OK, id, value)`` or ``(ERR, id, exception)``;
many calls are in flight at once, matched by id. A ``push`` sends ``(PUSH, 0, topic, value)``
and waits for nothing (the stack's admission state, drain and stop orders, the front's
ready). Pickle is fine here: both ends are processes of one ``goalstream up`` run, started by
the stack from its own interpreter.

Exceptions cross as (class, args, attributes), rebuilt without calling ``__init__``: the
gateway's errors keep their ``retry_after`` and ``param``, ``WarehouseError`` its
``retriable``, so the front's dialects render them as the in-process gateway would. One that
cannot be pickled arrives as a ``RemoteError`` naming it. EOF (the other process is gone)
fails every call still waiting with ``ChannelClosed``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
from typing import Any, Awaitable, Callable

log = logging.getLogger("goalstream.ipc")

CALL, OK, ERR, PUSH = 0, 1, 2, 3
_HEADER = struct.Struct(">I")
# A frame beyond this is a broken peer, not a message: a request body is at most
# GOALSTREAM_MAX_BODY_BYTES, and its records' encoding is of the same order.
MAX_FRAME = 1 << 30
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_HIGH_WATER = 4 << 20  # bytes buffered for the socket before a writer waits for the other side

Handler = Callable[[str, tuple], Awaitable[Any]]
OnPush = Callable[[str, Any], None]


class ChannelClosed(ConnectionError):
    """The other end of the channel is gone (EOF, or closed here)."""


class RemoteError(Exception):
    """An exception raised on the other side that could not be sent as itself."""


def pack(msg: tuple) -> bytes:
    data = pickle.dumps(msg, _PROTOCOL)
    return _HEADER.pack(len(data)) + data


def _pack_exc(exc: BaseException) -> tuple:
    # Not the exception itself: pickle rebuilds one by calling cls(*args), which drops
    # keyword-only state (GatewayError's retry_after); its class, args and __dict__ do not.
    state = (type(exc), exc.args, dict(getattr(exc, "__dict__", {})))
    try:
        pickle.dumps(state, _PROTOCOL)
        return state
    except Exception:
        return (RemoteError, (f"{type(exc).__name__}: {exc}",), {})


def _unpack_exc(state: tuple) -> BaseException:
    cls, args, attrs = state
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(attrs)
    return exc


async def spawn(module: str, args: list[str], pass_fds: list[int]) -> tuple[asyncio.subprocess.Process, socket.socket]:
    """``python -m <module> --ipc FD <args>``, a child of the stack: FD is its end of a new
    socketpair, ``pass_fds`` it inherits too; returns the process and the stack's end."""
    parent, child = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, "--ipc", str(child.fileno()), *args,
            stdin=subprocess.DEVNULL, pass_fds=[child.fileno(), *pass_fds],
        )
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()  # the child's copy is its own now; ours would hide its EOF from us
    return proc, parent


async def started(proc: asyncio.subprocess.Process, reading: asyncio.Task, ready: asyncio.Event, timeout_s: float,
                  doing: str) -> str | None:
    """None once the child said ``ready``; else why not (it exited, closed its connection, or
    did not ``doing`` within ``timeout_s``)."""
    waits = [asyncio.create_task(ready.wait()), asyncio.create_task(proc.wait())]
    try:
        await asyncio.wait([*waits, reading], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    if ready.is_set():
        return None
    if proc.returncode is not None:
        return f"exited with status {proc.returncode}"
    return "closed its connection" if reading.done() else f"did not {doing} within {timeout_s:.0f}s"


def child_start(fd: int, who: str) -> tuple[socket.socket, Any] | int:
    """The start of a child of the stack: SIGINT and SIGTERM ignored (the stack orders its
    stop; a Ctrl-C to the process group must not cut it first), then the stack's first frame.
    Returns its connection and the ``init`` value, or the exit status: 1 if the stack died
    before it said anything, 2 for another frame."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sock = socket.socket(fileno=fd)
    try:
        _, _, topic, init = read_frame_blocking(sock)
    except ChannelClosed:
        return 1
    if topic != "init":
        print(f"goalstream {who}: expected the stack's init, got {topic!r}", file=sys.stderr)
        return 2
    sock.setblocking(False)
    return sock, init


def read_frame_blocking(sock: socket.socket) -> tuple:
    """One frame from a blocking socket (the front reads its start-up frame before its loop runs)."""

    def exactly(n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ChannelClosed("EOF before a whole frame")
            buf += chunk
        return bytes(buf)

    (n,) = _HEADER.unpack(exactly(_HEADER.size))
    if n > MAX_FRAME:
        raise ChannelClosed(f"a frame of {n} bytes")
    return pickle.loads(exactly(n))


class Channel:
    """Both ends use this: ``call`` and ``push`` out, ``handler`` (calls) and ``on_push`` in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 handler: Handler | None = None, on_push: OnPush | None = None, name: str = "channel"):
        self.reader, self.writer = reader, writer
        self.handler, self.on_push, self.name = handler, on_push, name
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._tasks: set[asyncio.Task] = set()  # calls being answered here
        self.closed = False
        # Frames written in one turn of the loop leave in one send: the spool's group commit
        # resolves many publishes at once, and their answers then cost one syscall (and one
        # wake-up of the other side), not one each.
        self._out: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def over(cls, sock: socket.socket, **kwargs: Any) -> "Channel":
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        return cls(reader, writer, **kwargs)

    @property
    def answering(self) -> int:
        """Calls of the other side this side is still answering."""
        return len(self._tasks)

    def _send(self, frame: bytes) -> None:
        if not self._out:
            self._loop.call_soon(self._flush)
        self._out.append(frame)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.writer.is_closing():
            self.writer.write(b"".join(out))

    async def _drain(self) -> None:
        # Only when the socket's buffer is full (the other side reads slowly): backpressure.
        if self.writer.transport.get_write_buffer_size() > _HIGH_WATER:
            self._flush()
            await self.writer.drain()

    async def call(self, method: str, *args: Any) -> Any:
        if self.closed:
            raise ChannelClosed(f"{self.name} is closed")
        rid = next(self._ids)
        fut = self._loop.create_future()
        self._waiting[rid] = fut
        try:
            try:
                self._send(pack((CALL, rid, method, args)))
                await self._drain()
            except (ConnectionError, RuntimeError) as exc:  # the transport, not the other side's answer
                raise ChannelClosed(f"{self.name}: {exc}") from None
            return await fut
        finally:
            self._waiting.pop(rid, None)

    def push(self, topic: str, value: Any = None) -> bool:
        """Send without waiting; False if the channel is closed."""
        if self.closed or self.writer.is_closing():
            return False
        self._send(pack((PUSH, 0, topic, value)))
        return True

    async def run(self) -> None:
        """Read frames until EOF; then every call still waiting fails with ChannelClosed."""
        reader = self.reader
        try:
            while True:
                try:
                    (n,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                    if n > MAX_FRAME:
                        log.error("%s: a frame of %d bytes; closing", self.name, n)
                        return
                    kind, rid, a, b = pickle.loads(await reader.readexactly(n))
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                if kind == CALL:
                    task = asyncio.create_task(self._answer(rid, a, b))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                elif kind == PUSH:
                    if self.on_push is not None:
                        try:
                            self.on_push(a, b)
                        except Exception:
                            log.exception("%s: handling %r failed", self.name, a)
                else:
                    fut = self._waiting.get(rid)
                    if fut is not None and not fut.done():
                        if kind == OK:
                            fut.set_result(a)
                        else:
                            fut.set_exception(_unpack_exc(a))
        finally:
            self._fail_waiting()

    async def _answer(self, rid: int, method: str, args: tuple) -> None:
        try:
            assert self.handler is not None, "this side answers no calls"
            reply = (OK, rid, await self.handler(method, args), None)
        except asyncio.CancelledError:
            reply = (ERR, rid, (ChannelClosed, ("the call was cancelled: the process is stopping",), {}), None)
        except Exception as exc:
            reply = (ERR, rid, _pack_exc(exc), None)
        if self.closed or self.writer.is_closing():
            return  # the caller is gone: it never saw an answer (nothing it sent was acknowledged)
        try:
            frame = pack(reply)
        except Exception as exc:  # a result that does not pickle: the caller gets the reason
            frame = pack((ERR, rid, (RemoteError, (f"the answer to {method} could not be sent: {exc}",), {}), None))
        try:
            self._send(frame)
            await self._drain()
        except (ConnectionError, RuntimeError):
            pass

    def _fail_waiting(self) -> None:
        self.closed = True
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(ChannelClosed(f"{self.name} closed"))

    async def close(self, answering_s: float = 0.0) -> None:
        """Close; calls being answered get ``answering_s`` to finish, then are cancelled."""
        if self._tasks and answering_s > 0:
            await asyncio.wait(list(self._tasks), timeout=answering_s)
        for task in list(self._tasks):
            task.cancel()
        self._fail_waiting()
        self._flush()  # what was written before the close still goes (a front's last answers, "stop")
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass
