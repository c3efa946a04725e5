"""The Segment HTTP API dialect (skeleton: being built for issue 3)."""

from __future__ import annotations

from aiohttp import web

from .. import errors
from .base import Dialect, json_response


class Segment(Dialect):
    name = "segment"
    prefixes = ("/v1/",)

    def routes(self) -> list[web.RouteDef]:
        return []

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.Response:
        return json_response({"error": error.message}, status=error.status)
