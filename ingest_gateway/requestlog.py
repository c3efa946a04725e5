"""Request ids and the access log: what each request leaves in the logs.

Every request gets an id: the client's ``X-Request-Id`` when it is a plain token (1-128
characters of ``A-Z a-z 0-9 . _ : -``; anything else could forge log lines or carry a
secret, so it is replaced), else a new one. It is set in a context variable for the
request's task, so every record logged while the request runs carries it
(``ContextFilter`` stamps it on the record: ``request_id`` in JSON, appended in text),
and returned in the response's ``X-Request-Id`` (set at ``on_response_prepare``, so
errors rendered in any dialect's shape carry it too).

When the request is done, one line goes to the ``goalstream.access`` logger: method,
route (the route's template, ``/v1/users/{tail}``, or the path when nothing matched;
never the query string, where trigger.ly sends ``api_token``), status, duration,
dialect, workspace when authenticated, request id, and for a 4xx/5xx the error message
the client got (``note_error``, called by the app's error middleware). Headers and
bodies are never logged; the handlers' redactor (logsafe) covers the rest.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any, Callable

from aiohttp import web

access_log = logging.getLogger("goalstream.access")
HEADER = "X-Request-Id"
MAX_PATH = 200  # of an unrouted path on the access line
_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("goalstream_request_id", default=None)
# Typed request keys where aiohttp has them (3.12+), plain strings before.
_KEY: Any = getattr(web, "RequestKey", None)
_ID: Any = _KEY("goalstream_request_id", str) if _KEY else "goalstream_request_id"
_ERROR: Any = _KEY("goalstream_error", str) if _KEY else "goalstream_error"
# The workspace the request authenticated as, noted by ``NotingCredentials`` (a dict per
# request, so a keep-alive connection's next request starts empty).
_noted: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("goalstream_request_notes", default=None)


def accept_id(sent: str | None) -> str:
    """The client's id when it is a plain bounded token, else a fresh one."""
    if sent and _VALID.fullmatch(sent):
        return sent
    return uuid.uuid4().hex


def note_error(request: web.Request, message: str) -> None:
    """The error message the client was sent, for the access line."""
    request[_ERROR] = message


class NotingCredentials:
    """A ``Credentials`` (schemas.config) whose successful matches name the request's
    workspace for the access line, and for each ``listen``er (the live page's tap: a
    refused body of an authenticated sender shows in that workspace's feed); everything
    else passes through."""

    def __init__(self, inner: Any):
        self._inner = inner
        self._listeners: list[Callable[[str, str | None], None]] = []

    def listen(self, listener: Callable[[str, str | None], None]) -> None:
        """``listener(field, workspace)`` after every match (workspace None: no match)."""
        self._listeners.append(listener)

    def _note(self, field: str, workspace: str | None) -> str | None:
        notes = _noted.get()
        if workspace is not None and notes is not None:
            notes["workspace"] = workspace
        for listener in self._listeners:
            listener(field, workspace)
        return workspace

    def match(self, field: str, presented: Any) -> str | None:
        return self._note(field, self._inner.match(field, presented))

    def match_pair(self, fields: tuple[str, str], presented: Any) -> str | None:
        return self._note(fields[0], self._inner.match_pair(fields, presented))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class ContextFilter(logging.Filter):
    """Puts the current request's id on every record logged inside it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            rid = request_id.get()
            if rid is not None:
                record.request_id = rid
        return True


def _route(request: web.Request) -> str:
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)  # None for aiohttp's own 404/405
    if resource is not None:
        return resource.canonical
    # No route matched: the path as sent (still percent-encoded, so a %0A cannot start a
    # forged log line), bounded, never the query string.
    path = request.rel_url.raw_path
    return path if len(path) <= MAX_PATH else path[:MAX_PATH] + "..."


def middleware(dialect_of: Callable[[str], str], which: str = "all"):
    """The outermost middleware: id in, access line out. ``dialect_of(path)`` names the
    dialect that owns a path (the one that renders its errors); ``which`` is
    ``settings.access_log``: "all" requests, only "errors" (4xx/5xx), or "off"."""
    least = {"all": 0, "errors": 400}.get(which, 1000)

    @web.middleware
    async def request_log(request: web.Request, handler) -> web.StreamResponse:
        rid = accept_id(request.headers.get(HEADER))
        request[_ID] = rid
        token = request_id.set(rid)
        notes: dict[str, str] = {}
        notes_token = _noted.set(notes)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:  # redirects and the like, passed through by the error middleware
            status = exc.status
            exc.headers[HEADER] = rid
            raise
        finally:
            level = logging.WARNING if status >= 500 else logging.INFO
            if status >= least and access_log.isEnabledFor(level):
                _log_access(request, status, level, started, dialect_of, notes, rid)
            request_id.reset(token)
            _noted.reset(notes_token)

    return request_log


def _log_access(request: web.Request, status: int, level: int, started: float, dialect_of: Callable[[str], str],
                notes: dict[str, str], rid: str) -> None:
    """The access line, its fields as extras (JSON prints them as keys)."""
    fields: dict[str, Any] = {
        "method": request.method,
        "route": _route(request),
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2),
        "dialect": dialect_of(request.path),
        "request_id": rid,
    }
    if (ws := notes.get("workspace")) is not None:
        fields["workspace"] = ws
    reason = request.get(_ERROR) if status >= 400 else None
    if reason is not None:
        fields["reason"] = reason
    text = "%(method)s %(route)s %(status)d %(duration_ms).1fms dialect=%(dialect)s" + (
        " workspace=%(workspace)s" if "workspace" in fields else ""
    ) + (" reason=%(reason)r" if reason is not None else "")
    access_log.log(level, text, fields, extra=fields)


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    rid = request.get(_ID)
    if rid is not None:
        response.headers[HEADER] = rid


def install(app: web.Application) -> None:
    app.on_response_prepare.append(on_prepare)
