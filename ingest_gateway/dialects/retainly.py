"""The Retainly dialect (skeleton: being built for issue 3)."""

from __future__ import annotations

from aiohttp import web

from .. import errors
from .base import Dialect, json_response


class Retainly(Dialect):
    name = "retainly"
    prefixes = ("/customers", "/arrays", "/events")

    def routes(self) -> list[web.RouteDef]:
        return []

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.Response:
        return json_response({"error": error.message}, status=error.status)
