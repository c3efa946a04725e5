"""Checks run before a long-running command starts anything, and by ``goalstream doctor``.

What flows through: the settings only (host, ports, data dir, broker and ClickHouse
addresses) and the data dir's run file (``runfile.py``: pid and URL of a ``goalstream up``).
Each check answers one :class:`Check` (name, OK/WARN/FAIL, a sentence for the user). ``up``
and ``gateway`` run :func:`early` first, so a busy port or a data dir already in use is
reported within a second, naming the port and the goalstream that holds it, instead of after
the broker, migrations and processors started.
"""

from __future__ import annotations

import errno
import shutil
import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from schemas.settings import CommonSettings, GatewaySettings

from . import runfile

OK, WARN, FAIL = "OK", "WARN", "FAIL"
CONNECT_TIMEOUT_S = 2.0  # every reachability check is bounded by this
DISK_WARN_BYTES = 1024**3  # under 1 GiB free in the data dir: WARN


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str

    def line(self) -> str:
        # One line per check, so `doctor | grep FAIL` shows each failure whole.
        return f"{self.status:<4} {self.name}: " + "; ".join(p.strip() for p in self.detail.splitlines() if p.strip())


class AlreadyRunning(Exception):
    """The data dir or a port is held; the message names what holds it, for the user."""


def _holder(info: dict[str, Any] | None) -> str:
    return f"goalstream (pid {info['pid']}, URL {info['url']})" if info else "another process"


def port_free(host: str, port: int) -> bool:
    """Whether (host, port) can be bound now, as fronts._bind and aiohttp bind it
    (SO_REUSEADDR, so a port in TIME_WAIT counts as free). Port 0 is always free."""
    if port == 0:
        return True
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def _ports(settings: GatewaySettings) -> list[int]:
    return [settings.port] + ([settings.tls_port] if settings.tls else [])


def _port_of(url: str) -> int | None:
    try:
        return urllib.parse.urlsplit(url).port
    except ValueError:
        return None


def data_dir_check(settings: CommonSettings) -> Check:
    info = runfile.running(settings.data_dir)
    if info is not None:
        return Check("data dir", OK, f"goalstream already runs on {settings.data_dir} (pid {info['pid']}, URL {info['url']})")
    if (pid := runfile.lock_holder(settings.data_dir)) is not None:
        return Check("data dir", OK, f"goalstream (pid {pid}) is starting on {settings.data_dir}")
    if runfile.path(settings.data_dir).is_file():
        return Check("data dir", OK, f"{settings.data_dir}: stale run file (its pid is gone): free")
    return Check("data dir", OK, f"{settings.data_dir}: no goalstream runs on it")


def port_checks(settings: GatewaySettings) -> list[Check]:
    info = runfile.running(settings.data_dir)
    out = []
    for port in _ports(settings):
        if port_free(settings.host, port):
            out.append(Check(f"port {port}", OK, f"{settings.host}:{port} is free"))
        elif info is not None and _port_of(info["url"]) == port:
            out.append(Check(f"port {port}", OK, f"{settings.host}:{port} is held by the running {_holder(info)}"))
        else:
            out.append(Check(f"port {port}", FAIL, f"{settings.host}:{port} is in use by another process"))
    return out


def early(command: str, settings: CommonSettings) -> None:
    """Raise AlreadyRunning if ``up`` would find its data dir taken, or ``up``/``gateway``
    its port busy. Called before anything is started, so it answers in well under a second."""
    info = runfile.running(settings.data_dir)
    if command == "up" and info is not None:
        raise AlreadyRunning(f"goalstream already runs on this data dir {settings.data_dir} (pid {info['pid']}, URL {info['url']})")
    if command == "up" and (pid := runfile.lock_holder(settings.data_dir)) is not None:
        raise AlreadyRunning(f"goalstream already runs on this data dir {settings.data_dir} (pid {pid}, still starting: no URL yet)")
    if isinstance(settings, GatewaySettings):
        for port in _ports(settings):
            if not port_free(settings.host, port):
                held = info if info is not None and _port_of(info["url"]) == port else None
                raise AlreadyRunning(f"port {port} on {settings.host} is already in use by {_holder(held)}; "
                                     f"stop it or give another --port")


def _reach(hostport: str, default_port: int) -> tuple[bool, str]:
    parsed = urllib.parse.urlsplit("//" + hostport.strip())
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True, f"{host}:{port} answers"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


def broker_check(settings: CommonSettings) -> Check:
    info = runfile.running(settings.data_dir)
    bootstrap = (info or {}).get("kafka") or settings.kafka_bootstrap
    results = [_reach(b, 9092) for b in bootstrap.split(",") if b.strip()]
    if any(ok for ok, _ in results):
        return Check("broker", OK, "; ".join(d for _, d in results))
    if settings.kafka is None and info is None:
        # The embedded broker only runs inside `goalstream up`: not running is expected here.
        return Check("broker", WARN, f"embedded broker not running ({'; '.join(d for _, d in results)}); goalstream up starts it")
    return Check("broker", FAIL, "; ".join(d for _, d in results))


def clickhouse_check(settings: CommonSettings) -> Check:
    from schemas.warehouse import embedded_path, normalize_dsn

    dsn = normalize_dsn(settings.clickhouse_dsn)
    path = embedded_path(dsn)
    if path is not None:
        info = runfile.running(settings.data_dir)
        if info is not None:
            return Check("clickhouse", OK, f"chDB at {path}, held by {_holder(info)}")
        if not path.exists():
            return Check("clickhouse", OK, f"chDB at {path}: no data yet (created by goalstream up)")
        return Check("clickhouse", OK, f"chDB at {path}: not held by any goalstream")
    parsed = urllib.parse.urlsplit(dsn)
    default = 8443 if parsed.scheme == "https" else 8123
    ok, detail = _reach(f"{parsed.hostname}:{parsed.port or default}", default)
    return Check("clickhouse", OK if ok else FAIL, f"{parsed.scheme}://{detail}")  # never the DSN: it holds the password


def disk_check(data_dir: Path) -> Check:
    where = data_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    free = shutil.disk_usage(where).free
    status = OK if free >= DISK_WARN_BYTES else WARN
    return Check("disk", status, f"{free / 1024**3:.1f} GiB free at {where}")
