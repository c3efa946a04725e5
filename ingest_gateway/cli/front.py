"""``python -m ingest_gateway.cli.front``: one HTTP front process of ``goalstream up``.

The stack process binds the listening sockets and starts this with their fds and one end of
a socketpair (``--ipc``). What flows: the stack's first frame (settings, config, the per-run
token, its admission state) -> the normal ``create_app`` with the same settings and config,
whose ports are ``ingest_gateway.remote`` stubs over that one connection -> the app served on
the inherited sockets (``web.SockSite``: HTTP, and HTTPS when a certificate is configured)
-> "ready" to the stack. Then requests are parsed, authenticated, validated and encoded
here, on this process's own core, and only the encoded records (and reads) cross to the stack.

It obeys the stack, not signals: SIGINT (a Ctrl-C reaches the whole process group) and
SIGTERM are ignored, the stack drains it ("drain": new writes get 503 + Retry-After) and
stops it ("stop": the sites close, requests in flight finish, up to ``SHUTDOWN_TIMEOUT_S``).
EOF on the connection means the stack is gone (killed): the front closes its sockets and
exits at once, so it never keeps the port of a stack that is no more.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from typing import Any

from aiohttp import web

from schemas import metrics
from schemas.regulations import Forgotten
from schemas.stopping import bounded

from .. import logsafe
from ..app import HEALTH, MAX_LINE, SERVICES, create_app
from ..ipc import Channel, child_start
from ..live import RemoteTap
from ..remote import RemoteAdmission, RemoteHealth, RemoteReader, RemoteRecommender, RemoteRegulations, RemoteSink, RemoteTrainer
from .http import SHUTDOWN_TIMEOUT_S, tls_context

log = logging.getLogger("goalstream.front")

ORPHAN_STOP_S = 3.0  # the stack is gone: nothing in flight can be acknowledged, close fast


async def serve(ipc: socket.socket, sites: list[tuple[socket.socket, bool]], init: dict[str, Any]) -> int:
    """Serve until the stack says stop (0) or is gone (1)."""
    settings, config = init["settings"], init["config"]
    metrics.join_directory(metrics.directory_of(settings.data_dir))  # the stack made it before starting us
    stop = asyncio.Event()
    admission = RemoteAdmission()
    admission.update(init.get("admission"))
    app: web.Application | None = None

    def drain() -> None:
        if app is not None:
            app[SERVICES].draining = True
            app[HEALTH].set("gateway", "draining")

    def on_push(topic: str, value: Any) -> None:
        if topic == "admission":
            admission.update(value)
        elif topic == "drain":
            drain()
        elif topic == "stop":
            stop.set()
        elif topic == "tap_armed":
            tap.update(value)

    channel = await Channel.over(ipc, on_push=on_push, name="the stack")
    reading = asyncio.create_task(channel.run(), name="goalstream-front-ipc")
    tap = RemoteTap(channel)  # the live page's entries go to the stack, which serves the feed
    reader = RemoteReader(channel)
    # Suppressed people, refused here; read from the stack (the stack checks nothing again:
    # its sinks drop what a front a refresh behind let through).
    forgotten = Forgotten()
    forgotten.start(reader)
    app = create_app(
        settings, config, warehouse=reader, health=RemoteHealth(channel), local_token=init["token"],
        producer=RemoteSink(channel), admission=admission, trainer=RemoteTrainer(channel), recommender=RemoteRecommender(channel),
        tap=tap, forgotten=forgotten, regulator=RemoteRegulations(channel),
    )
    runner = web.AppRunner(app, access_log=None, max_line_size=MAX_LINE, auto_decompress=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    for sock, tls in sites:
        ctx = tls_context(settings.tls_cert, settings.tls_key) if tls else None
        await web.SockSite(runner, sock, ssl_context=ctx).start()
    if init.get("draining"):
        drain()  # the app's start set "gateway: up"; a front started during a drain drains
    channel.push("ready", os.getpid())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([reading, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    await forgotten.stop()
    if stop.is_set():
        await runner.cleanup()  # the sites close; requests in flight finish (the stack still answers them)
        await channel.close()
        await asyncio.gather(reading, return_exceptions=True)
        return 0
    log.error("the stack process is gone (its connection closed); this HTTP front (pid %d) closes its port and exits", os.getpid())
    await bounded("the HTTP front", runner.cleanup, ORPHAN_STOP_S, logger=log)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="goalstream-front", description="an HTTP front of goalstream up (started by it)")
    ap.add_argument("--ipc", type=int, required=True, help="fd: this front's connection to the stack")
    ap.add_argument("--http", type=int, required=True, help="fd: the listening HTTP socket")
    ap.add_argument("--https", type=int, help="fd: the listening HTTPS socket")
    args = ap.parse_args(argv)
    got = child_start(args.ipc, "front")
    if isinstance(got, int):
        return got
    ipc, init = got
    sites = [(socket.socket(fileno=args.http), False)]
    if args.https is not None:
        sites.append((socket.socket(fileno=args.https), True))
    settings, config = init["settings"], init["config"]
    from .commands import _setup_logging

    _setup_logging(settings, config)
    logsafe.add_secrets(init["token"])  # the per-run token, as the stack redacts it
    loop_factory = None
    if settings.uvloop:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:  # an install without it: asyncio's own loop, a little slower
            log.debug("uvloop is not installed; the front runs on asyncio's loop")
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(serve(ipc, sites, init))


if __name__ == "__main__":
    sys.exit(main())
