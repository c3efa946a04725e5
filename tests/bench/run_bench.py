"""goalstream's ingest benchmark (``make bench``): gateway throughput against a bare aiohttp app,
and how long an event takes from POST to a row in ClickHouse.

What runs, all on this machine, nothing mocked:

1. Baseline: ``bare_server.py``, a bare aiohttp app in its own process whose one POST
   handler reads the body, parses it with orjson and answers a small JSON 200.
2. The gateway: ``goalstream up`` (embedded tansu broker, faust processors, chDB) in a
   temp working dir with a ``goalstream.toml`` naming one workspace, on free ports.
   (a) single events: POST /api/v1/event with one JSON object, each 200 meaning the broker
   acknowledged it; (b) batches: POST /api/v1/event with a JSON array of 100 events.
   After each scenario the bench waits until ClickHouse holds every acknowledged event
   (reported as the catch-up time), so the next scenario does not compete with a backlog.
3. Visibility latency: 200 single events POSTed one at a time at 20/s, each with its own
   customer_id and its client send time (epoch ms) as a property. Afterwards one
   ``goalstream sql`` query reads each row's ``inserted_at`` (the table's ``DEFAULT
   now64(3)``, set when the row was inserted, i.e. became visible); latency is
   ``inserted_at - sent``. Same host, same clock; resolution 1 ms.

The load generator is the same for baseline and gateway: a separate process (multiprocessing,
spawn) with one aiohttp ClientSession and a fixed number of concurrent connections, each
POSTing back to back for a warm-up and then a measured window. Requests/s counts 200s that
completed inside the window; p50/p99 are over those; every non-200 answer or client error
(warm-up included) counts as an error and is reported by kind. The load generator shares the
machine with the server under test (2 cores here), so absolute numbers are lower bounds; the
ratio to the baseline, measured the same way, is the comparable figure.

Output: a table on stdout and the same as JSON in bench-results/latest.json.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
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
    rps = result["ok"] / DURATION_S
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


# -- report -------------------------------------------------------------------------------


def fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def render(report: dict) -> str:
    m = report["machine"]
    base = report["baseline_requests_per_s"]
    lines = [
        f"goalstream ingest benchmark  {report['started']}",
        f"machine: nproc={m['nproc']}, Python {m['python']}, {m['platform']}",
        f"load: {report['load']['concurrency']} connections, {report['load']['warmup_s']:g} s warm-up + "
        f"{report['load']['duration_s']:g} s measured, load generator on the same machine",
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
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for i, cells in enumerate([head, *rows]):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for r in report["scenarios"]:
        if r["error_kinds"]:
            lines.append(f"  {r['scenario']} errors: {r['error_kinds']}")
    v = report["clickhouse_visibility"]
    lines += [
        "",
        f"ClickHouse visibility (POST sent -> row inserted), {v['visible']}/{v['events']} single events at {v['rate_per_s']:g}/s:",
        f"  p50 {fmt(v['p50_ms'])} ms   p99 {fmt(v['p99_ms'])} ms   max {fmt(v['max_ms'])} ms   errors {v['errors']}"
        + (f" {v['error_kinds']}" if v["error_kinds"] else ""),
        f"  (broker ack at that rate: p50 {fmt(v['ack_p50_ms'], 2)} ms, p99 {fmt(v['ack_p99_ms'], 2)} ms)",
        "",
        "ClickHouse catch-up after each gateway scenario: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in report["catch_up_s"].items()),
        f"stack start {report['stack_start_s']:.1f} s; results in {RESULTS.relative_to(ROOT)}",
    ]
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------


def main() -> int:
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    tmp = Path(tempfile.mkdtemp(prefix="goalstream-bench-"))
    bare = stack = None
    try:
        bare_port = free_port()
        bare = Server("bare", [sys.executable, str(HERE / "bare_server.py"), str(bare_port)], tmp, "bare ready").start(30)
        print(f"baseline: bare aiohttp at {bare.url} ...", file=sys.stderr, flush=True)
        baseline = row("baseline (bare aiohttp)", run_load(LoadSpec(f"{bare.url}/api/v1/event", single_bodies(), HEADERS)), 1)
        bare.stop(30)

        workdir = tmp / "stack"
        workdir.mkdir()
        (workdir / "goalstream.toml").write_text(CONFIG)
        port, kafka_port = free_port(), free_port()
        cmd = [str(GOALSTREAM), "up", "--port", str(port), "--kafka-port", str(kafka_port)]
        stack = Server("stack", cmd, workdir, "goalstream ready").start(120)
        url = f"{stack.url}/api/v1/event"
        print(f"gateway: goalstream up at {stack.url} (ready in {stack.started_in_s:.1f} s) ...", file=sys.stderr, flush=True)

        catch_up: dict[str, float] = {}
        acknowledged = 0
        single = run_load(LoadSpec(url, single_bodies(), HEADERS))
        acknowledged += single["acknowledged"]
        catch_up["single"] = wait_stored(workdir, acknowledged)
        print("gateway: batches ...", file=sys.stderr, flush=True)
        batch = run_load(LoadSpec(url, batch_bodies(), HEADERS))
        acknowledged += batch["acknowledged"] * BATCH_SIZE
        catch_up["batch"] = wait_stored(workdir, acknowledged)
        print("visibility latency ...", file=sys.stderr, flush=True)
        vis = visibility(workdir, url)

        report = {
            "started": started,
            "machine": {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "load": {"concurrency": CONCURRENCY, "warmup_s": WARMUP_S, "duration_s": DURATION_S, "batch_size": BATCH_SIZE},
            "baseline_requests_per_s": baseline["requests_per_s"],
            "scenarios": [
                baseline,
                row("gateway single event", single, 1),
                row(f"gateway batch of {BATCH_SIZE}", batch, BATCH_SIZE),
            ],
            "clickhouse_visibility": vis,
            "catch_up_s": catch_up,
            "stack_start_s": stack.started_in_s,
        }
        base = report["baseline_requests_per_s"]
        for r in report["scenarios"]:
            r["requests_ratio"] = r["requests_per_s"] / base
            r["events_ratio"] = r["events_per_s"] / base
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(render(report))
        failed = sum(r["errors"] for r in report["scenarios"]) + vis["errors"]
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
