"""goalstream's ingest benchmark (``make bench``): gateway throughput against a bare aiohttp app,
what the fsynced spool costs against ``--no-spool``, and how long an event takes from POST to a
row in ClickHouse.

What runs, all on this machine, nothing mocked:

1. Baseline: ``bare_server.py``, a bare aiohttp app in its own process whose one POST
   handler reads the body, parses it with orjson and answers a small JSON 200.
2. Durability rounds: ``goalstream up`` (embedded tansu broker, faust processors, chDB), each
   stack in its own temp working dir (so its own fresh data dir) with a ``goalstream.toml``
   naming one workspace, on free ports; alternately with ``--no-spool`` (a 200 means the
   in-memory broker acknowledged it) and without (the default: a 200 means the records were
   fsynced into the write-ahead spool): no-spool, spool, no-spool, spool, ... (``ROUNDS``
   rounds). The machine is noisy (the same scenario varies by +-20% run to run), so the
   modes are interleaved and each figure is the median over the rounds. On each stack: (a) single events: POST
   /api/v1/event with one JSON object; (b) batches: POST /api/v1/event with a JSON array of
   100 events. After each scenario the bench waits until ClickHouse holds every acknowledged
   event (reported as the catch-up time), so the next scenario does not compete with a
   backlog. On spool stacks, ``/healthz`` (``backlog.spool.syncs``) is read before and after
   each scenario: records (one per event) and requests acknowledged per fsync show the group
   commit. The stacks run with ``--max-backlog 0``: a batch burst outruns ClickHouse and would
   otherwise reach the default bound (100000 unstored records) and be answered 503, which
   measures the bound, not the ingest path. The gateway rows of the main table are the spool
   (default) stacks' medians.
3. Visibility latency, on the last spool stack: 200 single events POSTed one at a time at
   20/s, each with its own customer_id and its client send time (epoch ms) as a property.
   Afterwards one ``goalstream sql`` query reads each row's ``inserted_at`` (the table's
   ``DEFAULT now64(3)``, set when the row was inserted, i.e. became visible); latency is
   ``inserted_at - sent``. Same host, same clock; resolution 1 ms.

The load generator is the same for baseline and gateway: a separate process (multiprocessing,
spawn) with one aiohttp ClientSession and a fixed number of concurrent connections, each
POSTing back to back for a warm-up and then a measured window. Requests/s counts 200s that
completed inside the window; p50/p99 are over those; every non-200 answer or client error
(warm-up included) counts as an error and is reported by kind. The load generator shares the
machine with the server under test (2 cores here), so absolute numbers are lower bounds; the
ratios (to the baseline, spool to no-spool), measured the same way, are the comparable figures.

Output: a table on stdout and the same as JSON in bench-results/latest.json (the spool
comparison under "durability").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
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

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GOALSTREAM = Path(sys.executable).parent / "goalstream"
RESULTS = ROOT / "bench-results" / "latest.json"

CONCURRENCY = 32
WARMUP_S = 2.0
DURATION_S = 10.0
BATCH_SIZE = 100
LATENCY_EVENTS = 200
LATENCY_RATE = 20.0  # events/s
CATCH_UP_TIMEOUT_S = 120.0

# The durability rounds: shorter windows than the baseline's, so that six stacks (each
# started, loaded twice, caught up and stopped) keep `make bench` within about six minutes;
# three rounds rather than two longer ones, because the noise is mostly from run to run and
# a median of three drops one outlier.
ROUNDS = 3
MODES = ("no-spool", "spool")  # the order within a round; the last spool stack is reused
ROUND_WARMUP_S = 2.0
ROUND_DURATION_S = 5.0
# 0 = no bound: batch bursts outrun ClickHouse and would otherwise reach the default bound
# (100000 unstored records) and be answered 503, which measures the bound, not the ingest path.
MAX_BACKLOG = 0
HEALTHZ_SETTLE_S = 5.0  # /healthz's backlog is refreshed on the stack's tick (0.2 s)

TOKEN = "tk_bench"
WORKSPACE = "bench"
CONFIG = f'[[workspaces]]\nname = "{WORKSPACE}"\ntraitly_token = "{TOKEN}"\n'
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

    def __init__(self, name: str, cmd: list[str], cwd: Path, ready_prefix: str):
        self.name = name
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
            self.cmd, cwd=self.cwd, stdout=subprocess.PIPE, stderr=open(self.err_path, "ab"), text=True, start_new_session=True
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


async def post_paced(url: str, n: int, rate: float, run_id: str) -> list[dict]:
    """POST ``n`` single events one at a time, starting one every 1/rate s; each carries its send time."""
    answers = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        t0 = time.monotonic()
        for i in range(n):
            await asyncio.sleep(max(0.0, t0 + i / rate - time.monotonic()))
            sent_ms = time.time() * 1000
            body = {"customer_id": f"lat-{run_id}-{i}", "name": "bench_latency", "bench_sent_ms": sent_ms, "bench_run": run_id}
            start = time.perf_counter()
            try:
                async with session.post(url, data=orjson.dumps(body), headers=HEADERS) as resp:
                    await resp.read()
                    status: int | str = resp.status
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status = type(exc).__name__
            answers.append({"status": status, "ack_ms": (time.perf_counter() - start) * 1000})
    return answers


def visibility(workdir: Path, url: str) -> dict:
    run_id = f"{os.getpid()}-{int(time.time())}"
    answers = post_paced(url, LATENCY_EVENTS, LATENCY_RATE, run_id)
    answers = asyncio.run(answers)
    errors = Counter(str(a["status"]) for a in answers if a["status"] != 200)
    acked = sum(1 for a in answers if a["status"] == 200)
    query = (
        "SELECT customer_id, any(JSONExtractFloat(properties, 'bench_sent_ms')), min(toUnixTimestamp64Milli(inserted_at)) "
        f"FROM events WHERE name = 'bench_latency' AND JSONExtractString(properties, 'bench_run') = '{run_id}' "
        "GROUP BY customer_id"
    )
    deadline = time.monotonic() + 60
    while True:
        lines = [ln for ln in goalstream_sql(workdir, query).splitlines() if ln]
        if len(lines) >= acked or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    latencies = sorted(float(ins) - float(sent) for _, sent, ins in (ln.split("\t") for ln in lines))
    acks = sorted(a["ack_ms"] for a in answers if a["status"] == 200)
    return {
        "events": LATENCY_EVENTS,
        "rate_per_s": LATENCY_RATE,
        "acknowledged": acked,
        "visible": len(latencies),
        "errors": sum(errors.values()) + (acked - len(latencies)),
        "error_kinds": dict(errors) | ({"not visible in 60s": acked - len(latencies)} if acked > len(latencies) else {}),
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else None,
        "ack_p50_ms": percentile(acks, 50),
        "ack_p99_ms": percentile(acks, 99),
    }


# -- durability: spool against --no-spool ---------------------------------------------------


def start_stack(tmp: Path, name: str, spool: bool, max_backlog: int | None) -> tuple[Server, Path]:
    """``goalstream up`` in a fresh working dir of its own (so a fresh ./var data dir)."""
    workdir = tmp / name
    workdir.mkdir()
    (workdir / "goalstream.toml").write_text(CONFIG)
    port, kafka_port = free_port(), free_port()
    cmd = [str(GOALSTREAM), "up", "--port", str(port), "--kafka-port", str(kafka_port)]
    if max_backlog is not None:
        cmd += ["--max-backlog", str(max_backlog)]
    if not spool:
        cmd.append("--no-spool")
    server = Server(name, cmd, workdir, "goalstream ready")
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


def render(report: dict) -> str:
    m = report["machine"]
    load = report["load"]
    base = report["baseline_requests_per_s"]
    lines = [
        f"goalstream ingest benchmark  {report['started']}",
        f"machine: nproc={m['nproc']}, Python {m['python']}, {m['platform']}",
        f"load: {load['concurrency']} connections, load generator on the same machine; baseline {load['warmup_s']:g} s warm-up + "
        f"{load['duration_s']:g} s measured; gateway rows: the spool (default) stacks of the durability rounds, median",
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
            f"{r['requests_per_s'] / base:.2f}x",
            f"{r['events_per_s'] / base:.2f}x",
        )
        for r in report["scenarios"]
    ]
    lines += table(head, rows)
    for r in report["scenarios"]:
        if r["error_kinds"]:
            lines.append(f"  {r['scenario']} errors: {r['error_kinds']}")
    lines += ["", *render_durability(report["durability"])]
    v = report["clickhouse_visibility"]
    lines += [
        "",
        f"ClickHouse visibility (POST sent -> row inserted), {v['visible']}/{v['events']} single events at {v['rate_per_s']:g}/s "
        "(last spool stack):",
        f"  p50 {fmt(v['p50_ms'])} ms   p99 {fmt(v['p99_ms'])} ms   max {fmt(v['max_ms'])} ms   errors {v['errors']}"
        + (f" {v['error_kinds']}" if v["error_kinds"] else ""),
        f"  (2xx at that rate: p50 {fmt(v['ack_p50_ms'], 2)} ms, p99 {fmt(v['ack_p99_ms'], 2)} ms)",
        "",
        "ClickHouse catch-up after each gateway scenario (median): "
        + "; ".join(
            f"{mode} " + ", ".join(f"{key} {report['durability']['modes'][mode][key]['catch_up_s']:.1f} s" for key in ("single", "batch"))
            for mode in MODES
        ),
        "stack starts: " + ", ".join(f"{run['mode']} {run['stack_start_s']:.1f} s" for run in report["durability"]["runs"]),
    ]
    if report["stack_exits"]:
        lines.append(f"stacks that did not exit 0 after SIGTERM: {report['stack_exits']}")
    lines.append(f"wall time {report['wall_s']:.0f} s; results in {RESULTS.relative_to(ROOT)}")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="goalstream's ingest benchmark (make bench)")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help=f"durability rounds, each one stack per mode (default {ROUNDS})")
    ap.add_argument("--warmup", type=float, default=ROUND_WARMUP_S, help="durability rounds: warm-up seconds per scenario")
    ap.add_argument("--duration", type=float, default=ROUND_DURATION_S, help="durability rounds: measured seconds per scenario")
    ap.add_argument("--max-backlog", type=int, default=MAX_BACKLOG, dest="max_backlog",
                    help=f"passed to goalstream up in both modes (default {MAX_BACKLOG}: no bound; -1: the stack's own default)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
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
    try:
        bare_port = free_port()
        bare = Server("bare", [sys.executable, str(HERE / "bare_server.py"), str(bare_port)], tmp, "bare ready").start(30)
        print(f"baseline: bare aiohttp at {bare.url} ...", file=sys.stderr, flush=True)
        baseline = row("baseline (bare aiohttp)", run_load(LoadSpec(f"{bare.url}/api/v1/event", single_bodies(), HEADERS)), 1)
        bare.stop(30)

        # Interleaved, so that the machine's drift and noise fall on both modes alike. The
        # last stack is a spool (default) one and stays up for the visibility scenario.
        runs: list[dict] = []
        workdir: Path | None = None
        for rnd in range(1, args.rounds + 1):
            for mode in MODES:
                stack, workdir = start_stack(tmp, f"{mode}-{rnd}", mode == "spool", args.max_backlog)
                runs.append(durability_run(stack, workdir, rnd, mode, args.warmup, args.duration))
                if not (rnd == args.rounds and mode == MODES[-1]):
                    stop_stack(stack, exits)
                    stack = None
        durability = durability_report(runs, args.max_backlog, args.warmup, args.duration)

        print("visibility latency ...", file=sys.stderr, flush=True)
        assert stack is not None and workdir is not None
        vis = visibility(workdir, f"{stack.url}/api/v1/event")
        stop_stack(stack, exits)
        stack = None

        def gateway_row(scenario: str, m: dict) -> dict:
            fields = ("requests_per_s", "events_per_s", "p50_ms", "p99_ms", "errors", "error_kinds")
            return {"scenario": scenario, **{f: m[f] for f in fields}}

        spool = durability["modes"]["spool"]
        report = {
            "started": started,
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "load": {"concurrency": CONCURRENCY, "warmup_s": WARMUP_S, "duration_s": DURATION_S, "batch_size": BATCH_SIZE,
                     "round_warmup_s": args.warmup, "round_duration_s": args.duration},
            "baseline_requests_per_s": baseline["requests_per_s"],
            "scenarios": [
                baseline,
                gateway_row("gateway single event", spool["single"]),
                gateway_row(f"gateway batch of {BATCH_SIZE}", spool["batch"]),
            ],
            "durability": durability,
            "clickhouse_visibility": vis,
            "catch_up_s": {key: spool[key]["catch_up_s"] for key in ("single", "batch")},
            "stack_start_s": runs[-1]["stack_start_s"],
            "stack_exits": exits,
            "wall_s": time.monotonic() - t_start,
        }
        base = report["baseline_requests_per_s"]
        for r in report["scenarios"]:
            r["requests_ratio"] = r["requests_per_s"] / base
            r["events_ratio"] = r["events_per_s"] / base
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(render(report))
        failed = (
            baseline["errors"]
            + sum(durability["modes"][mode][key]["errors"] for mode in MODES for key in ("single", "batch"))
            + vis["errors"]
            + len(exits)
        )
        return 1 if failed else 0
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
