"""goalstream's benchmark (``make bench``): gateway throughput against a bare aiohttp app, what
the fsynced spool costs against ``--no-spool``, the processors' drain throughput with and
without goals, how long an event takes from POST to a row in ClickHouse and to a propensity
record, and how long ``goalstream up`` takes to start. The closing table puts issue 12's
targets next to the figures of the same run.

What runs, all on this machine, nothing mocked (``--sections`` picks some; sizes and rounds
are options, see ``--help``; ``make bench-quick`` runs everything small):

1. Baseline: ``bare_server.py``, a bare aiohttp app in its own process whose one POST
   handler reads the body, parses it with orjson and answers a small JSON 200.
2. Durability rounds: ``goalstream up`` (embedded tansu broker, processors, chDB), each
   stack in its own temp working dir (so its own fresh data dir) with a ``goalstream.toml``
   naming one workspace, on free ports; alternately with ``--no-spool`` (a 200 means the
   in-memory broker acknowledged it) and without (the default: a 200 means the records were
   fsynced into the write-ahead spool): no-spool, spool, no-spool, spool (``--rounds``, 2 by
   default: it was 3, cut so that sections 3 and 4 fit in ``make bench``'s 10 minutes or
   so). The machine is noisy (the same scenario varies by +-20% run to run), so the modes
   are interleaved and each figure is the median over the rounds. On each stack: (a) single events: POST
   /api/v1/event with one JSON object; (b) batches: POST /api/v1/event with a JSON array of
   100 events. After each scenario the bench waits until ClickHouse holds every acknowledged
   event (reported as the catch-up time), so the next scenario does not compete with a
   backlog. On spool stacks, ``/healthz`` (``backlog.spool.syncs``) is read before and after
   each scenario: records (one per event) and requests acknowledged per fsync show the group
   commit. The stacks run with ``--max-backlog 0``: a batch burst outruns ClickHouse and would
   otherwise reach the default bound (100000 unstored records) and be answered 503, which
   measures the bound, not the ingest path. The gateway rows of the main table are the spool
   (default) stacks' medians.
3. Processors' drain (``drain.py``, whose docstring has the details): a 300,000-event backlog
   (``--drain-events``) is put on a fresh embedded broker before ``goalstream worker`` starts,
   once without goals and once with a goal whose 5,000 customers all entered it first; the
   worker is timed from its spawn (the headline figure) and from its ready line to the last
   insert, ClickHouse's own ``max(inserted_at)``, read once the worker has been stopped (it
   holds the chDB lock while it runs; meanwhile the bench watches the table's parts on disk to
   know when to stop it). Modes alternate over ``--drain-rounds`` (default 1). Targets: 45k
   events/s without goals, 30k with the goal.
4. End to end, on ``goalstream up`` (spool on, default backlog bound), one stack per mode,
   goals off then goals on (``--latency-rounds``, default 1; figures are medians over the
   rounds). The config is the same but for the goal (30 days, target ``purchase``, two
   actions). Both run with ``GOALSTREAM_PROPENSITY_THRESHOLD=0``, so every scoring publishes
   a record (with the default 0.05 a base-rate score, which does not move, publishes once per
   customer, and nothing would follow a probe event). First 5,000 customers, and one probe
   customer per POST of the 5k/s phase, are upserted with a ``created_at`` 1 to 20 days ago
   (so all have entered the goal), and the bench waits until ClickHouse has them (goals on:
   until each has a ``propensity_scores`` row, so their sign-up records are on the topic
   before it is watched). Then, open loop (POST k leaves at k/rate s whatever the answers
   before it do, from a load process of its own):
   (a) ``--slow-events`` (200) single events at 20/s;
   (b) 100 POSTs/s of 50 events (5,000 events/s) for ``--fast-seconds`` (10), 49 events of
       the 5,000 customers (each gets one about every second) and one of that POST's probe
       customer, its only event.
   Events are goal actions or other events, never the target. Each carries its POST's send
   time (epoch ms) and a run id as properties and a ``message_id``; afterwards one
   ``goalstream sql`` query reads each event's ``inserted_at`` (the table's ``DEFAULT
   now64(3)``, set when the row was inserted, i.e. became visible): POST -> visible is
   ``inserted_at - sent``, for every event (the first 2 s of the 5k/s phase left out of the
   percentiles; every acknowledged event must still become visible within 180 s). With goals
   on, the bench also reads ``goalstream.propensity`` with aiokafka from the stack's broker
   (``<data-dir>/run/stack.json`` "kafka"), positioned at the topic's end before the 5k/s
   phase, decoding the probes' records with ``schemas.codec.decode``: POST -> propensity
   record is the first record for the probe customer scored after its POST was sent, stamped
   when the bench read it (the record's own scoring time and Kafka timestamp are in the JSON
   too). A probe has no other event, so that record is the one its event caused; a record
   that is not (a rescore after a model change) would show as ``extra_records``. Targets at
   5k/s with goals on: visible p99 < 250 ms, propensity record p99 < 1 s.
5. Stack start: every ``goalstream up`` the bench starts (sections 2 and 4) is timed from its
   spawn to its ready line; the closing table has the median.

Clocks: send times, ClickHouse's ``now64``, the worker's scoring time and the bench's reads
are all this host's wall clock; resolution 1 ms. Everything is measured from outside (HTTP,
Kafka, ClickHouse, ready lines), so it holds for any processor design.

The load generator of sections 1 and 2 is the same for baseline and gateway: a separate process
(multiprocessing, spawn) with one aiohttp ClientSession and a fixed number of concurrent
connections, each POSTing back to back for a warm-up and then a measured window. Requests/s
counts 200s that completed inside the window; p50/p99 are over those; every non-200 answer or
client error (warm-up included) counts as an error and is reported by kind. The load generator
shares the machine with the server under test (2 cores here), so absolute numbers are lower
bounds; the ratios (to the baseline, spool to no-spool), measured the same way, are the
comparable figures.

Output: tables on stdout and the same as JSON in bench-results/latest.json (the spool
comparison under "durability", the drains under "drain", end to end under "latency", the
closing table under "targets"). Exit status 1 if any error was counted or a process did not
exit 0 on SIGTERM (a missed target alone is not an error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

try:  # run as a script (make bench) the bench's directory is on sys.path, as a package it is not
    from . import drain
except ImportError:
    import drain

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GOALSTREAM = Path(sys.executable).parent / "goalstream"
RESULTS = ROOT / "bench-results" / "latest.json"

CONCURRENCY = 32
WARMUP_S = 2.0
DURATION_S = 10.0
BATCH_SIZE = 100
LATENCY_EVENTS = 200  # default --slow-events
LATENCY_RATE = 20.0  # events/s, one per POST
CATCH_UP_TIMEOUT_S = 120.0

# The durability rounds: shorter windows than the baseline's. Two rounds (four stacks, each
# started, loaded twice, caught up and stopped, about 3 minutes), down from three, so that
# the drains and the end-to-end stacks fit in `make bench` too (9.5 minutes in all on this
# machine, on main); a median of two is their mean, so a noisy round shows in "req/s by round".
ROUNDS = 2
MODES = ("no-spool", "spool")  # the order within a round
ROUND_WARMUP_S = 2.0
ROUND_DURATION_S = 5.0
# 0 = no bound: batch bursts outrun ClickHouse and would otherwise reach the default bound
# (100000 unstored records) and be answered 503, which measures the bound, not the ingest path.
MAX_BACKLOG = 0
HEALTHZ_SETTLE_S = 5.0  # /healthz's backlog is refreshed on the stack's tick (0.2 s)

TOKEN = drain.TOKEN
WORKSPACE = drain.WORKSPACE
CONFIG = drain.config_text(goal=False)

# End to end, on goalstream up stacks with and without the goal (LAT_MODES alternate, one
# stack each per round): single events at LATENCY_RATE, then FAST_POSTS_PER_S POSTs of
# FAST_BATCH events (5,000 events/s) for --fast-seconds, the first FAST_WARMUP_S left out of
# the percentiles (the processors' first batches after an idle spell are not the sustained
# state); every acknowledged event must still become visible.
LAT_ROUNDS = 3  # one stack to the next, its figures vary by up to 1.5x on 2 cores: the median of 3
LAT_MODES = ("goals off", "goals on")
LAT_CUSTOMERS = drain.CUSTOMERS
FAST_POSTS_PER_S = 100.0
FAST_BATCH = 50
FAST_SECONDS = 10.0
FAST_WARMUP_S = 2.0
VISIBLE_TIMEOUT_S = 180.0
PROPENSITY_GRACE_S = 30.0
TARGET_VISIBLE_P99_MS = 250.0  # at 5k events/s, goals on (issue 12)
TARGET_PROPENSITY_P99_MS = 1000.0  # POST -> propensity record at 5k events/s, goals on
HEADERS = {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), round(p / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


# -- load generator (runs in its own process) -------------------------------------------


@dataclass
class LoadSpec:
    url: str
    bodies: list[bytes]
    headers: dict[str, str]
    concurrency: int = CONCURRENCY
    warmup_s: float = WARMUP_S
    duration_s: float = DURATION_S


async def _drive(spec: LoadSpec) -> dict:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    acknowledged = 0  # every 200, warm-up included: what ClickHouse must end up holding
    connector = aiohttp.TCPConnector(limit=spec.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        start = time.perf_counter()
        measure_from = start + spec.warmup_s
        stop_at = measure_from + spec.duration_s

        async def worker(n: int) -> None:
            nonlocal acknowledged
            while (t0 := time.perf_counter()) < stop_at:
                body = spec.bodies[n % len(spec.bodies)]
                n += spec.concurrency
                try:
                    async with session.post(spec.url, data=body, headers=spec.headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    status = type(exc).__name__
                t1 = time.perf_counter()
                if status != 200:
                    errors[str(status)] += 1
                    continue
                acknowledged += 1
                if measure_from <= t1 < stop_at:
                    latencies.append((t1 - t0) * 1000)

        await asyncio.gather(*(worker(i) for i in range(spec.concurrency)))
    latencies.sort()
    return {
        "ok": len(latencies),
        "acknowledged": acknowledged,
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "duration_s": spec.duration_s,
    }


def _load_process(spec: LoadSpec, conn) -> None:
    try:
        conn.send(asyncio.run(_drive(spec)))
    except BaseException as exc:  # report, never hang the parent
        conn.send({"failed": repr(exc)})
    finally:
        conn.close()


def run_load(spec: LoadSpec) -> dict:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_load_process, args=(spec, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(spec.warmup_s + spec.duration_s + 90):
            raise RuntimeError("load generator did not report in time")
        result = parent.recv()
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    if "failed" in result:
        raise RuntimeError(f"load generator failed: {result['failed']}")
    return result


# -- processes under test -----------------------------------------------------------------


class Server:
    """A subprocess that prints a ready line with its URL on stdout; stopped with SIGTERM."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, ready_prefix: str, env: dict[str, str] | None = None):
        self.name = name
        self.env = None if env is None else {**os.environ, **env}
        self.cmd = cmd
        self.cwd = cwd
        self.ready_prefix = ready_prefix
        self.err_path = cwd / f"{name}.err"
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float) -> "Server":
        t0 = time.monotonic()
        # Own session: a Ctrl-C on the bench reaches it only through stop(), in order.
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.cwd, stdout=subprocess.PIPE, stderr=open(self.err_path, "ab"), text=True, start_new_session=True,
            env=self.env,
        )
        ready = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:
                if line.startswith(self.ready_prefix):
                    self.url = line.split()[-1]
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout):
            raise RuntimeError(f"{self.name} not ready in {timeout:.0f}s:\n{self.stderr_tail()}")
        self.started_in_s = time.monotonic() - t0
        return self

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def stop(self, timeout: float) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"{self.name} did not stop in {timeout:.0f}s after SIGTERM; killing it", file=sys.stderr)
            self.proc.kill()
            return self.proc.wait(10)


def goalstream_sql(workdir: Path, query: str) -> str:
    out = subprocess.run(
        [str(GOALSTREAM), "sql", query, "--format", "TSV"], cwd=workdir, capture_output=True, text=True, timeout=120
    )
    if out.returncode != 0:
        raise RuntimeError(f"goalstream sql failed: {out.stderr.strip()}")
    return out.stdout


def stored_events(workdir: Path) -> int:
    return int(goalstream_sql(workdir, f"SELECT count() FROM events WHERE workspace = '{WORKSPACE}'").strip())


def wait_stored(workdir: Path, expected: int, timeout: float = CATCH_UP_TIMEOUT_S) -> float:
    """Seconds until ClickHouse holds ``expected`` events for the workspace."""
    t0 = time.monotonic()
    while (n := stored_events(workdir)) < expected:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"ClickHouse holds {n} of {expected} acknowledged events after {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - t0


# -- scenarios ----------------------------------------------------------------------------


def event(i: int, prefix: str, name: str = "bench_load") -> dict:
    return {"customer_id": f"{prefix}-{i % 5000}", "name": name, "plan": "pro", "value": i, "page": "/pricing"}


def single_bodies(n: int = 1000) -> list[bytes]:
    return [orjson.dumps(event(i, "single")) for i in range(n)]


def batch_bodies(n: int = 50) -> list[bytes]:
    return [orjson.dumps([event(b * BATCH_SIZE + i, "batch") for i in range(BATCH_SIZE)]) for b in range(n)]


def row(scenario: str, result: dict, events_per_request: int) -> dict:
    rps = result["ok"] / result["duration_s"]
    return {
        "scenario": scenario,
        "requests_per_s": rps,
        "events_per_s": rps * events_per_request,
        "p50_ms": result["p50_ms"],
        "p99_ms": result["p99_ms"],
        "errors": result["errors"],
        "error_kinds": result["error_kinds"],
    }


# -- end to end: POST -> row visible, POST -> propensity record -------------------------------


@dataclass
class PacedSpec:
    """Open-loop load: POST number k starts at k / rate s whatever the earlier ones do, so a
    slow answer delays no later request (no coordinated omission)."""

    url: str
    headers: dict[str, str]
    rate: float  # POSTs per second
    posts: int
    batch: int  # events per POST: 1 is a JSON object, more a JSON array
    run_id: str
    customers: int
    probes: bool = False  # the last event of POST k is for probe customer p-<k>, its only event
    connections: int = 64


def paced_body(spec: PacedSpec, k: int, sent_ms: float) -> bytes:
    names = drain.GOAL_ACTIONS + drain.OTHER_EVENTS  # never the goal's target event
    events = []
    for j in range(spec.batch):
        i = k * spec.batch + j
        probe = spec.probes and j == spec.batch - 1
        events.append({
            "customer_id": f"p-{k}" if probe else f"c-{i % spec.customers}",
            "name": names[i % len(names)],
            "message_id": f"{spec.run_id}-{k}-{j}",
            "bench_sent_ms": sent_ms,
            "bench_run": spec.run_id,
        })
    return orjson.dumps(events[0] if spec.batch == 1 else events)


async def _paced(spec: PacedSpec) -> list[dict]:
    answers: list[dict] = [{} for _ in range(spec.posts)]
    connector = aiohttp.TCPConnector(limit=spec.connections)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(k: int) -> None:
            sent_ms = time.time() * 1000  # wall clock: compared with ClickHouse's and the worker's
            start = time.perf_counter()
            try:
                async with session.post(spec.url, data=paced_body(spec, k, sent_ms), headers=spec.headers) as resp:
                    await resp.read()
                    status: int | str = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
            answers[k] = {"status": status, "sent_ms": sent_ms, "ack_ms": (time.perf_counter() - start) * 1000}

        tasks = []
        t0 = time.monotonic()
        for k in range(spec.posts):
            await asyncio.sleep(max(0.0, t0 + k / spec.rate - time.monotonic()))
            tasks.append(asyncio.create_task(one(k)))
        await asyncio.gather(*tasks)
    return answers


def _paced_process(spec: PacedSpec, conn) -> None:
    try:
        conn.send(asyncio.run(_paced(spec)))
    except BaseException as exc:  # report, never hang the parent
        conn.send({"failed": repr(exc)})
    finally:
        conn.close()


def run_paced(spec: PacedSpec) -> list[dict]:
    """The paced load in a process of its own: the parent's propensity consumer then stamps
    arrivals without waiting behind the load generator's event loop."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_paced_process, args=(spec, child), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(spec.posts / spec.rate + 90):
            raise RuntimeError("paced load generator did not report in time")
        result = parent.recv()
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    if isinstance(result, dict):
        raise RuntimeError(f"paced load generator failed: {result['failed']}")
    return result


class PropensityWatch(threading.Thread):
    """Reads ``goalstream.propensity`` from its end while the load runs and keeps, for every
    probe customer's record, when it arrived here, when it was scored (its ``timestamp``) and
    its Kafka timestamp. Only probe keys (``bench:p-*``) are decoded."""

    def __init__(self, bootstrap: str):
        super().__init__(daemon=True)
        self.bootstrap = bootstrap
        self.records: list[tuple[str, float, float, float]] = []  # customer_id, arrived, scored, kafka ts (ms)
        self.seen = 0  # propensity records of any customer
        self.positioned = threading.Event()
        self.stopping = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = repr(exc)
            self.positioned.set()

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        from schemas import codec, topics

        # fetch_max_wait_ms: how long the broker may hold an empty fetch; short, so a record is
        # stamped when it is on the topic, not when the next long poll ends.
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, group_id=None, fetch_max_wait_ms=10)
        await consumer.start()
        try:
            await consumer.topics()  # metadata, so the topic's partitions are known
            tps = [TopicPartition(topics.PROPENSITY, p) for p in sorted(consumer.partitions_for_topic(topics.PROPENSITY) or ())]
            if not tps:
                raise RuntimeError(f"no partitions for {topics.PROPENSITY}")
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)  # resolved now: only what is published from here is read
            self.positioned.set()
            prefix = f"{WORKSPACE}:p-".encode()
            while not self.stopping.is_set():
                batch = await consumer.getmany(timeout_ms=100)
                arrived = time.time() * 1000
                for msgs in batch.values():
                    self.seen += len(msgs)
                    for msg in msgs:
                        if msg.key and msg.key.startswith(prefix):
                            _, rec = codec.decode(msg.value, msg.headers)
                            scored = rec["timestamp"]
                            scored_ms = scored.timestamp() * 1000 if hasattr(scored, "timestamp") else float(scored)
                            self.records.append((rec["customer_id"], arrived, scored_ms, float(msg.timestamp)))
        finally:
            await consumer.stop()


def upsert_population(url: str, ids: list[str]) -> None:
    """The customers, signed up 1 to 20 days ago (inside the goal's 30-day window), 1000 per POST."""
    rng = random.Random(12)
    now = int(time.time())
    for i in range(0, len(ids), 1000):
        body = orjson.dumps([
            {"customer_id": c, "name": f"Customer {c}", "email": f"{c}@example.com", "plan": rng.choice(("free", "pro", "team")),
             "created_at": now - rng.randint(86_400, 20 * 86_400)}
            for c in ids[i : i + 1000]
        ])
        req = urllib.request.Request(f"{url}/api/v1/customer", data=body, headers=HEADERS, method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            if resp.status != 200:
                raise RuntimeError(f"customer upsert answered {resp.status}")


def wait_count(workdir: Path, query: str, expected: int, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while (n := int(goalstream_sql(workdir, query).strip() or 0)) < expected:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"{what}: {n} of {expected} after {timeout:.0f}s")
        time.sleep(0.5)
    return time.monotonic() - t0


def visible_latencies(workdir: Path, run_id: str, acked_ids: int, warm_posts: int) -> tuple[list[float], int, float]:
    """(sorted POST -> inserted_at ms of the events of POSTs from ``warm_posts`` on, how many of
    the acknowledged events are visible, seconds waited for them)."""
    where = f"workspace = '{WORKSPACE}' AND JSONExtractString(properties, 'bench_run') = '{run_id}'"
    try:
        waited = wait_count(workdir, f"SELECT uniqExact(message_id) FROM events WHERE {where}", acked_ids, VISIBLE_TIMEOUT_S, "visible")
    except RuntimeError:
        waited = VISIBLE_TIMEOUT_S
    rows = goalstream_sql(
        workdir,
        "SELECT message_id, min(toUnixTimestamp64Milli(inserted_at)) - any(JSONExtractFloat(properties, 'bench_sent_ms')) "
        f"FROM events WHERE {where} GROUP BY message_id",
    ).splitlines()
    out = []
    for line in rows:
        mid, ms = line.split("\t")
        if int(mid.rsplit("-", 2)[1]) >= warm_posts:
            out.append(float(ms))
    return sorted(out), len(rows), waited


def latency_stats(values: list[float]) -> dict:
    return {"n": len(values), "p50_ms": percentile(values, 50), "p99_ms": percentile(values, 99), "max_ms": values[-1] if values else None}


def paced_phase(workdir: Path, spec: PacedSpec, warmup_s: float, watch: PropensityWatch | None = None) -> dict:
    answers = run_paced(spec)
    errors = Counter(str(a["status"]) for a in answers if a["status"] != 200)
    acked = [k for k, a in enumerate(answers) if a["status"] == 200]
    warm_posts = int(warmup_s * spec.rate)
    vis, visible, waited = visible_latencies(workdir, spec.run_id, len(acked) * spec.batch, warm_posts)
    missing = len(acked) * spec.batch - visible
    acks = sorted(answers[k]["ack_ms"] for k in acked if k >= warm_posts)
    out = {
        "posts": spec.posts,
        "posts_per_s": spec.rate,
        "events_per_post": spec.batch,
        "events_per_s": spec.rate * spec.batch,
        "warmup_s": warmup_s,
        "acknowledged_events": len(acked) * spec.batch,
        "visible_events": visible,
        "errors": sum(errors.values()) + max(0, missing),
        "error_kinds": dict(errors) | ({f"not visible in {VISIBLE_TIMEOUT_S:.0f}s": missing} if missing > 0 else {}),
        "visible": latency_stats(vis),
        "ack": latency_stats(acks),
        "caught_up_after_load_s": waited,
    }
    if watch is not None:
        # Every probe customer's first propensity record scored after its POST was sent: the
        # probe event is its only event, and its sign-up's record was read before the load.
        deadline = time.monotonic() + PROPENSITY_GRACE_S
        want = {f"p-{k}": answers[k]["sent_ms"] for k in acked}
        while time.monotonic() < deadline:
            got = {c for c, _, scored, _ in watch.records if c in want and scored >= want[c] - 1}
            if len(got) >= len(want):
                break
            time.sleep(0.2)
        first: dict[str, tuple[float, float, float]] = {}
        extra = 0
        for c, arrived, scored, kafka_ts in watch.records:
            if c not in want or scored < want[c] - 1:  # -1: ms rounding of the two clocks' readings
                continue
            if c in first:
                extra += 1
                continue
            first[c] = (arrived - want[c], scored - want[c], kafka_ts - want[c])
        measured = [first[f"p-{k}"] for k in acked if k >= warm_posts and f"p-{k}" in first]
        lost = len(want) - len(first)
        out["propensity"] = {
            "probes": len(want),
            "with_record": len(first),
            "errors": lost,
            "error_kinds": {f"no propensity record in {PROPENSITY_GRACE_S:.0f}s after the load": lost} if lost else {},
            "arrived": latency_stats(sorted(m[0] for m in measured)),
            "scored": latency_stats(sorted(m[1] for m in measured)),
            "kafka_timestamp": latency_stats(sorted(m[2] for m in measured)),
            "extra_records": extra,
            "records_seen": watch.seen,
        }
        if watch.error:
            out["propensity"]["errors"] += 1
            out["propensity"]["error_kinds"]["consumer"] = watch.error
    return out


def latency_run(tmp: Path, rnd: int, mode: str, args: argparse.Namespace) -> tuple[dict, Server, Path]:
    goals = mode == "goals on"
    # Threshold 0: every scoring publishes a record, so each probe event gets one (the default
    # 0.05 publishes only when the likelihood moves, which a base-rate score never does).
    stack, workdir = start_stack(tmp, f"latency-{mode.replace(' ', '-')}-{rnd}", True, None,
                                 config=drain.config_text(goals), env={"GOALSTREAM_PROPENSITY_THRESHOLD": "0"})
    print(f"latency round {rnd}, {mode}: goalstream up at {stack.url} (ready in {stack.started_in_s:.1f} s) ...", file=sys.stderr, flush=True)
    try:
        return latency_phases(stack, workdir, rnd, mode, args), stack, workdir
    except BaseException:  # the caller never holds it: stop it here
        stack.stop(180)
        raise


def latency_phases(stack: Server, workdir: Path, rnd: int, mode: str, args: argparse.Namespace) -> dict:
    goals = mode == "goals on"
    url = f"{stack.url}/api/v1/event"
    fast_posts = int(args.fast_seconds * FAST_POSTS_PER_S)
    ids = [f"c-{i}" for i in range(LAT_CUSTOMERS)] + [f"p-{k}" for k in range(fast_posts)]
    upsert_population(stack.url, ids)
    ws = f"workspace = '{WORKSPACE}'"
    wait_count(workdir, f"SELECT count() FROM customers FINAL WHERE {ws}", len(ids), CATCH_UP_TIMEOUT_S, "customers stored")
    if goals:
        # Scores are stored after their records are published: once every customer has one,
        # the sign-ups' records are all on the topic, before the watch starts at its end.
        wait_count(workdir, f"SELECT uniqExact(customer_id) FROM propensity_scores WHERE {ws}", len(ids),
                   CATCH_UP_TIMEOUT_S, "customers scored")
    run_id = f"{os.getpid()}-{rnd}-{int(time.time())}"
    run: dict = {"round": rnd, "mode": mode, "stack_start_s": stack.started_in_s}
    run["slow"] = paced_phase(workdir, PacedSpec(url, HEADERS, LATENCY_RATE, args.slow_events, 1, f"{run_id}-s", LAT_CUSTOMERS), 0.0)
    watch = None
    if goals:
        runfile = json.loads((workdir / "var" / "run" / "stack.json").read_text())
        watch = PropensityWatch(runfile["kafka"])
        watch.start()
        if not watch.positioned.wait(30) or watch.error:
            raise RuntimeError(f"propensity consumer not positioned: {watch.error}")
    try:
        spec = PacedSpec(url, HEADERS, FAST_POSTS_PER_S, fast_posts, FAST_BATCH, f"{run_id}-f", LAT_CUSTOMERS, probes=True)
        run["fast"] = paced_phase(workdir, spec, FAST_WARMUP_S, watch)
    finally:
        if watch is not None:
            watch.stopping.set()
            watch.join(10)
    return run


def summarize_latency(runs: list[dict]) -> dict:
    """Per mode and phase, the median over the rounds of each percentile; errors summed."""
    out: dict = {}
    for mode in LAT_MODES:
        rows = [r for r in runs if r["mode"] == mode]
        if not rows:
            continue
        out[mode] = {}
        for phase in ("slow", "fast"):
            ph = [r[phase] for r in rows]

            def med(get) -> float | None:
                values = [v for v in (get(p) for p in ph) if v is not None]
                return statistics.median(values) if values else None

            s = {
                "events_per_s": ph[0]["events_per_s"],
                "events_per_post": ph[0]["events_per_post"],
                "visible_p50_ms": med(lambda p: p["visible"]["p50_ms"]),
                "visible_p99_ms": med(lambda p: p["visible"]["p99_ms"]),
                "visible_max_ms": med(lambda p: p["visible"]["max_ms"]),
                "ack_p99_ms": med(lambda p: p["ack"]["p99_ms"]),
                "visible_p99_ms_by_round": [p["visible"]["p99_ms"] for p in ph],
                "errors": sum(p["errors"] for p in ph),
                "error_kinds": dict(sum((Counter(p["error_kinds"]) for p in ph), Counter())),
            }
            if all("propensity" in p for p in ph):
                s["propensity_p50_ms"] = med(lambda p: p["propensity"]["arrived"]["p50_ms"])
                s["propensity_p99_ms"] = med(lambda p: p["propensity"]["arrived"]["p99_ms"])
                s["propensity_scored_p99_ms"] = med(lambda p: p["propensity"]["scored"]["p99_ms"])
                s["propensity_errors"] = sum(p["propensity"]["errors"] for p in ph)
                s["propensity_error_kinds"] = dict(sum((Counter(p["propensity"]["error_kinds"]) for p in ph), Counter()))
            out[mode][phase] = s
    return out


# -- durability: spool against --no-spool ---------------------------------------------------


def start_stack(
    tmp: Path, name: str, spool: bool, max_backlog: int | None, config: str = CONFIG, env: dict[str, str] | None = None
) -> tuple[Server, Path]:
    """``goalstream up`` in a fresh working dir of its own (so a fresh ./var data dir)."""
    workdir = tmp / name
    workdir.mkdir()
    (workdir / "goalstream.toml").write_text(config)
    port, kafka_port = free_port(), free_port()
    cmd = [str(GOALSTREAM), "up", "--port", str(port), "--kafka-port", str(kafka_port)]
    if max_backlog is not None:
        cmd += ["--max-backlog", str(max_backlog)]
    if not spool:
        cmd.append("--no-spool")
    server = Server(name, cmd, workdir, "goalstream ready", env)
    try:
        return server.start(120), workdir
    except BaseException:  # not ready (or interrupted): the caller never holds it, so stop it here
        server.stop(60)
        raise


def healthz(base_url: str) -> dict:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 503 while a component is not up: the body still reports
        return json.loads(exc.read())


def spool_stats(base_url: str) -> dict | None:
    """``backlog.spool`` of /healthz once its fsync count stopped moving: the stack publishes
    it on its tick, so right after a burst it may still show the state of a moment ago."""
    deadline = time.monotonic() + HEALTHZ_SETTLE_S
    last: dict | None = None
    while True:
        stats = healthz(base_url).get("backlog", {}).get("spool")
        if stats is None or (last is not None and stats["syncs"] == last["syncs"]) or time.monotonic() > deadline:
            return stats
        last = stats
        time.sleep(0.5)


def durability_run(stack: Server, workdir: Path, rnd: int, mode: str, warmup_s: float, duration_s: float) -> dict:
    """On one fresh stack of one mode: single events, catch-up, batches, catch-up."""
    spool = mode == "spool"
    print(f"durability round {rnd}, {mode}: goalstream up at {stack.url} (ready in {stack.started_in_s:.1f} s) ...", file=sys.stderr, flush=True)
    url = f"{stack.url}/api/v1/event"
    run: dict = {"round": rnd, "mode": mode, "stack_start_s": stack.started_in_s, "catch_up_s": {}}
    before = spool_stats(stack.url) if spool else None
    if spool and before is None:
        raise RuntimeError(f"{stack.name}: /healthz has no backlog.spool, is the spool on? {healthz(stack.url)}")
    acknowledged = 0
    for key, bodies, per_request in (("single", single_bodies(), 1), ("batch", batch_bodies(), BATCH_SIZE)):
        result = run_load(LoadSpec(url, bodies, HEADERS, warmup_s=warmup_s, duration_s=duration_s))
        r = row(f"{mode} {key}", result, per_request)
        r["acknowledged_requests"] = result["acknowledged"]  # warm-up included
        if spool:
            after = spool_stats(stack.url)
            # One record per event; every acknowledged request (warm-up included) was fsynced.
            # ``syncs`` also counts the directory's fsync for each new segment file (a few).
            fsyncs = after["syncs"] - before["syncs"]
            r["fsyncs"] = fsyncs
            r["records"] = result["acknowledged"] * per_request
            r["records_per_fsync"] = r["records"] / fsyncs if fsyncs else None
            r["requests_per_fsync"] = result["acknowledged"] / fsyncs if fsyncs else None
            r["spool_after"] = after
            before = after
        acknowledged += result["acknowledged"] * per_request
        run["catch_up_s"][key] = wait_stored(workdir, acknowledged)
        run[key] = r
    return run


def summarize(runs: list[dict], mode: str, key: str) -> dict:
    """Median over the rounds of one mode and scenario; errors summed; group commit over all runs."""
    rows = [run[key] for run in runs if run["mode"] == mode]

    def median(field: str) -> float | None:
        values = [r[field] for r in rows if r[field] is not None]
        return statistics.median(values) if values else None

    kinds: Counter[str] = Counter()
    for r in rows:
        kinds.update(r["error_kinds"])
    out = {
        "runs": len(rows),
        "requests_per_s": median("requests_per_s"),
        "events_per_s": median("events_per_s"),
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "requests_per_s_by_round": [r["requests_per_s"] for r in rows],
        "errors": sum(r["errors"] for r in rows),
        "error_kinds": dict(kinds),
        "catch_up_s": statistics.median(run["catch_up_s"][key] for run in runs if run["mode"] == mode),
    }
    if mode == "spool":
        fsyncs = sum(r["fsyncs"] for r in rows)
        out["fsyncs"] = fsyncs
        out["records_per_fsync"] = sum(r["records"] for r in rows) / fsyncs if fsyncs else None
        out["requests_per_fsync"] = sum(r["acknowledged_requests"] for r in rows) / fsyncs if fsyncs else None
        out["records_per_fsync_by_round"] = [r["records_per_fsync"] for r in rows]
    return out


def durability_report(runs: list[dict], max_backlog: int | None, warmup_s: float, duration_s: float) -> dict:
    modes = {mode: {key: summarize(runs, mode, key) for key in ("single", "batch")} for mode in MODES}
    ratio = {}
    for key in ("single", "batch"):
        spool, base = modes["spool"][key], modes["no-spool"][key]
        ratio[key] = {
            field: (spool[field] / base[field] if spool[field] is not None and base[field] else None)
            for field in ("requests_per_s", "events_per_s", "p50_ms", "p99_ms")
        }
    return {
        "rounds": max(run["round"] for run in runs),
        "order": [run["mode"] for run in runs],
        "warmup_s": warmup_s,
        "duration_s": duration_s,
        "max_backlog": max_backlog,
        "modes": modes,
        "ratio_spool_to_no_spool": ratio,
        "runs": runs,
    }


# -- report -------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def table(head: tuple[str, ...], rows: list[tuple[str, ...]], left: int = 1) -> list[str]:
    """Aligned columns: the first ``left`` ones to the left, the rest to the right."""
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    lines = []
    for i, cells in enumerate([head, *rows]):
        lines.append("  ".join(c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def render_durability(d: dict) -> list[str]:
    if d["max_backlog"] is None:
        bound = "--max-backlog: the stack's default"
    elif d["max_backlog"] == 0:
        bound = "--max-backlog 0 (no bound: batch bursts outrun ClickHouse and would get 503 at the default 100000)"
    else:
        bound = f"--max-backlog {d['max_backlog']}"
    lines = [
        f"Durability: fsynced spool (default) vs --no-spool, a fresh stack each, {d['rounds']} round(s) alternating "
        f"({', '.join(d['order'])}),",
        f"  {d['warmup_s']:g} s warm-up + {d['duration_s']:g} s measured per scenario, medians over the rounds;",
        f"  {bound}",
        "",
    ]
    head = ("mode", "scenario", "requests/s", "events/s", "p50 ms", "p99 ms", "errors", "req/s by round", "records/fsync", "requests/fsync")
    rows = []
    for key, label in (("single", "single event"), ("batch", f"batch of {BATCH_SIZE}")):
        for mode in MODES:
            m = d["modes"][mode][key]
            rows.append((
                mode,
                label,
                fmt(m["requests_per_s"], 0),
                fmt(m["events_per_s"], 0),
                fmt(m["p50_ms"], 2),
                fmt(m["p99_ms"], 2),
                str(m["errors"]),
                " / ".join(fmt(v, 0) for v in m["requests_per_s_by_round"]),
                fmt(m.get("records_per_fsync"), 1) if mode == "spool" else "",
                fmt(m.get("requests_per_fsync"), 1) if mode == "spool" else "",
            ))
    lines += table(head, rows, left=2)
    for key in ("single", "batch"):
        for mode in MODES:
            if kinds := d["modes"][mode][key]["error_kinds"]:
                lines.append(f"  {mode} {key} errors: {kinds}")
    r = d["ratio_spool_to_no_spool"]
    lines += [
        "",
        "durability cost, spool / no-spool:",
        f"  single events:    requests/s {ratio(r['single']['requests_per_s'])}   p50 {ratio(r['single']['p50_ms'])}   p99 {ratio(r['single']['p99_ms'])}",
        f"  batches of {BATCH_SIZE}:   events/s {ratio(r['batch']['events_per_s'])}   p50 {ratio(r['batch']['p50_ms'])}   p99 {ratio(r['batch']['p99_ms'])}",
        "  (records/fsync, requests/fsync: acknowledged during warm-up + window over /healthz backlog.spool.syncs "
        "growth, all spool rounds)",
    ]
    return lines


def render_drain(d: dict) -> list[str]:
    lines = [
        f"Processors' drain: {d['events']:,} events already on a fresh embedded broker, {d['customers']:,} customers who "
        f"entered the goal first; goalstream worker timed to the last insert (max(inserted_at)), {d['rounds']} round(s), medians:",
        "",
    ]
    head = ("mode", "events/s (spawn)", "events/s (ready)", "events/s (inserting)", "drain s", "worker ready s", "last score s",
            "events/s by round", "errors")
    rows = [
        (mode, fmt(m["events_per_s"], 0), fmt(m["events_per_s_from_ready"], 0), fmt(m["events_per_s_inserting"], 0),
         fmt(m["drain_from_spawn_s"]), fmt(m["worker_ready_s"]), fmt(m["last_score_from_spawn_s"]),
         " / ".join(fmt(v, 0) for v in m["events_per_s_by_round"]), str(len(m["errors"])))
        for mode, m in d["modes"].items()
    ]
    lines += table(head, rows)
    lines += [f"  {mode} errors: {m['errors']}" for mode, m in d["modes"].items() if m["errors"]]
    lines.append("  (spawn: from the worker's spawn; ready: from its ready line; inserting: first to last insert; "
                 "last score: propensity_scores.scored_at, from the spawn)")
    return lines


def render_latency(lat: dict) -> list[str]:
    lines = [
        f"End to end on goalstream up (spool on, propensity threshold 0), {lat['rounds']} round(s) of {', '.join(LAT_MODES)}, "
        f"{lat['customers']:,} customers who entered the goal; medians over the rounds:",
        "",
    ]
    head = ("mode", "load", "visible p50 ms", "visible p99 ms", "visible max ms", "2xx p99 ms", "propensity p50 ms",
            "propensity p99 ms", "errors")
    rows = []
    for mode, phases in lat["modes"].items():
        for phase, s in phases.items():
            load = (f"{s['events_per_s']:,.0f}/s single" if s["events_per_post"] == 1
                    else f"{s['events_per_s']:,.0f}/s ({s['events_per_post']}/POST)")
            rows.append((mode, load, fmt(s["visible_p50_ms"]), fmt(s["visible_p99_ms"]), fmt(s["visible_max_ms"]),
                         fmt(s["ack_p99_ms"], 2), fmt(s.get("propensity_p50_ms")), fmt(s.get("propensity_p99_ms")),
                         str(s["errors"] + s.get("propensity_errors", 0))))
    lines += table(head, rows, left=2)
    for mode, phases in lat["modes"].items():
        for phase, s in phases.items():
            kinds = s["error_kinds"] | s.get("propensity_error_kinds", {})
            if kinds:
                lines.append(f"  {mode} {phase} errors: {kinds}")
    lines.append(f"  (visible: POST sent -> the row's inserted_at; propensity: POST sent -> the probe customer's record "
                 f"read from goalstream.propensity; the first {FAST_WARMUP_S:g} s of the 5k/s load left out)")
    return lines


def targets(report: dict) -> list[dict]:
    """The closing table's rows: figure, value (a number, or None), unit, target, result."""
    out = []

    def check(name: str, value: float | None, unit: str, target: str, ok: bool | None) -> None:
        result = "-" if ok is None or value is None else ("pass" if ok else "FAIL")
        out.append({"figure": name, "value": value, "unit": unit, "target": target, "result": result})

    base = report.get("baseline_requests_per_s")
    for r in report.get("scenarios", []):
        if r["scenario"] == "gateway single event" and base:
            v = r["requests_per_s"] / base
            check("gateway single event: requests/s over bare aiohttp", round(v, 2), "x", ">= 0.5x", v >= 0.5 and not r["errors"])
        elif r["scenario"] == f"gateway batch of {BATCH_SIZE}":
            v = r["events_per_s"]
            check(f"gateway batch of {BATCH_SIZE}: events/s", round(v), "", ">= 50,000", v >= 50_000 and not r["errors"])
    if d := report.get("drain"):
        for mode, m in d["modes"].items():
            # Sustained: first insert to last. The worker's start (joining its consumer groups)
            # is its own row, and the rate from spawn and from ready are in the drain table.
            v = m["events_per_s_inserting"]
            check(f"processors drain, {mode}: events/s sustained", v, "", f">= {m['target_events_per_s']:,}",
                  v is not None and v >= m["target_events_per_s"] and not m["errors"])
            check(f"processors drain, {mode}: events/s from the worker's ready line", m["events_per_s_from_ready"], "", "-", None)
    if lat := report.get("latency"):
        for mode, phases in lat["modes"].items():
            for phase, s in phases.items():
                on_target = mode == "goals on" and phase == "fast"
                v = s["visible_p99_ms"]
                check(f"POST -> visible p99 at {s['events_per_s']:,.0f}/s, {mode}", v, "ms",
                      f"< {TARGET_VISIBLE_P99_MS:g} ms" if on_target else "-",
                      (v is not None and v < TARGET_VISIBLE_P99_MS and not s["errors"]) if on_target else None)
        s = lat["modes"].get("goals on", {}).get("fast")
        if s is not None:
            v = s.get("propensity_p99_ms")
            check(f"POST -> propensity record p99 at {s['events_per_s']:,.0f}/s, goals on", v, "ms",
                  f"< {TARGET_PROPENSITY_P99_MS:g} ms", v is not None and v < TARGET_PROPENSITY_P99_MS and not s.get("propensity_errors"))
    if (v := report.get("stack_start_median_s")) is not None:
        check(f"goalstream up spawn -> ready, median of {len(report['stack_starts_s'])}", v, "s", "-", None)
    return out


def render_targets(rows: list[dict]) -> list[str]:
    def value(r: dict) -> str:
        if r["value"] is None:
            return "-"
        return {"": fmt(r["value"], 0), "ms": f"{fmt(r['value'], 0)} ms", "s": f"{fmt(r['value'], 1)} s",
                "x": f"{r['value']:.2f}x"}[r["unit"]]

    return table(("figure", "value", "target", "result"), [(r["figure"], value(r), r["target"], r["result"]) for r in rows])


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"goalstream benchmark  {report['started']}",
        f"machine: nproc={m['nproc']}, Python {m['python']}, {m['platform']}",
    ]
    if "scenarios" in report:
        load = report["load"]
        base = report["baseline_requests_per_s"]
        lines += [
            f"load: {load['concurrency']} connections, load generator on the same machine; baseline {load['warmup_s']:g} s warm-up + "
            f"{load['duration_s']:g} s measured; gateway rows: the spool (default) stacks of the durability rounds, median",
            f"baseline: the faster of {len(report.get('baseline_runs_requests_per_s', [base]))} run(s), before and after the gateway rounds: "
            + " / ".join(f"{x:,.0f}" for x in report.get("baseline_runs_requests_per_s", [base])) + " requests/s",
            "",
        ]
        head = ("scenario", "requests/s", "events/s", "p50 ms", "p99 ms", "errors", "req/s vs base", "events/s vs base")
        rows = [
            (
                r["scenario"],
                fmt(r["requests_per_s"], 0),
                fmt(r["events_per_s"], 0),
                fmt(r["p50_ms"], 2),
                fmt(r["p99_ms"], 2),
                str(r["errors"]),
                f"{r['requests_per_s'] / base:.2f}x" if base else "-",
                f"{r['events_per_s'] / base:.2f}x" if base else "-",
            )
            for r in report["scenarios"]
        ]
        lines += table(head, rows)
        for r in report["scenarios"]:
            if r["error_kinds"]:
                lines.append(f"  {r['scenario']} errors: {r['error_kinds']}")
    if "durability" in report:
        lines += ["", *render_durability(report["durability"])]
        lines += [
            "",
            "ClickHouse catch-up after each gateway scenario (median): "
            + "; ".join(
                f"{mode} " + ", ".join(f"{key} {report['durability']['modes'][mode][key]['catch_up_s']:.1f} s" for key in ("single", "batch"))
                for mode in MODES
            ),
        ]
    if "drain" in report:
        lines += ["", *render_drain(report["drain"])]
    if "latency" in report:
        lines += ["", *render_latency(report["latency"])]
    if report["stack_starts_s"]:
        lines += ["", "stack starts (spawn -> ready): " + ", ".join(f"{k} {v:.1f} s" for k, v in report["stack_starts_s"].items())]
    lines += ["", "Issue 12's targets (figures measured in this run):", ""]
    lines += render_targets(report["targets"])
    if report["stack_exits"]:
        lines.append(f"processes that did not exit 0 after SIGTERM: {report['stack_exits']}")
    lines.append(f"wall time {report['wall_s']:.0f} s; results in {RESULTS.relative_to(ROOT)}")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------

SECTIONS = ("baseline", "durability", "drain", "latency")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="goalstream's benchmark (make bench)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated, run in this order whatever the order given (default: all of {','.join(SECTIONS)})")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help=f"durability rounds, each one stack per mode (default {ROUNDS})")
    ap.add_argument("--warmup", type=float, default=ROUND_WARMUP_S, help="durability rounds: warm-up seconds per scenario")
    ap.add_argument("--duration", type=float, default=ROUND_DURATION_S, help="durability rounds: measured seconds per scenario")
    ap.add_argument("--baseline-duration", type=float, default=DURATION_S, dest="baseline_duration",
                    help=f"baseline: measured seconds (default {DURATION_S:g})")
    ap.add_argument("--max-backlog", type=int, default=MAX_BACKLOG, dest="max_backlog",
                    help=f"durability: passed to goalstream up in both modes (default {MAX_BACKLOG}: no bound; -1: the stack's own default)")
    ap.add_argument("--drain-events", type=int, default=drain.DRAIN_EVENTS, dest="drain_events",
                    help=f"drain: events in the backlog (default {drain.DRAIN_EVENTS:,})")
    ap.add_argument("--drain-rounds", type=int, default=drain.DRAIN_ROUNDS, dest="drain_rounds",
                    help=f"drain: rounds of (no goals, goal) (default {drain.DRAIN_ROUNDS})")
    ap.add_argument("--latency-rounds", type=int, default=LAT_ROUNDS, dest="latency_rounds",
                    help=f"end to end: rounds of ({', '.join(LAT_MODES)}), one stack each (default {LAT_ROUNDS})")
    ap.add_argument("--latency-modes", default=",".join(LAT_MODES), dest="latency_modes",
                    help="end to end: which modes, comma-separated (default: both; to profile one)")
    ap.add_argument("--slow-events", type=int, default=LATENCY_EVENTS, dest="slow_events",
                    help=f"end to end: single events at {LATENCY_RATE:g}/s (default {LATENCY_EVENTS})")
    ap.add_argument("--fast-seconds", type=float, default=FAST_SECONDS, dest="fast_seconds",
                    help=f"end to end: seconds of {FAST_POSTS_PER_S * FAST_BATCH:,.0f} events/s (default {FAST_SECONDS:g})")
    args = ap.parse_args(argv)
    args.sections = [s for s in SECTIONS if s in {x.strip() for x in args.sections.split(",")}]
    if not args.sections:
        ap.error(f"--sections: none of {', '.join(SECTIONS)}")
    if min(args.rounds, args.drain_rounds, args.latency_rounds) < 1:
        ap.error("rounds must be at least 1")
    if args.fast_seconds <= FAST_WARMUP_S:
        ap.error(f"--fast-seconds must be more than the {FAST_WARMUP_S:g} s warm-up")
    args.latency_modes = [m for m in LAT_MODES if m in {x.strip() for x in args.latency_modes.split(",")}]
    if not args.latency_modes:
        ap.error(f"--latency-modes: none of {', '.join(LAT_MODES)}")
    if args.max_backlog < 0:
        args.max_backlog = None
    return args


def stop_stack(stack: Server, exits: dict[str, int]) -> None:
    code = stack.stop(180)
    if code not in (0, None):
        exits[stack.name] = code
        print(f"{stack.name} exited with {code}:\n{stack.stderr_tail()}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="goalstream-bench-"))
    bare = stack = None
    exits: dict[str, int] = {}
    report: dict = {
        "started": started,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "sections": args.sections,
    }
    starts: dict[str, float] = {}
    failed = 0
    try:
        baseline = None
        baselines: list[dict] = []

        def measure_baseline() -> None:
            # Before and after the gateway rounds, the faster one kept: a baseline caught in a
            # slow spell of this shared machine (seen: 2,981 req/s against 5,900-7,000) would
            # flatter every ratio to it.
            nonlocal baseline, bare, failed
            bare_port = free_port()
            bare = Server("bare", [sys.executable, str(HERE / "bare_server.py"), str(bare_port)], tmp, "bare ready").start(30)
            print(f"baseline: bare aiohttp at {bare.url} ...", file=sys.stderr, flush=True)
            spec = LoadSpec(f"{bare.url}/api/v1/event", single_bodies(), HEADERS, duration_s=args.baseline_duration)
            measured = row("baseline (bare aiohttp)", run_load(spec), 1)
            bare.stop(30)
            bare = None
            failed += measured["errors"]
            baselines.append(measured)
            report["baseline_runs_requests_per_s"] = [b["requests_per_s"] for b in baselines]
            if baseline is None or measured["requests_per_s"] > baseline["requests_per_s"]:
                baseline = measured
                report["baseline_requests_per_s"] = baseline["requests_per_s"]
                report["scenarios"] = [baseline, *report.get("scenarios", [])[1:]]

        if "baseline" in args.sections:
            measure_baseline()

        if "durability" in args.sections:
            # Interleaved, so that the machine's drift and noise fall on both modes alike.
            runs: list[dict] = []
            for rnd in range(1, args.rounds + 1):
                for mode in MODES:
                    stack, workdir = start_stack(tmp, f"{mode}-{rnd}", mode == "spool", args.max_backlog)
                    starts[stack.name] = stack.started_in_s
                    runs.append(durability_run(stack, workdir, rnd, mode, args.warmup, args.duration))
                    stop_stack(stack, exits)
                    stack = None
            durability = report["durability"] = durability_report(runs, args.max_backlog, args.warmup, args.duration)
            failed += sum(durability["modes"][mode][key]["errors"] for mode in MODES for key in ("single", "batch"))

            def gateway_row(scenario: str, m: dict) -> dict:
                fields = ("requests_per_s", "events_per_s", "p50_ms", "p99_ms", "errors", "error_kinds")
                return {"scenario": scenario, **{f: m[f] for f in fields}}

            spool = durability["modes"]["spool"]
            report.setdefault("scenarios", []).extend([
                gateway_row("gateway single event", spool["single"]),
                gateway_row(f"gateway batch of {BATCH_SIZE}", spool["batch"]),
            ])
            report["catch_up_s"] = {key: spool[key]["catch_up_s"] for key in ("single", "batch")}
            if "baseline" in args.sections:
                measure_baseline()

        if "drain" in args.sections:
            d = report["drain"] = asyncio.run(drain.run_drains(tmp, args.drain_events, args.drain_rounds))
            failed += sum(len(m["errors"]) for m in d["modes"].values())

        if "latency" in args.sections:
            lat_runs = []
            for rnd in range(1, args.latency_rounds + 1):
                for mode in args.latency_modes:
                    run, stack, _ = latency_run(tmp, rnd, mode, args)
                    starts[stack.name] = stack.started_in_s
                    lat_runs.append(run)
                    stop_stack(stack, exits)
                    stack = None
            lat = report["latency"] = {
                "rounds": args.latency_rounds,
                "customers": LAT_CUSTOMERS,
                "slow_events": args.slow_events,
                "fast_seconds": args.fast_seconds,
                "modes": summarize_latency(lat_runs),
                "runs": lat_runs,
            }
            failed += sum(s["errors"] + s.get("propensity_errors", 0) for ph in lat["modes"].values() for s in ph.values())

        base = report.get("baseline_requests_per_s")
        for r in report.get("scenarios", []):
            r["requests_ratio"] = r["requests_per_s"] / base if base else None
            r["events_ratio"] = r["events_per_s"] / base if base else None
        report["load"] = {"concurrency": CONCURRENCY, "warmup_s": WARMUP_S, "duration_s": args.baseline_duration, "batch_size": BATCH_SIZE,
                          "round_warmup_s": args.warmup, "round_duration_s": args.duration}
        report["stack_starts_s"] = starts
        report["stack_start_median_s"] = statistics.median(starts.values()) if starts else None
        report["stack_exits"] = exits
        report["wall_s"] = time.monotonic() - t_start
        report["targets"] = targets(report)
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(render(report))
        return 1 if failed + len(exits) else 0
    finally:
        for server, timeout in ((bare, 30), (stack, 180)):
            if server is not None and server.stop(timeout) not in (0, None):
                print(f"{server.name} exited with {server.proc.returncode}:\n{server.stderr_tail()}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _terminate)  # SIGTERM cleans up like Ctrl-C
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("bench interrupted; servers stopped, temp dir removed", file=sys.stderr)
        sys.exit(130)
