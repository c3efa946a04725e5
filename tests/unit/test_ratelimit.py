"""Token buckets, the limiter's accounting, and the app with limits off and on (in process,
with a producer that keeps records in memory)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway import errors, ratelimit, requestlog
from ingest_gateway.app import SERVICES, create_app
from schemas.config import Credentials, parse_config
from schemas.settings import GatewaySettings
from tests.conftest import globex_config
from tests.memory import MemoryProducer

CONFIG = parse_config(globex_config())


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_bucket_math():
    clock = Clock()
    b = ratelimit.Buckets(2.0, 3, clock=clock)
    assert b.wait("k") == 0
    for _ in range(3):
        assert b.wait("k") == 0
        b.take("k")
    assert b.wait("k") == pytest.approx(0.5)
    clock.t += 0.25
    assert b.wait("k") == pytest.approx(0.25)
    clock.t += 0.25
    assert b.wait("k") == 0
    b.take("k")
    clock.t += 100  # refills to the burst, never beyond
    for _ in range(3):
        b.take("k")
    assert b.wait("k") == pytest.approx(0.5)
    assert b.wait("other") == 0  # an unknown key has a full bucket and costs no memory
    assert len(b) == 1


def test_retry_after_is_whole_seconds_rounded_up():
    assert ratelimit.retry_after(0.01) == 1
    assert ratelimit.retry_after(1.0) == 1
    assert ratelimit.retry_after(1.2) == 2
    assert ratelimit.retry_after(59.5) == 60


def test_memory_is_bounded():
    b = ratelimit.Buckets(1.0, 1, max_keys=100)
    for i in range(10_000):
        b.take(f"10.0.{i // 256}.{i % 256}")
    assert len(b) == 100
    # The most recent keys are the ones kept.
    assert b.wait("10.0.39.15") > 0 and b.wait("10.0.0.0") == 0


def test_off_by_default_installs_nothing():
    settings = GatewaySettings()
    assert ratelimit.RateLimiter.from_settings(settings) is None
    assert ratelimit.middlewares(None) == []
    app = create_app(settings, CONFIG, producer=MemoryProducer(), warehouse=NoWarehouse())
    credentials = app[SERVICES].credentials
    # Only wrappers that note the workspace (the access log's, the live tap's) around the plain Credentials.
    while hasattr(credentials, "_inner"):
        credentials = credentials._inner
    assert type(credentials) is Credentials
    assert not any(m.__name__ == "rate_limit_middleware" for m in app.middlewares)


def test_bursts_default_to_one_second():
    limiter = ratelimit.RateLimiter.from_settings(GatewaySettings(rate_limit_per_workspace=0.5, rate_limit_per_credential=7))
    assert limiter.per_workspace.burst == 1 and limiter.per_credential.burst == 7
    assert limiter.auth_failures is None
    limiter = ratelimit.RateLimiter.from_settings(GatewaySettings(rate_limit_auth_failures=10))
    assert limiter.per_workspace is None and limiter.auth_failures.rate == pytest.approx(10 / 60)
    assert limiter.credentials(Credentials(CONFIG)).__class__ is Credentials  # no per-request cost


def test_credential_and_workspace_buckets():
    clock = Clock()
    limiter = ratelimit.RateLimiter(per_credential=(1.0, 2), per_workspace=(1.0, 3), clock=clock)
    creds = limiter.credentials(Credentials(CONFIG))
    assert creds.match("traitly_token", "tk_live_123") == "acme"
    assert creds.match("traitly_token", "tk_live_123") == "acme"
    with pytest.raises(errors.TooManyRequests) as exc:
        creds.match("traitly_token", "tk_live_123")  # the credential's burst of 2 is spent
    assert exc.value.retry_after == 1 and "credential" in exc.value.message
    assert creds.match("segment_write_key", "wk_1") == "acme"  # another credential, same workspace
    with pytest.raises(errors.TooManyRequests) as exc:
        creds.match("segment_write_key", "wk_1")  # the workspace's 3 are spent
    assert "workspace" in exc.value.message
    assert creds.match("segment_write_key", "wk_globex") == "globex"  # other workspaces are not affected
    assert creds.match("segment_write_key", "nope") is None  # a failed match costs nothing here
    assert creds.match_pair(("customerio_site_id", "customerio_api_key"), ("site_globex", "cio_globex")) == "globex"
    clock.t += 1.0
    assert creds.match("traitly_token", "tk_live_123") == "acme"


def test_a_request_is_charged_once_for_two_credential_parts():
    limiter = ratelimit.RateLimiter(per_workspace=(1.0, 1), clock=Clock())
    creds = limiter.credentials(Credentials(CONFIG))
    token = ratelimit._REQUEST.set(ratelimit._Request())
    try:  # Retainly matches its secret, then its key: one request
        assert creds.match("retainly_secret", "your_api_secret") == "acme"
        assert creds.match("retainly_key", "your_api_key") == "acme"
    finally:
        ratelimit._REQUEST.reset(token)
    with pytest.raises(errors.TooManyRequests):
        creds.match("retainly_secret", "your_api_secret")


# -- through the app -----------------------------------------------------------------------


class NoWarehouse:
    is_open = False


async def _client(**limits) -> tuple[TestClient, MemoryProducer]:
    producer = MemoryProducer()
    app = create_app(GatewaySettings(**limits), CONFIG, producer=producer, warehouse=NoWarehouse())
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, producer


EVENT = {"customer_id": "1", "name": "Logged in"}


async def test_traitly_burst_gets_429_with_retry_after():
    client, producer = await _client(rate_limit_per_workspace=0.5, rate_limit_per_workspace_burst=2)
    try:
        statuses = []
        for _ in range(4):
            r = await client.post("/api/v1/event", json=EVENT, headers={"Authorization": "Token tk_live_123"})
            statuses.append(r.status)
            last = (r, await r.json())
        assert statuses == [200, 200, 429, 429]
        r, body = last
        assert r.headers["Retry-After"] == "2"
        assert body["error"]["type"] == "api_error" and "rate limit" in body["error"]["message"]
        assert len(producer.after({})) == 2
    finally:
        await client.close()


async def test_failed_authentication_locks_the_address_out():
    client, _ = await _client(rate_limit_auth_failures=3)
    try:
        for _ in range(3):
            r = await client.post("/api/v1/event", json=EVENT, headers={"Authorization": "Token wrong"})
            assert r.status == 401
        # Now even the right token is refused before it is compared, in Traitly's shape.
        r = await client.post("/api/v1/event", json=EVENT, headers={"Authorization": "Token tk_live_123"})
        assert r.status == 429 and int(r.headers["Retry-After"]) == 20
        assert (await r.json())["error"]["message"].startswith("too many failed authentication attempts")
        # Other dialects and the admin endpoints answer 429 too, each in its shape.
        r = await client.post("/v1/track", json={"writeKey": "wk_1", "event": "x", "userId": "1"})
        assert r.status == 429 and (await r.json())["code"] == "rate_limit"
        r = await client.post("/admin/v1/sql", data="SELECT 1", headers={"Authorization": "Bearer adm_1"})
        assert r.status == 429 and "Retry-After" in r.headers
        assert (await client.get("/healthz")).status in (200, 503)  # health is never limited
    finally:
        await client.close()


async def test_failed_admin_and_retainly_authentications_count():
    client, _ = await _client(rate_limit_auth_failures=2)
    try:
        r = await client.post("/admin/v1/sql", data="SELECT 1", headers={"Authorization": "Bearer nope"})
        assert r.status == 401
        r = await client.post("/events", json={}, headers={"key": "k", "secret": "wrong"})
        assert r.status == 403
        r = await client.post("/events", json={}, headers={"key": "your_api_key", "secret": "your_api_secret"})
        assert r.status == 429 and r.headers["Retry-After"] == "30"
    finally:
        await client.close()
