"""The SSRF guard: address table, and the real aiohttp session against real local sockets.

A local aiohttp server on 127.0.0.1 counts the TCP connections it accepts, so "refused before any
connection is made" is observed from the server's side, and the same URLs with the guard off show
that it is the guard (not an unreachable address) doing the refusing. No internet is used.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import aiohttp.abc
import pytest
from aiohttp import web

from stream_processors.webhooks import ssrf

# --- check_ip table ----------------------------------------------------------------------------

REFUSED = [
    # loopback
    ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
    # private
    ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.0.1", "private"),
    ("172.31.255.255", "private"), ("192.168.0.1", "private"), ("192.168.255.255", "private"),
    # link-local
    ("169.254.0.1", "link-local"), ("169.254.255.255", "link-local"), ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"), ("febf::1", "link-local"),
    # carrier-grade NAT
    ("100.64.0.1", "carrier-grade NAT"), ("100.127.255.255", "carrier-grade NAT"),
    # unique-local
    ("fc00::1", "unique-local"), ("fd12:3456::1", "unique-local"),
    # IPv4-mapped IPv6: refused outright, with the embedded address named
    ("::ffff:127.0.0.1", "embeds 127.0.0.1"), ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "metadata"), ("::ffff:8.8.8.8", "IPv4-mapped"),
    # IPv4-compatible (deprecated) and IPv4-translated
    ("::127.0.0.1", "IPv4-compatible"), ("::8.8.8.8", "IPv4-compatible"),
    ("::ffff:0:127.0.0.1", "IPv4-translated"),
    # NAT64 / 6to4 / Teredo embedding a refused v4
    ("64:ff9b::127.0.0.1", "NAT64"), ("64:ff9b::10.1.2.3", "NAT64"), ("64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("2002:7f00:1::", "6to4"), ("2002:c0a8:101::1", "6to4"), ("2002:a9fe:a9fe::1", "metadata"),
    # Teredo: server 65.54.227.120, client 192.0.2.45 (RFC 4380's example; client is documentation)
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    # Teredo whose server is 10.0.0.1, client (obfuscated) 8.8.8.8
    ("2001:0:a00:1::f7f7:f7f7", "Teredo"),
    # unspecified
    ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
    # multicast
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"), ("ff0e::1", "multicast"),
    # reserved / broadcast
    ("240.0.0.1", "reserved"), ("255.255.255.254", "reserved"), ("255.255.255.255", "broadcast"),
    ("192.0.0.8", "reserved"), ("192.88.99.1", "reserved"), ("100::1", "discard-only"), ("fec0::1", "site-local"),
    # benchmarking
    ("198.18.0.1", "benchmarking"), ("198.19.255.255", "benchmarking"), ("2001:2::1", "benchmarking"),
    # documentation
    ("192.0.2.1", "documentation"), ("198.51.100.7", "documentation"), ("203.0.113.9", "documentation"),
    ("2001:db8::1", "documentation"), ("3fff::1", "documentation"),
    # cloud metadata
    ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
    ("169.254.170.2", "metadata"), ("168.63.129.16", "metadata"),
]

PUBLIC = [
    "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2001:4860:4860::8888",
    "172.15.255.255", "172.32.0.0", "100.63.255.255", "100.128.0.0", "192.167.255.255", "198.17.255.255",
    "198.20.0.0", "169.253.255.255", "11.0.0.0", "223.255.255.255",
    "64:ff9b::808:808",  # NAT64 for 8.8.8.8
    "2002:808:808::1",  # 6to4 for 8.8.8.8
    "2001:0:4136:e378:8000:63bf:f7f7:f7f7",  # Teredo: server 65.54.227.120, client 8.8.8.8
]


@pytest.mark.parametrize("address,reason", REFUSED)
def test_check_ip_refuses(address, reason):
    with pytest.raises(ssrf.TargetRefused, match=reason):
        ssrf.check_ip(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_check_ip_passes_public(address):
    ssrf.check_ip(ipaddress.ip_address(address))


def test_teredo_fixture_addresses_embed_what_the_table_says():
    server, client = ipaddress.IPv6Address("2001:0:a00:1::f7f7:f7f7").teredo  # type: ignore[misc]
    assert (str(server), str(client)) == ("10.0.0.1", "8.8.8.8")
    assert str(ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:f7f7:f7f7").teredo[1]) == "8.8.8.8"  # type: ignore[index]


def test_refusal_is_an_oserror_with_a_reason():
    with pytest.raises(ssrf.TargetRefused) as info:
        ssrf.check_ip(ipaddress.ip_address("10.1.2.3"))
    assert isinstance(info.value, OSError)
    assert info.value.reason == "10.1.2.3 is private"
    assert "10.1.2.3 is private" in str(info.value)


# --- numeric host forms ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host,addresses",
    [
        ("127.1", ["127.0.0.1"]), ("0x7f000001", ["127.0.0.1"]), ("2130706433", ["127.0.0.1"]),
        ("0177.0.0.1", ["127.0.0.1"]), ("0x7f.1", ["127.0.0.1"]), ("127.0.0.1.", ["127.0.0.1"]),
        ("::ffff:7f00:1", ["::ffff:7f00:1"]), ("fe80::1%25eth0", ["fe80::1%eth0"]),
        ("localhost", None), ("hooks.example.com", None), ("0x7g", None),
    ],
)
def test_numeric_addresses_reads_hosts_like_the_os(host, addresses):
    assert ssrf.numeric_addresses(host) == addresses


@pytest.mark.parametrize("host", ["1.2.3.4.5", "999.1.1.1", "::g", "1:2:3"])
def test_numeric_looking_garbage_fails_closed(host):
    # aiohttp would treat these as literals (skipping the resolver), so they must not pass unchecked.
    with pytest.raises(ssrf.TargetRefused):
        ssrf.numeric_addresses(host)


# --- the real session against real sockets -----------------------------------------------------


class CountingServer:
    """An aiohttp server on 127.0.0.1 that counts accepted TCP connections and requests."""

    def __init__(self, handler: Any) -> None:
        self.connections = 0
        self.requests: list[str] = []
        self._handler = handler
        self.port = 0

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path_qs}")
        return await self._handler(request)

    async def start(self) -> None:
        self._server = web.Server(self._handle)

        def factory() -> asyncio.Protocol:
            self.connections += 1
            return self._server()

        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(factory, "127.0.0.1", 0)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self._listener.close()
        await self._listener.wait_closed()
        await self._server.shutdown(1)


async def _ok(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(text="ok")


async def _redirect_to_metadata(request: web.BaseRequest) -> web.Response:
    await request.read()
    return web.Response(status=302, headers={"Location": "http://169.254.169.254/latest/meta-data/"})


@pytest.fixture
async def server() -> AsyncIterator[CountingServer]:
    srv = CountingServer(_ok)
    await srv.start()
    yield srv
    await srv.close()


@pytest.fixture
async def redirect_server() -> AsyncIterator[CountingServer]:
    srv = CountingServer(_redirect_to_metadata)
    await srv.start()
    yield srv
    await srv.close()


def _ipv6_loopback_usable() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# The five URLs of the issue; {port} points at the local server so a leak would be seen there.
ISSUE_URLS = [
    "http://127.1:{port}/",
    "http://0x7f000001:{port}/",
    "http://2130706433:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://169.254.169.254/",
]


async def _post(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> int:
    async with session.post(url, data=b'{"x":1}', **kwargs) as resp:
        await resp.read()
        return resp.status


@pytest.mark.parametrize("template", ISSUE_URLS)
async def test_issue_urls_are_refused_before_connecting(server, template):
    url = template.format(port=server.port)
    async with ssrf.make_session(allow_private=False) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await asyncio.wait_for(_post(session, url, allow_redirects=False), 5)
    refused = ssrf.refusal(info.value)
    assert refused is not None, f"{url} failed for another reason: {info.value!r}"
    assert "refused by the SSRF guard" in str(info.value)
    # The shape the dispatcher checks: a ClientError whose __cause__ is the TargetRefused.
    assert info.value.__cause__ is refused
    assert server.connections == 0 and server.requests == []


@pytest.mark.parametrize("template", ISSUE_URLS)
async def test_check_url_refuses_issue_urls(template):
    with pytest.raises(ssrf.TargetRefused):
        await ssrf.check_url(template.format(port=8080), allow_private=False)


@pytest.mark.parametrize("template", ISSUE_URLS)
async def test_check_url_allows_everything_when_lifted(template):
    await ssrf.check_url(template.format(port=8080), allow_private=True)


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "0x7f000001", "localhost", "[::ffff:127.0.0.1]"],
)
async def test_guard_off_reaches_the_local_server(server, host):
    if host.startswith("[") and not _ipv6_loopback_usable():
        pytest.skip("no IPv6 on this host")
    async with ssrf.make_session(allow_private=True) as session:
        assert await _post(session, f"http://{host}:{server.port}/hook", allow_redirects=False) == 200
    assert server.requests == ["POST /hook"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_guard_on_refuses_plain_loopback_too(server, host):
    async with ssrf.make_session(allow_private=False) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await _post(session, f"http://{host}:{server.port}/hook", allow_redirects=False)
    assert ssrf.refusal(info.value) is not None
    assert server.connections == 0


@pytest.mark.parametrize("host", ["127.1", "2130706433"])
async def test_guard_off_legacy_ipv4_forms_are_up_to_aiohttp(server, host):
    """With the guard off these reach the server on aiohttp releases without aio-libs/aiohttp#12827;
    releases with it (3.14.x here) refuse them as non-canonical (InvalidUrlClientError) - either
    way it is not the guard, which (test above) refuses them first, before aiohttp's own check."""
    async with ssrf.make_session(allow_private=True) as session:
        try:
            status = await _post(session, f"http://{host}:{server.port}/", allow_redirects=False)
        except aiohttp.InvalidUrlClientError as exc:
            assert ssrf.refusal(exc) is None
            assert server.connections == 0
        else:
            assert status == 200


async def test_redirect_is_not_followed(redirect_server):
    async with ssrf.make_session(allow_private=True) as session:
        # allow_private only so the session may reach the local redirecting server at all.
        status = await _post(session, f"http://127.0.0.1:{redirect_server.port}/", allow_redirects=False)
    assert status == 302
    assert redirect_server.requests == ["POST /"]


class MapResolver(aiohttp.abc.AbstractResolver):
    """Resolves names from a fixed table (a stand-in for DNS; no internet in tests)."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        self.calls.append(host)
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return [
            {"hostname": host, "host": a, "port": port,
             "family": socket.AF_INET6 if ":" in a else socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}
            for a in self.table[host]
        ]

    async def close(self) -> None:
        pass


async def test_followed_redirect_would_be_refused(redirect_server):
    """If a redirect were followed, its target goes through the same check (connect runs per hop).

    A guarded session cannot reach the local redirecting server at all, so this connector lets
    the first hop (the server's port) through unchecked and guards everything after it.
    """
    hops: list[str] = []

    class FirstHopAllowed(ssrf.GuardedConnector):
        async def connect(self, req: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(str(req.url))
            if req.url.port == redirect_server.port:
                return await aiohttp.TCPConnector.connect(self, req, *args, **kwargs)
            return await super().connect(req, *args, **kwargs)

    async with aiohttp.ClientSession(connector=FirstHopAllowed()) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await _post(session, f"http://127.0.0.1:{redirect_server.port}/")
    refused = ssrf.refusal(info.value)
    assert refused is not None and "metadata" in refused.reason
    assert hops == [f"http://127.0.0.1:{redirect_server.port}/", "http://169.254.169.254/latest/meta-data/"]


async def test_resolver_refuses_if_any_answer_is_refused():
    inner = MapResolver({"mixed.example": ["8.8.8.8", "10.0.0.5"], "fine.example": ["8.8.8.8", "2606:4700:4700::1111"]})
    resolver = ssrf.GuardedResolver(inner)
    with pytest.raises(ssrf.TargetRefused, match="10.0.0.5 is private"):
        await resolver.resolve("mixed.example", 443)
    results = await resolver.resolve("fine.example", 443)
    # Exactly the checked answers go back to aiohttp: it connects to these, no second lookup.
    assert [r["host"] for r in results] == ["8.8.8.8", "2606:4700:4700::1111"]


async def test_resolver_default_uses_getaddrinfo():
    resolver = ssrf.GuardedResolver()
    try:
        with pytest.raises(ssrf.TargetRefused, match="loopback"):
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
        # getaddrinfo turns the hex form into 127.0.0.1 for names that reach the resolver.
        with pytest.raises(ssrf.TargetRefused, match="127.0.0.1 is loopback"):
            await resolver.resolve("0x7f000001", 80, socket.AF_INET)
    finally:
        await resolver.close()


async def test_name_resolving_to_private_is_refused_through_the_session(server):
    inner = MapResolver({"hooks.customer.example": ["127.0.0.1"]})
    async with aiohttp.ClientSession(connector=ssrf.make_connector(allow_private=False, inner_resolver=inner)) as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await _post(session, f"http://hooks.customer.example:{server.port}/", allow_redirects=False)
    assert ssrf.refusal(info.value) is not None
    assert inner.calls == ["hooks.customer.example"]
    assert server.connections == 0


async def test_session_connects_to_the_addresses_the_resolver_returned(server):
    """The connection goes to the resolver's (checked) answer: the name is looked up once, and the
    address used is the one returned (shown with the guard lifted so 127.0.0.1 is connectable)."""
    inner = MapResolver({"hooks.customer.example": ["127.0.0.1"]})
    async with aiohttp.ClientSession(connector=ssrf.make_connector(allow_private=True, inner_resolver=inner)) as session:
        assert await _post(session, f"http://hooks.customer.example:{server.port}/", allow_redirects=False) == 200
    assert inner.calls == ["hooks.customer.example"]
    assert server.connections == 1


async def test_make_session_settings():
    async with ssrf.make_session(allow_private=False) as guarded, ssrf.make_session(allow_private=True, timeout_s=3) as open_:
        assert isinstance(guarded.connector, ssrf.GuardedConnector)
        assert not isinstance(open_.connector, ssrf.GuardedConnector)
        assert guarded.timeout.total == 15 and open_.timeout.total == 3
        assert guarded.trust_env is False


@pytest.mark.parametrize("url", ["ftp://example.com/", "file:///etc/passwd", "http:///nohost", "gopher://127.0.0.1/"])
async def test_check_url_refuses_non_http(url):
    with pytest.raises(ssrf.TargetRefused):
        await ssrf.check_url(url, allow_private=True)


async def test_check_url_resolves_names():
    with pytest.raises(ssrf.TargetRefused, match="loopback"):
        await ssrf.check_url("https://localhost/hook", allow_private=False)
    await ssrf.check_url("https://localhost/hook", allow_private=True)
    await ssrf.check_url("https://8.8.8.8/hook", allow_private=False)
    await ssrf.check_url("https://[2606:4700:4700::1111]/hook", allow_private=False)


async def test_check_url_leaves_dns_failures_to_the_request(monkeypatch):
    # A name that does not resolve is a retriable connection error for the request, not a refusal.
    # (getaddrinfo failing is simulated: no DNS traffic from unit tests.)
    async def no_such_host(self: Any, host: str, port: int = 0, family: int = 0) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(aiohttp.ThreadedResolver, "resolve", no_such_host)
    await ssrf.check_url("https://hooks.invalid/x", allow_private=False)


def test_refusal_finds_the_cause_or_none():
    refused = ssrf.TargetRefused("x is private", host="x")
    assert ssrf.refusal(refused) is refused
    try:
        try:
            raise refused
        except ssrf.TargetRefused as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert ssrf.refusal(outer) is refused
    assert ssrf.refusal(ConnectionRefusedError(111, "refused")) is None
