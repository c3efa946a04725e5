"""Mixed load over the five dialects, sent from outside, and the ledger of what the stack acknowledged.

What flows through here: ``Mix`` builds requests (one dialect's endpoint, its credentials,
a body whose events carry fresh fault ids), ``Load`` sends them from a pool of aiohttp
workers, and every answer lands in the ``Ledger``: status, whether a 503 carried
Retry-After, start and end times, and the fault ids (fids) a 2xx acknowledged.
``HealthWatch`` samples ``/healthz`` alongside. The checks (``checks.py``) hold the ledger
against ClickHouse.

Every event carries its fid as the property ``fid``, so any stored row can be matched
(``JSONExtractString(properties, 'fid')``), and, where the dialect takes a client-supplied
id (Traitly ``message_id``, Customer.io ``id``, Segment ``messageId``), as that id too.
trigger.ly and Retainly events take no client id: a resent request of theirs is a new event
to the stack, so the ledger counts every send of such a fid that may have been stored and
the checks allow that many rows for it.

Of the requests, ``invalid_share`` (5%) are malformed in their dialect's way and must get a
4xx; ``resend_share`` (1%) of the valid ones are sent a second time, byte for byte, once the
first answer is in (a client that lost the answer). A worker that gets a 503 or no answer
pauses briefly, as a client honouring Retry-After would, and does not retry: what was not
acknowledged is simply not counted.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterator
from urllib.parse import quote, urlencode

import aiohttp
import orjson

# Each workspace's credentials as tests/conftest.py's config has them (globex's Traitly
# token is configured hashed; clients send the plain value).
CREDENTIALS = {
    "acme": {
        "traitly": "tk_live_123",
        "triggerly": "fae3009c1123ab827aa5e0929d2d0d8b",
        "retainly": ("your_api_key", "your_api_secret"),
        "customerio": ("YOUR-SITE-ID-HERE", "YOUR-SECRET-API-KEY-HERE"),
        "segment": "wk_1",
    },
    "globex": {
        "traitly": "tk_globex",
        "triggerly": "tg_globex",
        "retainly": ("rk_globex", "rs_globex"),
        "customerio": ("site_globex", "cio_globex"),
        "segment": "wk_globex",
    },
}
NAMES = ("Page Viewed", "purchase", "Signed Up", "Added to Cart")
# Dialects whose events take no client-supplied id (a resend is a second event to them).
NO_CLIENT_ID = ("triggerly", "retainly")


def _basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass(slots=True)
class Req:
    endpoint: str  # "<dialect> <shape>", e.g. "segment batch"
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    fids: tuple[str, ...]
    valid: bool

    @property
    def dialect(self) -> str:
        return self.endpoint.split()[0]


@dataclass(slots=True)
class Answer:
    endpoint: str
    kind: str  # "event", "resend" or "invalid"
    events: int
    started: float  # time.monotonic()
    ended: float
    status: int | None  # None: no HTTP answer (see error)
    retry_after: bool
    error: str  # "", "refused", "disconnected" or "timeout"


class Mix:
    """Builds requests: a weighted choice of endpoints, ``invalid_share`` of them malformed."""

    # endpoint -> weight, for the mixed load (single events mostly, every dialect's batch too)
    MIXED = {
        "traitly event": 3, "traitly batch": 1,
        "triggerly event": 2, "triggerly pixel": 1,
        "retainly event": 3,
        "customerio v1": 2, "customerio v1-form": 1, "customerio v2-batch": 1,
        "segment track": 3, "segment batch": 1,
    }
    # a burst: batches only, to outrun the processors
    BURST = {"traitly batch": 1, "customerio v2-batch": 1, "segment batch": 1}

    def __init__(self, run: str, weights: dict[str, int], *, batch: tuple[int, int] = (20, 100),
                 invalid_share: float = 0.05, seed: int | None = None, counter: Iterator[int] | None = None):
        self.run = run
        # Pass another Mix's counter to build a different load with the same run's fids.
        self.counter = counter if counter is not None else itertools.count(1)
        self.endpoints = list(weights)
        self.weights = list(weights.values())
        self.batch = batch
        self.invalid_share = invalid_share
        self.rng = random.Random(seed)
        self.builders: dict[str, Callable[[str, bool], Req]] = {
            "traitly event": self._traitly_event, "traitly batch": self._traitly_batch,
            "triggerly event": self._triggerly, "triggerly pixel": self._triggerly_pixel,
            "retainly event": self._retainly,
            "customerio v1": self._cio_v1, "customerio v1-form": self._cio_v1_form,
            "customerio v2-batch": self._cio_v2,
            "segment track": self._segment_track, "segment batch": self._segment_batch,
        }

    def fid(self) -> str:
        return f"{self.run}{next(self.counter):08d}"

    def customer(self) -> str:
        return f"{self.run}c{self.rng.randrange(2000)}"

    def name(self) -> str:
        return self.rng.choice(NAMES)

    def workspace(self) -> str:
        return "acme" if self.rng.random() < 0.7 else "globex"

    def build(self) -> Req:
        endpoint = self.rng.choices(self.endpoints, self.weights)[0]
        return self.builders[endpoint](self.workspace(), self.rng.random() >= self.invalid_share)

    def _n(self) -> int:
        return self.rng.randint(*self.batch)

    # -- one builder per endpoint: (workspace, valid) -> Req ------------------------------

    def _traitly_item(self, valid: bool) -> tuple[str, dict]:
        fid = self.fid()
        item = {"customer_id": self.customer(), "name": self.name(), "message_id": fid, "fid": fid}
        if not valid:
            del item["name"]  # "name" is required: 400
        return fid, item

    def _traitly_headers(self, ws: str) -> dict[str, str]:
        return {"Authorization": f"Token {CREDENTIALS[ws]['traitly']}"}

    def _traitly_event(self, ws: str, valid: bool) -> Req:
        fid, item = self._traitly_item(valid)
        return Req("traitly event", "POST", "/api/v1/event", self._traitly_headers(ws), orjson.dumps(item), (fid,), valid)

    def _traitly_batch(self, ws: str, valid: bool) -> Req:
        n = self._n()
        bad = self.rng.randrange(n) if not valid else -1  # one bad item refuses the whole batch
        items = [self._traitly_item(i != bad) for i in range(n)]
        return Req("traitly batch", "POST", "/api/v1/event", self._traitly_headers(ws),
                   orjson.dumps([it for _, it in items]), tuple(f for f, _ in items), valid)

    def _triggerly_req(self, ws: str, valid: bool, pixel: bool) -> Req:
        fid = self.fid()
        obj = {"type": self.name(), "user_id": self.customer(), "fid": fid}
        if not valid:
            del obj["type"]  # "type" is required: 400 (a GIF with a 400 for a pixel)
        data = base64.b64encode(orjson.dumps(obj)).decode()
        path = f"/v1/events/track?api_token={quote(CREDENTIALS[ws]['triggerly'])}&data={quote(data)}" + ("&image=1" if pixel else "")
        return Req("triggerly pixel" if pixel else "triggerly event", "GET", path, {}, None, (fid,), valid)

    def _triggerly(self, ws: str, valid: bool) -> Req:
        return self._triggerly_req(ws, valid, False)

    def _triggerly_pixel(self, ws: str, valid: bool) -> Req:
        return self._triggerly_req(ws, valid, True)

    def _retainly(self, ws: str, valid: bool) -> Req:
        fid = self.fid()
        key, secret = CREDENTIALS[ws]["retainly"]
        body = {"customer_id": self.customer(), "event": self.name(), "data": {"fid": fid}}
        if not valid:
            body["fid"] = fid  # no top-level field but customer_id, event, data: 422
        return Req("retainly event", "POST", "/events", {"key": key, "secret": secret, "Content-Type": "application/json"},
                   orjson.dumps(body), (fid,), valid)

    def _cio_headers(self, ws: str, content_type: str = "application/json") -> dict[str, str]:
        return {"Authorization": _basic(*CREDENTIALS[ws]["customerio"]), "Content-Type": content_type}

    def _cio_v1(self, ws: str, valid: bool) -> Req:
        fid = self.fid()
        body = {"name": self.name(), "id": fid, "data": {"fid": fid}}
        if not valid:
            del body["name"]  # 400
        return Req("customerio v1", "POST", f"/api/v1/customers/{quote(self.customer())}/events", self._cio_headers(ws),
                   orjson.dumps(body), (fid,), valid)

    def _cio_v1_form(self, ws: str, valid: bool) -> Req:
        fid = self.fid()
        fields = [("name", self.name()), ("id", fid), ("data[fid]", fid)]
        if not valid:
            fields = fields[1:]  # 400
        return Req("customerio v1-form", "POST", f"/api/v1/customers/{quote(self.customer())}/events",
                   self._cio_headers(ws, "application/x-www-form-urlencoded"), urlencode(fields).encode(), (fid,), valid)

    def _cio_v2(self, ws: str, valid: bool) -> Req:
        n = self._n()
        bad = self.rng.randrange(n) if not valid else -1
        ops, fids = [], []
        for i in range(n):
            fid = self.fid()
            op = {"type": "person", "action": "event", "identifiers": {"id": self.customer()}, "name": self.name(),
                  "id": fid, "attributes": {"fid": fid}}
            if i == bad:
                del op["name"]  # 400, nothing of the batch stored
            ops.append(op)
            fids.append(fid)
        return Req("customerio v2-batch", "POST", "/api/v2/batch", self._cio_headers(ws), orjson.dumps({"batch": ops}), tuple(fids), valid)

    def _segment_message(self, valid: bool, kind: str | None) -> tuple[str, dict]:
        """A track (or, with kind "page", a page) message; ``kind`` None: the single call's
        body, which names no type. An invalid one is a track without "event": 400."""
        fid = self.fid()
        msg = {"userId": self.customer(), "messageId": fid, "properties": {"fid": fid}}
        if not valid:
            return fid, {**msg, **({"type": "track"} if kind else {})}
        if kind == "page":
            return fid, {**msg, "type": "page", "name": "Home"}
        return fid, {**msg, "event": self.name(), **({"type": kind} if kind else {})}

    def _segment_headers(self, ws: str) -> dict[str, str]:
        return {"Authorization": _basic(CREDENTIALS[ws]["segment"]), "Content-Type": "application/json"}

    def _segment_track(self, ws: str, valid: bool) -> Req:
        fid, msg = self._segment_message(valid, None)
        return Req("segment track", "POST", "/v1/track", self._segment_headers(ws), orjson.dumps(msg), (fid,), valid)

    def _segment_batch(self, ws: str, valid: bool) -> Req:
        n = self._n()
        bad = self.rng.randrange(n) if not valid else -1
        msgs = [self._segment_message(i != bad, "page" if self.rng.random() < 0.2 else "track") for i in range(n)]
        return Req("segment batch", "POST", "/v1/batch", self._segment_headers(ws),
                   orjson.dumps({"batch": [m for _, m in msgs]}), tuple(f for f, _ in msgs), valid)


@dataclass
class Ledger:
    """Every answer, and per fid what the stack may hold of it."""

    run: str
    answers: list[Answer] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)  # valid fids a 2xx acknowledged
    valid: set[str] = field(default_factory=set)  # every valid fid sent
    invalid: set[str] = field(default_factory=set)  # fids of malformed requests: never to be stored
    # fids of dialects without a client id -> sends that may have been stored (2xx, 5xx, no answer)
    copies: Counter = field(default_factory=Counter)

    def record(self, req: Req, kind: str, started: float, ended: float, status: int | None, retry_after: bool, error: str) -> None:
        self.answers.append(Answer(req.endpoint, kind, len(req.fids), started, ended, status, retry_after, error))
        if not req.valid:
            self.invalid.update(req.fids)
            return
        self.valid.update(req.fids)
        if status is not None and 200 <= status < 300:
            self.acked.update(req.fids)
        if req.dialect in NO_CLIENT_ID and not (status is not None and 400 <= status < 500):
            self.copies.update(req.fids)

    def allowed_rows(self, fid: str) -> int:
        """Rows of ``fid`` the stack may hold: one, or per send for a dialect without client ids."""
        return max(1, self.copies.get(fid, 0))

    def writes(self, since: float | None = None, until: float | None = None) -> list[Answer]:
        return [a for a in self.answers if (since is None or a.started >= since) and (until is None or a.started < until)]

    def first_2xx(self, after: float) -> float | None:
        """Seconds from ``after`` to the first 2xx of a valid request sent after it."""
        ok = [a.ended for a in self.answers if a.started >= after and a.kind != "invalid" and a.status is not None and 200 <= a.status < 300]
        return min(ok) - after if ok else None

    def recovery(self, fault: float) -> float | None:
        """Seconds from ``fault`` to the first 2xx of a valid request sent after the last
        failed one (a 5xx or no answer) that was sent after the fault: 0.0 if none failed,
        None if none succeeded after the last failure."""
        after = [a for a in self.answers if a.started >= fault and a.kind != "invalid"]
        failed = [a for a in after if a.status is None or a.status >= 500]
        if not failed:
            return 0.0
        last = max(a.started for a in failed)
        ok = [a.ended for a in after if a.started > last and a.status is not None and 200 <= a.status < 300]
        return min(ok) - fault if ok else None


class Load:
    """A pool of workers sending ``Mix`` requests until stopped, a deadline, or
    ``max_events`` acknowledged."""

    def __init__(self, url: str, mix: Mix, ledger: Ledger, *, concurrency: int = 32, seconds: float = 10.0,
                 max_events: int = 500_000, resend_share: float = 0.01, timeout: float = 20.0, pause_s: float = 0.1):
        self.url = url
        self.mix = mix
        self.ledger = ledger
        self.concurrency = concurrency
        self.seconds = seconds
        self.max_events = max_events
        self.resend_share = resend_share
        self.timeout = timeout
        self.pause_s = pause_s
        self.stop = asyncio.Event()
        self.started = 0.0
        self.session: aiohttp.ClientSession | None = None

    def _done(self) -> bool:
        return (
            self.stop.is_set()
            or time.monotonic() - self.started >= self.seconds
            or len(self.ledger.acked) >= self.max_events
        )

    async def _send(self, req: Req, kind: str) -> int | None:
        status: int | None = None
        retry_after, error = False, ""
        started = time.monotonic()
        try:
            async with self.session.request(req.method, self.url + req.path, headers=req.headers, data=req.body) as r:
                await r.read()
                status, retry_after = r.status, "Retry-After" in r.headers
        except aiohttp.ClientConnectorError:
            error = "refused"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.ClientPayloadError):
            error = "disconnected"
        except asyncio.TimeoutError:
            error = "timeout"
        self.ledger.record(req, kind, started, time.monotonic(), status, retry_after, error)
        if status is None or status >= 500:
            await asyncio.sleep(self.pause_s * (0.5 + self.mix.rng.random()))
        return status

    async def _worker(self) -> None:
        while not self._done():
            req = self.mix.build()
            await self._send(req, "event" if req.valid else "invalid")
            if req.valid and self.mix.rng.random() < self.resend_share:
                await self._send(req, "resend")

    async def run(self, grace_s: float = 20.0) -> Ledger:
        """Send until done; requests still in flight ``grace_s`` after the end are cancelled
        (their outcome unknown, so never counted as acknowledged)."""
        self.started = time.monotonic()
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)) as self.session:
            # aiohttp sends an idempotent request (trigger.ly's GETs) a second time, unseen, when
            # the server closed a reused connection under it (a front killed mid-request): the
            # ledger must see every send it counts copies of. No public switch exists for it.
            self.session._retry_connection = False
            workers = [asyncio.create_task(self._worker()) for _ in range(self.concurrency)]
            ended = asyncio.create_task(self._ended())
            await ended
            _, pending = await asyncio.wait(workers, timeout=grace_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return self.ledger

    async def _ended(self) -> None:
        while not self._done():
            try:
                await asyncio.wait_for(self.stop.wait(), 0.05)
            except asyncio.TimeoutError:
                pass


@dataclass(slots=True)
class Sample:
    sent: float
    received: float
    status: int | None
    broker: str | None
    backlog: int | None  # backlog.records, when /healthz reports it


class HealthWatch:
    """``GET /healthz`` every ``interval`` s, each poll on its own (a slow answer does not
    delay the next), so a state change is seen within about one interval."""

    def __init__(self, url: str, interval: float = 0.1, timeout: float = 2.0):
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.samples: list[Sample] = []
        self.stop = asyncio.Event()
        self.has_backlog: bool | None = None  # None until a /healthz answered

    async def _poll(self, session: aiohttp.ClientSession) -> None:
        sent = time.monotonic()
        status = broker = backlog = None
        try:
            async with session.get(self.url + "/healthz") as r:
                status = r.status
                body = orjson.loads(await r.read())
                broker = body.get("components", {}).get("broker")
                if isinstance(body.get("backlog"), dict):
                    backlog = body["backlog"].get("records")
                self.has_backlog = bool(self.has_backlog) or "backlog" in body
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
            pass
        self.samples.append(Sample(sent, time.monotonic(), status, broker, backlog))

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout)) as session:
            polls: set[asyncio.Task] = set()
            while not self.stop.is_set():
                if len(polls) < 25:  # a hung server must not pile up polls without end
                    t = asyncio.create_task(self._poll(session))
                    polls.add(t)
                    t.add_done_callback(polls.discard)
                try:
                    await asyncio.wait_for(self.stop.wait(), self.interval)
                except asyncio.TimeoutError:
                    pass
            await asyncio.gather(*polls, return_exceptions=True)

    def latest_backlog(self) -> int | None:
        for s in reversed(self.samples):
            if s.backlog is not None:
                return s.backlog
        return None

    def first(self, after: float, pred: Callable[[Sample], bool]) -> Sample | None:
        """The earliest answered poll sent at or after ``after`` that ``pred`` holds for."""
        found = [s for s in self.samples if s.sent >= after and pred(s)]
        return min(found, key=lambda s: s.received) if found else None

    def states(self, after: float) -> list[str]:
        """The broker states and /healthz statuses seen after ``after``, each with the
        seconds since ``after`` it was first seen at, repeats folded ("-": no answer)."""
        out: list[str] = []
        last = None
        for s in sorted((s for s in self.samples if s.sent >= after), key=lambda s: s.received):
            state = f"{s.broker}/{s.status}" if s.status is not None else "-"
            if state != last:
                out.append(f"{state}@{s.received - after:.1f}")
                last = state
        return out


def new_run() -> str:
    """A fid prefix unique to one scenario: every fid starts with it."""
    return "f" + uuid.uuid4().hex[:6] + "-"
