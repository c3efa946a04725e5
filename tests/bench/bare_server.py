"""The benchmark's baseline: a bare aiohttp app with one POST handler and nothing else.

It reads the body, parses it as JSON with orjson (as the gateway does) and answers a
small JSON 200, on plain asyncio with no access log, like the gateway. Usage:
``python bare_server.py PORT``; prints ``bare ready http://127.0.0.1:PORT`` when
listening and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson
from aiohttp import web

OK = orjson.dumps({"ok": True})


async def accept(request: web.Request) -> web.Response:
    orjson.loads(await request.read())
    return web.Response(body=OK, content_type="application/json")


async def main(port: int) -> None:
    app = web.Application()
    app.router.add_post("/api/v1/event", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare ready http://127.0.0.1:{port}", flush=True)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
