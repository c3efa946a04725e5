"""The hostile-input suite's ground: one live ``goalstream up`` attacked from outside.

Every test here drives the stack over real sockets as an attacker holding one workspace's
credentials would. Each probe is recorded (category, probe, status, seconds) in ``REPORT``;
the terminal summary prints the counts per category, which is what the issue's closing
note quotes. The suite is bounded: every request has a timeout and every test a
pytest-timeout.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import socket
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field

import pytest

from tests.conftest import StackProcess, free_port, wait_for

OPERATOR = "op_hostile_operator_token"
# Every credential of the config, so the log grep can look for each one afterwards.
SECRETS = {
    "acme": {
        "traitly_token": "tk_live_123",
        "triggerly_api_token": "fae3009c1123ab827aa5e0929d2d0d8b",
        "retainly_key": "rk_acme_key",
        "retainly_secret": "rs_acme_secret",
        "customerio_site_id": "site_acme",
        "customerio_api_key": "cio_acme_key",
        "segment_write_key": "wk_acme",
        "admin_token": "adm_acme_token",
    },
    "other": {
        "traitly_token": "tk_other_456",
        "triggerly_api_token": "tg_other_0123456789abcdef",
        "retainly_key": "rk_other_key",
        "retainly_secret": "rs_other_secret",
        "customerio_site_id": "site_other",
        "customerio_api_key": "cio_other_key",
        "segment_write_key": "wk_other",
        "admin_token": "adm_other_token",
    },
}
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def hostile_config() -> str:
    parts = []
    for ws, creds in SECRETS.items():
        parts.append(f'[[workspaces]]\nname = "{ws}"\n' + "".join(f'{k} = "{v}"\n' for k, v in creds.items()))
    parts.append(f'[admin]\noperator_token = "{OPERATOR}"\n')
    parts.append(
        '[[goals]]\nworkspace = "acme"\nname = "Acme Goal"\nwindow_days = 30\ntarget_event = "purchase"\n'
        '[[goals.actions]]\nevent_name = "Style Widget"\n'
    )
    parts.append('[[goals]]\nworkspace = "other"\nname = "Other Goal"\nwindow_days = 30\ntarget_event = "purchase"\n')
    # A webhook whose secret must never reach a log; its target is refused by the SSRF guard.
    parts.append(f'[[webhooks]]\nworkspace = "acme"\nurl = "https://hooks.example.invalid/x"\nsecret = "{WEBHOOK_SECRET}"\n')
    return "\n".join(parts)


@dataclass
class Report:
    rows: list[tuple[str, str, int | None, float]] = field(default_factory=list)

    def add(self, category: str, probe: str, status: int | None, seconds: float) -> None:
        self.rows.append((category, probe, status, seconds))

    def summary(self) -> list[str]:
        by: dict[str, list[tuple[str, int | None, float]]] = defaultdict(list)
        for cat, probe, status, secs in self.rows:
            by[cat].append((probe, status, secs))
        lines = [f"{'category':<14} {'probes':>6} {'2xx':>5} {'4xx':>5} {'5xx':>5} {'closed':>6} {'slowest s':>9}  slowest probe"]
        for cat, rows in by.items():
            count = lambda lo, hi: sum(1 for _, s, _ in rows if s is not None and lo <= s < hi)  # noqa: E731
            closed = sum(1 for _, s, _ in rows if s is None)
            lines.append(
                f"{cat:<14} {len(rows):>6} {count(200, 300):>5} {count(400, 500):>5} {count(500, 600):>5} "
                f"{closed:>6} {max(t for _, _, t in rows):>9.2f}  {max(rows, key=lambda r: r[2])[0][:40]}"
            )
            if ok := [p for p, s, _ in rows if s is not None and 200 <= s < 300 and cat not in ("setup", "sql-allowed", "sql-contain", "sql-dos-api")]:
                lines.append(f"{'':<14} 2xx: {', '.join(sorted(set(ok)))[:200]}")
        return lines


REPORT = Report()


def pytest_terminal_summary(terminalreporter):
    if REPORT.rows:
        terminalreporter.section("hostile-input probes")
        for line in REPORT.summary():
            terminalreporter.write_line(line)


@dataclass
class Reply:
    status: int | None  # None: the server closed the connection without an answer
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


class Attacker:
    """Raw HTTP against the stack: header values may be arbitrary bytes, nothing is fixed up."""

    def __init__(self, stack: StackProcess):
        self.stack = stack

    def request(
        self,
        method: str,
        path: str | bytes,
        headers: list[tuple[str | bytes, str | bytes]] | None = None,
        body: bytes = b"",
        *,
        category: str,
        probe: str,
        timeout: float = 60.0,
        content_length: bool = True,
    ) -> Reply:
        def b(x: str | bytes) -> bytes:
            return x if isinstance(x, bytes) else x.encode("latin-1")

        head = [b(method) + b" " + b(path) + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
        for k, v in headers or []:
            head.append(b(k) + b": " + b(v))
        if content_length and body is not None:
            head.append(b"Content-Length: " + str(len(body)).encode())
        raw = b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")
        return self.send_raw(raw, category=category, probe=probe, timeout=timeout)

    def send_raw(self, raw: bytes, *, category: str, probe: str, timeout: float = 60.0) -> Reply:
        started = time.monotonic()
        reply = Reply(None, {}, b"")
        try:
            with socket.create_connection(("127.0.0.1", self.stack.port), timeout=timeout) as sock:
                try:
                    sock.sendall(raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server may answer (413) and close before the whole body is sent
                resp = http.client.HTTPResponse(sock)
                try:
                    resp.begin()
                    reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
                except (http.client.RemoteDisconnected, ConnectionResetError, http.client.IncompleteRead, BrokenPipeError):
                    pass
        finally:
            REPORT.add(category, probe, reply.status, time.monotonic() - started)
        return reply

    # Conveniences for the common auth shapes.
    def traitly(self, ws: str = "acme") -> list[tuple[str, str]]:
        return [("Authorization", f"Token {SECRETS[ws]['traitly_token']}")]

    def basic(self, user: str, password: str = "") -> list[tuple[str, str]]:
        return [("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())]

    def sql(self, query: str, token: str, *, probe: str, category: str = "sql", timeout: float = 60.0) -> Reply:
        return self.request(
            "POST", "/admin/v1/sql?format=JSONEachRow", [("Authorization", f"Bearer {token}")], query.encode(),
            category=category, probe=probe, timeout=timeout,
        )


def gzip_bomb(inflated: int = 256 * 1024 * 1024) -> bytes:
    """A valid gzip stream of ``inflated`` zero bytes (about 250 KB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    out = [comp.compress(chunk) for _ in range(inflated >> 20)]
    out.append(comp.flush())
    return b"".join(out)


@pytest.fixture(scope="session")
def bomb() -> bytes:
    return gzip_bomb()


@pytest.fixture(scope="session")
def hostile_stack(tmp_path_factory):
    s = StackProcess(tmp_path_factory.mktemp("hostile"), config=hostile_config()).start()
    yield s
    s.close()


@pytest.fixture(scope="session")
def attacker(hostile_stack) -> Attacker:
    return Attacker(hostile_stack)


def operator_rows(attacker: Attacker, query: str) -> list[dict]:
    reply = attacker.request(
        "POST", "/admin/v1/sql?format=JSONEachRow", [("Authorization", f"Bearer {OPERATOR}")], query.encode(),
        category="setup", probe="operator query",
    )
    assert reply.status == 200, reply.body[:500]
    return [json.loads(line) for line in reply.body.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def seeded(attacker) -> dict[str, int]:
    """Both workspaces hold customers, events and a dead letter before the attack starts."""
    counts = {}
    for ws in ("acme", "other"):
        customers = [
            {"customer_id": f"{ws}-c{i}", "name": f"{ws} {i}", "email": f"{i}@{ws}.test", "plan": "Pro"} for i in range(5)
        ]
        r = attacker.request("POST", "/api/v1/customer", attacker.traitly(ws), json.dumps(customers).encode(),
                             category="setup", probe="seed customers")
        assert r.status == 200, r.body
        events = [{"customer_id": f"{ws}-c{i % 5}", "name": "Browse", "message_id": f"{ws}-m{i}"} for i in range(20)]
        r = attacker.request("POST", "/api/v1/event", attacker.traitly(ws), json.dumps(events).encode(),
                             category="setup", probe="seed events")
        assert r.status == 200, r.body
        counts[ws] = 20
    wait_for(
        lambda: len(operator_rows(attacker, "SELECT message_id FROM events WHERE message_id LIKE '%-m%'")) >= 40,
        timeout=60,
    )
    return counts


def gz(data: bytes) -> bytes:
    return gzip.compress(data)


__all__ = ["Attacker", "OPERATOR", "SECRETS", "WEBHOOK_SECRET", "REPORT", "free_port", "operator_rows", "gz", "wait_for"]
