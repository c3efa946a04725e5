"""The Customer.io Track API dialect (skeleton: being built for issue 3)."""

from __future__ import annotations

from aiohttp import web

from .. import errors
from .base import Dialect, json_response


class CustomerIO(Dialect):
    name = "customerio"
    prefixes = ("/api/v1/customers", "/api/v1/events", "/api/v1/merge_customers", "/api/v2/")

    def routes(self) -> list[web.RouteDef]:
        return []

    def render_error(self, error: errors.GatewayError, request: web.Request) -> web.Response:
        return json_response({"error": error.message}, status=error.status)
