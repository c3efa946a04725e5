"""SSRF guard for the webhook dispatcher (issue 5): only public addresses are ever connected to.

What flows through: a customer-supplied webhook URL. Its host is turned into IP addresses the way
the operating system would (getaddrinfo, which also turns legacy forms such as ``127.1``,
``0x7f000001`` and ``2130706433`` into 127.0.0.1), every address is checked by ``check_ip``, and
aiohttp connects only to the addresses that were checked, so a DNS answer that changes between
the check and the connect (DNS rebinding) cannot redirect the request.

How aiohttp is hooked (found by reading and probing aiohttp 3.14 ``TCPConnector``):

* Host names go through the connector's resolver. ``GuardedResolver`` wraps the default
  ``ThreadedResolver`` (getaddrinfo), refuses the host when ANY resolved address is refused and
  returns exactly the checked results; aiohttp connects to those (and caches them), with no second
  lookup.
* IP literals never reach the resolver: ``TCPConnector._resolve_host`` short-circuits any host
  containing ":" or consisting only of digits and dots (``127.0.0.1``, ``[::ffff:127.0.0.1]``,
  ``169.254.169.254``, ``127.1``, ``2130706433``). Releases with aio-libs/aiohttp#12827 (3.14.5
  is installed) then reject non-canonical dotted/decimal IPv4 themselves (``InvalidUrlClientError``);
  older 3.x releases, which pyproject still allows, hand them straight to the socket. ``0x7f000001`` is not digits-only, so it does go to the resolver. A resolver alone
  therefore cannot guard literals, so ``GuardedConnector.connect`` checks every request's host
  before any connection is taken from the pool or opened: numeric forms are interpreted with
  ``getaddrinfo(AI_NUMERICHOST)`` (no network) and checked; names are left to the resolver.
  Because ``connect`` runs for every request, including each redirect hop, nothing the session
  sends can bypass the check.

Refusals surface from the session as ``aiohttp.ClientConnectorError`` (a ``ClientError`` and an
``OSError``) whose ``os_error`` / ``__cause__`` is a ``TargetRefused``; ``refusal(exc)`` digs it out
so the dispatcher can dead-letter a refused endpoint instead of retrying it. ``check_url`` gives the
same verdict up front (the dispatcher calls it before each delivery, for a clear error); the
session enforces it regardless.

The dispatcher posts with ``allow_redirects=False`` (a 3xx is a failed delivery, per the Standard
Webhooks spec); if a redirect were followed anyway, its target is checked like any other request.
``[dispatcher] allow_private_targets = true`` (``allow_private=True``) lifts the guard for local use.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

import aiohttp
import aiohttp.abc
from yarl import URL

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_v4 = ipaddress.IPv4Network
_v6 = ipaddress.IPv6Network

# Cloud instance-metadata endpoints: credentials live here, so they get their own reason even
# where a broader range (link-local, CGNAT, ULA) would refuse them too. 168.63.129.16 (Azure's
# WireServer) is a public address reachable from inside Azure, so only this list refuses it.
METADATA_ADDRESSES: dict[IPAddress, str] = {
    ipaddress.ip_address("169.254.169.254"): "AWS/GCP/Azure/OpenStack/DigitalOcean",
    ipaddress.ip_address("169.254.170.2"): "AWS ECS task metadata",
    ipaddress.ip_address("100.100.100.200"): "Alibaba Cloud",
    ipaddress.ip_address("168.63.129.16"): "Azure WireServer",
    ipaddress.ip_address("fd00:ec2::254"): "AWS IPv6",
}

# Checked in order; the first match is the reason given.
REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = (
    (_v4("0.0.0.0/8"), "unspecified ('this network')"),
    (_v4("10.0.0.0/8"), "private"),
    (_v4("100.64.0.0/10"), "carrier-grade NAT"),
    (_v4("127.0.0.0/8"), "loopback"),
    (_v4("169.254.0.0/16"), "link-local"),
    (_v4("172.16.0.0/12"), "private"),
    (_v4("192.0.0.0/24"), "reserved (IETF protocol assignments)"),
    (_v4("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (_v4("192.88.99.0/24"), "reserved (6to4 relay anycast)"),
    (_v4("192.168.0.0/16"), "private"),
    (_v4("198.18.0.0/15"), "benchmarking"),
    (_v4("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (_v4("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (_v4("224.0.0.0/4"), "multicast"),
    (_v4("255.255.255.255/32"), "broadcast"),
    (_v4("240.0.0.0/4"), "reserved"),
)

REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = (
    (_v6("::/128"), "unspecified"),
    (_v6("::1/128"), "loopback"),
    # ::a.b.c.d (deprecated, RFC 4291): nothing legitimate uses it, and stacks that still honour
    # it would talk IPv4 to the embedded address; refused outright like the mapped form.
    (_v6("::/96"), "IPv4-compatible IPv6 (deprecated)"),
    (_v6("::ffff:0:0:0/96"), "IPv4-translated IPv6"),
    (_v6("64:ff9b:1::/48"), "local-use NAT64"),
    (_v6("100::/64"), "discard-only"),
    (_v6("2001:2::/48"), "benchmarking"),
    (_v6("2001:10::/28"), "reserved (ORCHID)"),
    (_v6("2001:20::/28"), "reserved (ORCHIDv2)"),
    (_v6("2001:db8::/32"), "documentation"),
    (_v6("3fff::/20"), "documentation"),
    (_v6("fc00::/7"), "unique-local"),
    (_v6("fe80::/10"), "link-local"),
    (_v6("fec0::/10"), "site-local (deprecated)"),
    (_v6("ff00::/8"), "multicast"),
)

_MAPPED = _v6("::ffff:0:0/96")
_NAT64 = _v6("64:ff9b::/96")


class TargetRefused(OSError):
    """The webhook target is (or resolves to) an address the SSRF guard refuses; ``reason`` says why.

    An OSError (EACCES) so aiohttp treats a refusal from the resolver as a connection error and
    wraps it in ``ClientConnectorError``, like any other failure to reach the host.
    """

    def __init__(self, reason: str, *, host: str | None = None):
        self.reason = reason
        self.host = host
        where = "webhook target" if host is None else f"webhook target {host!r}"
        message = f"{where} refused by the SSRF guard: {reason}"
        super().__init__(errno.EACCES, message)

    def __str__(self) -> str:
        return self.strerror or self.reason

    # OSError's pickling rebuilds from (errno, strerror); keep the keyword-only fields instead.
    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_refused, (self.reason, self.host))


def _rebuild_refused(reason: str, host: str | None) -> TargetRefused:
    return TargetRefused(reason, host=host)


def _v4_reason(ip: ipaddress.IPv4Address) -> str | None:
    for network, reason in REFUSED_V4:
        if ip in network:
            return reason
    return None


def refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused, or None when it is an ordinary public address."""
    if ip in METADATA_ADDRESSES:
        return f"{ip} is a cloud metadata address ({METADATA_ADDRESSES[ip]})"
    if isinstance(ip, ipaddress.IPv4Address):
        reason = _v4_reason(ip)
        return None if reason is None else f"{ip} is {reason}"

    if ip.scope_id is not None:
        # A zone only means something for link-local/multicast targets; never for a public host.
        ip_unscoped = ipaddress.IPv6Address(ip.packed)
        return refusal_reason(ip_unscoped) or f"{ip} carries a zone id (only meaningful on a local link)"

    if ip in _MAPPED:
        # ::ffff:a.b.c.d is IPv4 on the wire; refused even for a public v4 so there is one way to
        # say an address (the plain v4), and the reason names the embedded address.
        embedded = ip.ipv4_mapped
        assert embedded is not None
        inner = refusal_reason(embedded)
        return f"{ip} is IPv4-mapped IPv6 (embeds {embedded}" + (f"; {inner})" if inner else ")")
    if ip in _NAT64:
        embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        inner = refusal_reason(embedded)
        return None if inner is None else f"{ip} is NAT64 for a refused IPv4 address ({inner})"
    if ip.sixtofour is not None:  # 2002::/16
        inner = refusal_reason(ip.sixtofour)
        return None if inner is None else f"{ip} is 6to4 for a refused IPv4 address ({inner})"
    if ip.teredo is not None:  # 2001::/32: (server, client) with the client obfuscated
        for embedded in ip.teredo:
            inner = refusal_reason(embedded)
            if inner is not None:
                return f"{ip} is Teredo embedding a refused IPv4 address ({inner})"
        return None
    for network, reason in REFUSED_V6:
        if ip in network:
            return f"{ip} is {reason}"
    return None


def check_ip(ip: IPAddress) -> None:
    """Raise TargetRefused unless ``ip`` is an ordinary public address."""
    reason = refusal_reason(ip)
    if reason is not None:
        raise TargetRefused(reason)


def _check_all(host: str, addresses: Iterable[str]) -> None:
    for text in addresses:
        reason = refusal_reason(ipaddress.ip_address(text))
        if reason is not None:
            raise TargetRefused(reason, host=host)


def numeric_addresses(host: str) -> list[str] | None:
    """The addresses a numeric host denotes (any form the OS accepts), or None for a host name.

    Raises TargetRefused for a host that looks numeric but is not a valid address: aiohttp would
    treat it as a literal and skip the resolver, so it must not fall through unchecked.
    """
    text = host[:-1] if host.endswith(".") else host  # "127.0.0.1." is still 127.0.0.1
    if ":" in text:
        # Only IPv6 literals contain ":" (aiohttp's own test); yarl keeps the zone percent-encoded.
        try:
            return [str(ipaddress.ip_address(unquote(text)))]
        except ValueError:
            raise TargetRefused("not a valid IPv6 address", host=host) from None
    try:
        infos = socket.getaddrinfo(text, None, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        if text.replace(".", "").isdigit():
            raise TargetRefused("numeric host that is not a valid IPv4 address", host=host) from None
        return None
    return sorted({str(info[4][0]) for info in infos})


class GuardedResolver(aiohttp.abc.AbstractResolver):
    """getaddrinfo through aiohttp's ThreadedResolver, then every answer checked; only checked answers returned."""

    def __init__(self, inner: aiohttp.abc.AbstractResolver | None = None) -> None:
        # ThreadedResolver wants a running loop: create sessions inside the dispatcher's loop.
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET) -> list[Any]:
        results = await self._inner.resolve(host, port, family)
        # ANY refused address refuses the host: a name answering both a public and a private
        # address would otherwise let happy-eyeballs fallback reach the private one.
        _check_all(host, (r["host"] for r in results))
        return results

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector that checks IP-literal hosts itself, since aiohttp never resolves those."""

    async def connect(self, req: aiohttp.ClientRequest, *args: Any, **kwargs: Any) -> Any:
        host = req.url.raw_host or ""
        try:
            addresses = numeric_addresses(host)
            if addresses is not None:
                _check_all(host, addresses)
        except TargetRefused as exc:
            # The same shape aiohttp gives a resolver failure, so callers handle one error type.
            raise aiohttp.ClientConnectorError(req.connection_key, exc) from exc
        return await super().connect(req, *args, **kwargs)


def make_connector(*, allow_private: bool, inner_resolver: aiohttp.abc.AbstractResolver | None = None) -> aiohttp.TCPConnector:
    """The dispatcher's connector: guarded unless ``allow_private``; ``inner_resolver`` is for tests."""
    if allow_private:
        return aiohttp.TCPConnector(resolver=inner_resolver) if inner_resolver else aiohttp.TCPConnector()
    return GuardedConnector(resolver=GuardedResolver(inner_resolver))


def make_session(*, allow_private: bool, timeout_s: float = 15) -> aiohttp.ClientSession:
    """An aiohttp session for webhook delivery; post with ``allow_redirects=False``.

    15 s total: the low end of the spec's recommended 15-30 s, so one slow endpoint cannot hold a
    delivery slot for long. ``trust_env=False``: an HTTP(S)_PROXY from the environment would move
    name resolution to the proxy, where the guard cannot see it.
    """
    return aiohttp.ClientSession(
        connector=make_connector(allow_private=allow_private),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trust_env=False,
    )


async def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse ``url`` up front: not http(s), no host, or a host that is/resolves to a refused address.

    The dispatcher calls this when an endpoint is added and before each delivery for a clear,
    immediate TargetRefused; the session from ``make_session`` enforces the same check at connect
    time, so a missed call cannot open a hole. ``allow_private`` only skips the address checks.
    A host name that does not resolve is not a refusal: check_url returns and the request itself
    then fails with aiohttp's ``ClientConnectorDNSError`` (a retriable ``ClientError``).
    """
    parsed = URL(url)
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused(f"scheme {parsed.scheme!r} is not http or https", host=parsed.raw_host)
    host = parsed.raw_host
    if not host:
        raise TargetRefused("URL has no host")
    if allow_private:
        return
    addresses = numeric_addresses(host)
    if addresses is not None:
        _check_all(host, addresses)
        return
    resolver = GuardedResolver()
    try:
        await resolver.resolve(host, parsed.port or 0, socket.AF_UNSPEC)
    except TargetRefused:
        raise
    except OSError:
        # A DNS failure is transient, not a verdict; leave it to the request to report.
        return
    finally:
        await resolver.close()


def refusal(exc: BaseException) -> TargetRefused | None:
    """The TargetRefused behind an aiohttp error (or the error itself), or None for any other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TargetRefused):
            return current
        if isinstance(current, aiohttp.ClientConnectorError) and isinstance(current.os_error, TargetRefused):
            return current.os_error
        current = current.__cause__ or current.__context__
    return None


__all__ = [
    "GuardedConnector",
    "GuardedResolver",
    "METADATA_ADDRESSES",
    "TargetRefused",
    "check_ip",
    "check_url",
    "make_connector",
    "make_session",
    "numeric_addresses",
    "refusal",
    "refusal_reason",
]
