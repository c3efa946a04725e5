"""The processors' sustained throughput: how fast ``goalstream worker`` drains a backlog that is
already on the broker, without goals and with a goal whose population is 5,000 active customers.

What runs, for each mode, on a fresh embedded broker (``ingest_gateway.broker.EmbeddedBroker``,
tansu, on a free port) and a fresh chDB data dir, nothing mocked:

1. Population: 5,000 customer upserts (``created_at`` 1 to 20 days ago, so inside a 30-day
   goal's window) are produced onto ``goalstream.customers``, and a first ``goalstream worker``
   stores them (and, with the goal, scores them: they enter the goal); it is stopped once
   ClickHouse holds all 5,000. So every customer has entered the goal before its events
   come, as a customer who signed up days ago would have. Both modes do this, so they
   differ only in the config's goal.
2. Backlog: ``--drain-events`` events (default 300,000; five names spread round-robin over
   the 5,000 customers: the goal's two actions and three other events, never the target
   event) are produced onto ``goalstream.events`` with ``schemas.kafka.RecordProducer``, the
   gateway's own encoding, key and partitioner (``schemas.model.event``, Avro via
   ``schemas.codec``). All are acknowledged before the timed worker starts; the bytes are
   encoded once and produced alike in every run.
3. Timed drain: a second ``goalstream worker --kafka <broker> --clickhouse chdb:///<dir>``
   (same consumer group: it resumes on the customers topic where the first one committed) is
   spawned, no sooner than 12 s after the first one stopped (the fill counts towards it): tansu
   keeps a stopped member in the group until its session times out, and a worker joining
   before that waits for it, which is the set-up's cost, not the drain's (see ``SETTLE_S``).
   It runs as its own process holding the chDB lock, so nothing else can query that
   ClickHouse while it runs. The bench therefore watches ClickHouse's own storage: it
   sums the row counts (``count.txt``) of the ``events`` table's active parts on disk every
   0.1 s (a part is written under ``tmp_insert_*`` and renamed into place when the insert
   commits, which is when queries see it; parts a merge replaced are left out by their block
   ranges). When they hold every event the worker is stopped (SIGTERM) and the data dir is
   queried (``goalstream sql --clickhouse chdb:///<dir>``): ``count()`` and
   ``uniqExact(message_id)`` must equal the backlog, and ``max(inserted_at)`` (the column's
   ``DEFAULT now64(3)``, stamped by ClickHouse when the last insert ran) is when the drain
   ended. Same host, same clock as the bench's ``time.time()``; resolution 1 ms.

Figures (events/s = backlog / seconds): from the worker's spawn to the last insert (the
headline: it includes process start, ClickHouse open and migrations, the consumer group
join); from its ready line (``goalstream worker ready``) to the last insert; first to last
insert (the processors' own pace once data flows). With the goal, also when the last score
row (``propensity_scores.scored_at``) was written, and how many. The on-disk poll's
detection time is kept in the JSON as a cross-check (it can only be later than the last
insert, by the poll interval and the part's commit).

The drain runs the worker with the stack's defaults (propensity threshold included). The
modes alternate (none, goal, none, goal, ...) over ``--drain-rounds`` rounds (machine noise
is +-20%), and each figure is the median over its rounds. It measures from outside only
(Kafka in, ClickHouse out, the worker's ready line), so it holds for any processor design.

Run alone for development: ``python tests/bench/drain.py --drain-events 30000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ingest_gateway.broker import EmbeddedBroker
from schemas import model
from schemas.kafka import RecordProducer, encode_records, ensure_topics
from schemas.settings import WorkerSettings

GOALSTREAM = Path(sys.executable).parent / "goalstream"

WORKSPACE = "bench"
TOKEN = "tk_bench"
GOAL = "30-day Conversion"
GOAL_ACTIONS = ("Style Widget", "Invite Teammate")
OTHER_EVENTS = ("page_view", "login", "search")  # never the target event ("purchase")
CUSTOMERS = 5000
DRAIN_EVENTS = 300_000
DRAIN_ROUNDS = 1
MODES = ("no goals", "goal")
PARTITIONS = 4  # GOALSTREAM_TOPIC_PARTITIONS's default: the topics a stack would create
POLL_S = 0.1
WORKER_READY_S = 120.0
POPULATION_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 600.0
PRODUCE_CHUNK = 10_000
# tansu keeps a stopped worker in its consumer group until the member's session times out
# (DescribeGroups goes on listing it, so there is no signal to wait for), and a worker that
# joins before then starts about 11 s later than otherwise (measured: ready in 20.7 s when
# spawned 0.5 s after the population worker's stop, 8 to 11 s when 7 to 30 s after). That
# is the population phase's cost, not the drain's: the timed worker is spawned no sooner
# than the session timeout (GOALSTREAM_SESSION_TIMEOUT_S, not set here) and 2 s after it.
SETTLE_S = WorkerSettings.model_fields["session_timeout_s"].default + 2.0
TARGETS = {"no goals": 45_000, "goal": 30_000}  # events/s, issue 12


def config_text(goal: bool) -> str:
    text = f'[[workspaces]]\nname = "{WORKSPACE}"\ntraitly_token = "{TOKEN}"\n'
    if goal:
        text += (
            f'\n[[goals]]\nworkspace = "{WORKSPACE}"\nname = "{GOAL}"\nwindow_days = 30\ntarget_event = "purchase"\n'
            + "".join(
                f'[[goals.actions]]\nevent_name = "{a}"\nmessage_plaintext = "Try {a}"\nmessage_html = "<p>Try {a}</p>"\n'
                for a in GOAL_ACTIONS
            )
        )
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the backlog, encoded once ------------------------------------------------------------

Entry = tuple[str, bytes, bytes, list[tuple[str, bytes]]]


def _entries(records: list[model.Record]) -> list[Entry]:
    return [(r.topic, r.key, value, list(headers)) for r, value, headers in encode_records(records)]


def population(n_customers: int, seed: int = 12) -> list[Entry]:
    rng = random.Random(seed)
    now = model.now_ms()
    day = 86_400_000
    return _entries([
        model.customer_upsert(
            workspace=WORKSPACE, customer_id=f"c-{i}", source="bench",
            attributes={"name": f"Customer {i}", "email": f"c{i}@example.com", "plan": rng.choice(("free", "pro", "team"))},
            # 1 to 20 days ago: inside the goal's 30-day window for the whole bench.
            created_at_ms=now - rng.randint(1 * day, 20 * day),
        )
        for i in range(n_customers)
    ])


def backlog(n_events: int, n_customers: int) -> list[Entry]:
    names = GOAL_ACTIONS + OTHER_EVENTS
    now = model.now_ms()
    return _entries([
        model.event(
            workspace=WORKSPACE, customer_id=f"c-{i % n_customers}", name=names[i % len(names)], source="bench",
            properties={"page": "/pricing", "value": i}, timestamp_ms=now - (n_events - i),
        )
        for i in range(n_events)
    ])


async def produce(bootstrap: str, entries: list[Entry]) -> float:
    """Every entry acknowledged by the broker; returns the seconds it took."""
    producer = RecordProducer(bootstrap, idempotence=False, timeout_s=120.0, linger_ms=5)
    await producer.start()
    t0 = time.monotonic()
    try:
        for i in range(0, len(entries), PRODUCE_CHUNK):
            await producer.send_encoded(entries[i : i + PRODUCE_CHUNK])
    finally:
        await producer.stop()
    return time.monotonic() - t0


# -- ClickHouse, read from its files while the worker holds the lock -----------------------

_PART = re.compile(r"^([^_]+)_(\d+)_(\d+)_(\d+)(?:_(\d+))?$")


def table_dir(clickhouse_dir: Path, table: str) -> Path | None:
    """The table's data directory (an Atomic database links data/<db>/<table> into store/)."""
    link = clickhouse_dir / "data" / "default" / table
    return link.resolve() if link.exists() else None


def rows_on_disk(clickhouse_dir: Path, table: str) -> int:
    """Rows in the table's active parts. A merge leaves the parts it replaced on disk for a
    while: a part whose block range another part of its partition covers is not counted."""
    d = table_dir(clickhouse_dir, table)
    if d is None:
        return 0
    parts = []
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return 0
    for name in names:
        m = _PART.match(name)
        if m:
            parts.append((name, m[1], int(m[2]), int(m[3]), (int(m[4]), int(m[5] or 0))))
    total = 0
    for name, part, lo, hi, version in parts:
        # Covered: same partition, a block range containing this one, and a newer level
        # (a merge) or mutation; such a part is on its way out.
        if any(p == part and l2 <= lo and hi <= h2 and (l2, h2, v2) != (lo, hi, version) and v2 >= version
               for _, p, l2, h2, v2 in parts):
            continue
        try:
            total += int((d / name / "count.txt").read_text())
        except (FileNotFoundError, ValueError):
            pass  # removed or being removed between the listing and the read
    return total


def sql(data_dir: Path, query: str) -> list[list[str]]:
    """One query on the worker's chDB once the worker is stopped (it opens the dir itself)."""
    out = subprocess.run(
        [str(GOALSTREAM), "sql", query, "--format", "TSV", "--data-dir", str(data_dir),
         "--clickhouse", f"chdb://{(data_dir / 'clickhouse').resolve()}", "--config", str(data_dir.parent / "goalstream.toml")],
        capture_output=True, text=True, timeout=180,
    )
    if out.returncode != 0:
        raise RuntimeError(f"goalstream sql failed: {out.stderr.strip()[-2000:]}")
    return [line.split("\t") for line in out.stdout.splitlines() if line]


# -- the worker -----------------------------------------------------------------------------


class Worker:
    """``goalstream worker`` as a subprocess of its own session; ``spawned``/``ready`` are wall times."""

    def __init__(self, workdir: Path, bootstrap: str, name: str):
        self.workdir, self.bootstrap, self.name = workdir, bootstrap, name
        self.data_dir = workdir / "var"
        self.err_path = workdir / f"{name}.err"
        self.proc: asyncio.subprocess.Process | None = None
        self.spawned = self.ready = 0.0
        self._pump: asyncio.Task | None = None

    async def start(self) -> "Worker":
        cmd = [
            str(GOALSTREAM), "worker", "--config", str(self.workdir / "goalstream.toml"), "--data-dir", str(self.data_dir),
            "--kafka", self.bootstrap, "--clickhouse", f"chdb://{(self.data_dir / 'clickhouse').resolve()}",
        ]
        with open(self.err_path, "ab") as err:
            self.spawned = time.time()
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, cwd=self.workdir, stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(WORKER_READY_S):
                while line := await self.proc.stdout.readline():
                    if line.startswith(b"goalstream worker ready"):
                        self.ready = time.time()
                        # Drain stdout from now on, so a chatty worker never blocks on a full pipe.
                        self._pump = asyncio.get_running_loop().create_task(self.proc.stdout.read())
                        return self
        except TimeoutError:
            pass
        await self.stop()
        raise RuntimeError(f"{self.name}: no ready line in {WORKER_READY_S:.0f}s:\n{self.stderr_tail()}")

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def stop(self, timeout: float = 90.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                print(f"{self.name} did not stop in {timeout:.0f}s after SIGTERM; killing it", file=sys.stderr)
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode


async def wait_rows(worker: Worker, table: str, expected: int, timeout: float) -> float:
    """Wall time at which the table's active parts first held ``expected`` rows."""
    ch = worker.data_dir / "clickhouse"
    deadline = time.monotonic() + timeout
    while (n := rows_on_disk(ch, table)) < expected:
        if not worker.alive():
            raise RuntimeError(f"{worker.name} exited with {worker.proc.returncode} at {n}/{expected} {table}:\n{worker.stderr_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{worker.name}: {table} holds {n} of {expected} rows after {timeout:.0f}s")
        await asyncio.sleep(POLL_S)
    return time.time()


# -- one drain ------------------------------------------------------------------------------


async def drain_run(tmp: Path, mode: str, rnd: int, people: list[Entry], events: list[Entry]) -> dict:
    workdir = tmp / f"drain-{mode.replace(' ', '-')}-{rnd}"
    workdir.mkdir()
    (workdir / "goalstream.toml").write_text(config_text(mode == "goal"))
    broker = EmbeddedBroker(free_port(), workdir / "broker")
    await broker.start()
    exits: dict[str, int] = {}
    try:
        await ensure_topics(broker.bootstrap, PARTITIONS)
        await produce(broker.bootstrap, people)
        first = await Worker(workdir, broker.bootstrap, f"drain-{mode}-{rnd}-population").start()
        try:
            await wait_rows(first, "customers", len(people), POPULATION_TIMEOUT_S)
        finally:
            if (code := await first.stop()) not in (0, None):
                exits[first.name] = code
        stopped = time.monotonic()
        fill_s = await produce(broker.bootstrap, events)
        await asyncio.sleep(max(0.0, stopped + SETTLE_S - time.monotonic()))
        print(f"drain {mode}, round {rnd}: {len(events):,} events on the broker in {fill_s:.1f} s; worker starting ...",
              file=sys.stderr, flush=True)
        worker = await Worker(workdir, broker.bootstrap, f"drain-{mode}-{rnd}").start()
        try:
            detected = await wait_rows(worker, "events", len(events), DRAIN_TIMEOUT_S)
        finally:
            if (code := await worker.stop()) not in (0, None):
                exits[worker.name] = code
    finally:
        await broker.stop()
    (count, unique, first_ms, last_ms), = sql(
        worker.data_dir,
        "SELECT count(), uniqExact(message_id), toUnixTimestamp64Milli(min(inserted_at)), "
        f"toUnixTimestamp64Milli(max(inserted_at)) FROM events WHERE workspace = '{WORKSPACE}'",
    )
    count, unique, first_ins, last_ins = int(count), int(unique), int(first_ms) / 1000, int(last_ms) / 1000
    n = len(events)
    run = {
        "mode": mode,
        "round": rnd,
        "events": n,
        "customers": len(people),
        "fill_s": fill_s,
        "stored": count,
        "stored_unique": unique,
        "worker_ready_s": worker.ready - worker.spawned,
        "population_worker_ready_s": first.ready - first.spawned,
        "drain_from_spawn_s": last_ins - worker.spawned,
        "drain_from_ready_s": last_ins - worker.ready,
        "first_to_last_insert_s": last_ins - first_ins,
        "detected_from_spawn_s": detected - worker.spawned,
        "exits": exits,
    }
    run["events_per_s"] = n / run["drain_from_spawn_s"]
    run["events_per_s_from_ready"] = n / run["drain_from_ready_s"]
    run["events_per_s_inserting"] = n / run["first_to_last_insert_s"] if run["first_to_last_insert_s"] > 0 else None
    if mode == "goal":
        (scores, scored_customers, last_score_ms), = sql(
            worker.data_dir,
            "SELECT count(), uniqExact(customer_id), toUnixTimestamp64Milli(max(scored_at)) FROM propensity_scores "
            f"WHERE workspace = '{WORKSPACE}'",
        )
        run["scores"], run["scored_customers"] = int(scores), int(scored_customers)
        run["last_score_from_spawn_s"] = int(last_score_ms) / 1000 - worker.spawned if int(scores) else None
    if count != n or unique != n:
        run["error"] = f"ClickHouse holds {count} rows ({unique} distinct message ids) of {n} events"
    print(f"drain {mode}, round {rnd}: {run['events_per_s']:,.0f} events/s from spawn "
          f"({run['drain_from_spawn_s']:.1f} s; ready in {run['worker_ready_s']:.1f} s)", file=sys.stderr, flush=True)
    return run


def summarize(runs: list[dict]) -> dict:
    out = {}
    for mode in MODES:
        rows = [r for r in runs if r["mode"] == mode]
        if not rows:
            continue

        def med(field: str) -> float | None:
            values = [r[field] for r in rows if r.get(field) is not None]
            return statistics.median(values) if values else None

        out[mode] = {
            "runs": len(rows),
            "events_per_s": med("events_per_s"),
            "events_per_s_from_ready": med("events_per_s_from_ready"),
            "events_per_s_inserting": med("events_per_s_inserting"),
            "drain_from_spawn_s": med("drain_from_spawn_s"),
            "worker_ready_s": med("worker_ready_s"),
            "last_score_from_spawn_s": med("last_score_from_spawn_s"),
            "events_per_s_by_round": [r["events_per_s"] for r in rows],
            "target_events_per_s": TARGETS[mode],
            "errors": [r["error"] for r in rows if "error" in r] + [f"{k} exited {v}" for r in rows for k, v in r["exits"].items()],
        }
    return out


async def run_drains(tmp: Path, n_events: int, rounds: int, n_customers: int = CUSTOMERS) -> dict:
    t0 = time.monotonic()
    people, events = population(n_customers), backlog(n_events, n_customers)
    print(f"drain: {n_events:,} events and {n_customers:,} customers encoded in {time.monotonic() - t0:.1f} s",
          file=sys.stderr, flush=True)
    runs = [await drain_run(tmp, mode, rnd, people, events) for rnd in range(1, rounds + 1) for mode in MODES]
    return {"events": n_events, "customers": n_customers, "rounds": rounds, "modes": summarize(runs), "runs": runs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the processors' drain throughput (part of make bench)")
    ap.add_argument("--drain-events", type=int, default=DRAIN_EVENTS, dest="events")
    ap.add_argument("--drain-rounds", type=int, default=DRAIN_ROUNDS, dest="rounds")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="goalstream-drain-"))
    try:
        result = asyncio.run(run_drains(tmp, args.events, args.rounds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result["modes"], indent=2))
    return 1 if any(m["errors"] for m in result["modes"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
