"""Rate limits: token buckets per credential, per workspace, and on failed authentication
per client IP. All off by default; when off, ``create_app`` installs nothing (no
middleware, no wrapper), so the request path is exactly what it was.

Where requests flow through it:

- Every dialect (and the admin endpoints) authenticates through
  ``Services.credentials.match``/``match_pair``. ``LimitedCredentials`` wraps that one
  object: when a credential matches a workspace, the request takes a token from the
  bucket of that credential (field, workspace) and from the workspace's bucket, or is
  refused with ``errors.TooManyRequests`` (429, ``retry_after`` = seconds until a token),
  raised inside the handler so the dialect renders it in its vendor's shape. A request
  is charged once even when its dialect matches two credentials (Retainly's key and
  secret): the middleware gives each request a context the wrapper records it in.
- The middleware (inside the error middleware, so what it raises is rendered by the
  path's dialect) counts every 401/403 as a failed authentication of ``request.remote``;
  once an address has used its budget, its requests (``/healthz`` excepted) get 429
  before any credential is compared, until the bucket refills.

Memory is bounded: each table of buckets keeps at most ``max_keys`` entries and forgets
the least recently used (a forgotten bucket is a full one; an idle bucket refills to
full anyway, so what is forgotten first is what has mattered least).
"""

from __future__ import annotations

import contextvars
import math
import time
from collections import OrderedDict
from typing import Any, Callable, Iterable

from aiohttp import web

from schemas.settings import GatewaySettings

from . import errors

Clock = Callable[[], float]


class Buckets:
    """Token buckets by key: ``rate`` tokens per second up to ``burst``, LRU-bounded."""

    __slots__ = ("rate", "burst", "max_keys", "_clock", "_state")

    def __init__(self, rate: float, burst: float, *, max_keys: int = 100_000, clock: Clock = time.monotonic):
        if rate <= 0 or burst < 1:
            raise ValueError("a bucket needs a positive rate and a burst of at least 1")
        self.rate, self.burst, self.max_keys, self._clock = rate, float(burst), max_keys, clock
        self._state: OrderedDict[Any, list[float]] = OrderedDict()  # key -> [tokens, as of]

    def __len__(self) -> int:
        return len(self._state)

    def _refilled(self, key: Any, now: float) -> list[float] | None:
        state = self._state.get(key)
        if state is not None:
            state[0] = min(self.burst, state[0] + (now - state[1]) * self.rate)
            state[1] = now
        return state

    def wait(self, key: Any, now: float | None = None) -> float:
        """Seconds until ``key`` has a token (0: it has one now). Takes nothing."""
        state = self._refilled(key, self._clock() if now is None else now)
        if state is None or state[0] >= 1:
            return 0.0
        return (1 - state[0]) / self.rate

    def take(self, key: Any, now: float | None = None) -> None:
        """Spend one token of ``key`` (down to 0; a failure counter may hit an empty bucket)."""
        now = self._clock() if now is None else now
        state = self._refilled(key, now)
        if state is None:
            state = self._state[key] = [self.burst, now]
            if len(self._state) > self.max_keys:
                self._state.popitem(last=False)
        else:
            self._state.move_to_end(key)
        state[0] = max(0.0, state[0] - 1)


def retry_after(seconds: float) -> int:
    """Retry-After is whole seconds: round up, at least 1."""
    return max(1, math.ceil(seconds - 1e-9))


class _Request:
    """What the wrapper remembers of the request it is serving."""

    __slots__ = ("admitted",)

    def __init__(self) -> None:
        self.admitted: str | None = None


_REQUEST: contextvars.ContextVar[_Request | None] = contextvars.ContextVar("goalstream_ratelimit_request", default=None)


def _burst(rate: float, burst: int) -> float:
    return float(burst) if burst > 0 else float(max(1, math.ceil(rate)))


class RateLimiter:
    """The three limits; any may be None (off). Build with ``from_settings``."""

    def __init__(
        self,
        *,
        per_credential: tuple[float, float] | None = None,
        per_workspace: tuple[float, float] | None = None,
        auth_failures_per_minute: int = 0,
        max_keys: int = 100_000,
        clock: Clock = time.monotonic,
    ):
        def table(limit: tuple[float, float] | None) -> Buckets | None:
            return Buckets(limit[0], limit[1], max_keys=max_keys, clock=clock) if limit else None

        self._clock = clock
        self.per_credential = table(per_credential)
        self.per_workspace = table(per_workspace)
        n = auth_failures_per_minute
        self.auth_failures = table((n / 60.0, float(n)) if n > 0 else None)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> "RateLimiter | None":
        """None when every limit is off: then nothing is installed at all."""
        s = settings
        if not (s.rate_limit_per_credential or s.rate_limit_per_workspace or s.rate_limit_auth_failures):
            return None
        cred = (s.rate_limit_per_credential, _burst(s.rate_limit_per_credential, s.rate_limit_per_credential_burst))
        ws = (s.rate_limit_per_workspace, _burst(s.rate_limit_per_workspace, s.rate_limit_per_workspace_burst))
        return cls(
            per_credential=cred if s.rate_limit_per_credential > 0 else None,
            per_workspace=ws if s.rate_limit_per_workspace > 0 else None,
            auth_failures_per_minute=s.rate_limit_auth_failures,
            max_keys=s.rate_limit_max_keys,
        )

    # -- per credential and per workspace ------------------------------------------------

    def admit(self, field: str, workspace: str) -> None:
        """A request authenticated as ``workspace`` by its ``field`` credential: take a
        token from both buckets, or raise TooManyRequests (taking from neither)."""
        request = _REQUEST.get()
        if request is not None:
            if request.admitted == workspace:
                return  # this request was charged already (a second credential part)
            request.admitted = workspace
        cred, ws, now = self.per_credential, self.per_workspace, self._clock()
        wait_cred = cred.wait((field, workspace), now) if cred is not None else 0.0
        wait_ws = ws.wait(workspace, now) if ws is not None else 0.0
        if wait_cred or wait_ws:
            if request is not None:
                request.admitted = None
            which = "this workspace" if wait_ws >= wait_cred else "this credential"
            seconds = retry_after(max(wait_cred, wait_ws))
            raise errors.TooManyRequests(f"rate limit exceeded for {which}; retry after {seconds} s", retry_after=seconds)
        if cred is not None:
            cred.take((field, workspace), now)
        if ws is not None:
            ws.take(workspace, now)

    def credentials(self, inner: Any) -> Any:
        """``inner`` (a ``schemas.config.Credentials``) charged on every match, if there
        is a per-credential or per-workspace limit; else ``inner`` itself."""
        if self.per_credential is None and self.per_workspace is None:
            return inner
        return LimitedCredentials(inner, self)

    # -- failed authentication per client IP ---------------------------------------------

    def middleware(self) -> Any:
        failures = self.auth_failures

        @web.middleware
        async def rate_limit_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            remote = request.remote or ""
            if failures is not None and request.path != "/healthz":
                wait = failures.wait(remote)
                if wait:
                    seconds = retry_after(wait)
                    raise errors.TooManyRequests(
                        f"too many failed authentication attempts from this address; retry after {seconds} s",
                        retry_after=seconds,
                    )
            token = _REQUEST.set(_Request())
            try:
                response = await handler(request)
            except (errors.GatewayError, web.HTTPException) as exc:
                if failures is not None and exc.status in (401, 403):
                    failures.take(remote)
                raise
            finally:
                _REQUEST.reset(token)
            if failures is not None and response.status in (401, 403):
                failures.take(remote)
            return response

        return rate_limit_middleware


class LimitedCredentials:
    """A ``Credentials`` whose successful matches pass through ``RateLimiter.admit``."""

    def __init__(self, inner: Any, limiter: RateLimiter):
        self._inner, self._limiter = inner, limiter

    def match(self, field: str, presented: Any) -> str | None:
        workspace = self._inner.match(field, presented)
        if workspace is not None:
            self._limiter.admit(field, workspace)
        return workspace

    def match_pair(self, fields: tuple[str, str], presented: Iterable[Any]) -> str | None:
        workspace = self._inner.match_pair(fields, presented)
        if workspace is not None:
            self._limiter.admit(fields[0], workspace)
        return workspace

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def middlewares(limiter: RateLimiter | None) -> list[Any]:
    """What ``create_app`` appends after its error middleware: nothing when off."""
    return [] if limiter is None else [limiter.middleware()]
