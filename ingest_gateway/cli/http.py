"""The gateway's app served: plain HTTP on ``--port``, HTTPS on ``--tls-port`` as well when
a certificate is given (both for ``goalstream up`` and ``goalstream gateway``).

``start`` binds the sites and returns the URLs they bound (port 0 picks a free one, so the
URL is read back from the listening socket); ``stop`` drains: new requests get 503, the
ones in flight finish (up to ``SHUTDOWN_TIMEOUT_S``), then the app's cleanup flushes and
stops its record sink.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from aiohttp import web

from schemas.settings import GatewaySettings

from ..app import HEALTH, MAX_LINE, SERVICES

SHUTDOWN_TIMEOUT_S = 30.0  # requests in flight at stop get this long to finish
STOP_TIMEOUT_S = SHUTDOWN_TIMEOUT_S + 30.0  # and then the record sink its flush


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Http:
    def __init__(self, app: web.Application, settings: GatewaySettings):
        self.app = app
        self.settings = settings
        self.runner = web.AppRunner(
            app, access_log=None, max_line_size=MAX_LINE, auto_decompress=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        self._started = False

    async def _site(self, scheme: str, port: int, ssl_context: ssl.SSLContext | None = None) -> str:
        # ``runner.addresses`` (public) lists every site's bound sockets in start order:
        # the new site's are the ones past those already there.
        before = len(self.runner.addresses)
        await web.TCPSite(self.runner, self.settings.host, port, ssl_context=ssl_context).start()
        return f"{scheme}://{self.settings.host}:{self.runner.addresses[before][1]}"

    async def start(self) -> list[str]:
        s = self.settings
        await self.runner.setup()
        self._started = True
        urls = [await self._site("http", s.port)]
        if s.tls:
            urls.append(await self._site("https", s.tls_port, tls_context(s.tls_cert, s.tls_key)))
        return urls

    async def stop(self) -> None:
        """Idempotent: the stack drains the gateway first, and closes it again with the rest."""
        if not self._started:
            return
        self._started = False
        self.app[SERVICES].draining = True
        self.app[HEALTH].set("gateway", "draining")
        await self.runner.cleanup()
