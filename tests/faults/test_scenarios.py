"""The fault scenarios: mixed load over the five dialects while a process of the stack dies.

Each test starts its own ``goalstream up`` (in its own process group), runs the load
(``load.py``), applies its fault from outside as a supervisor or the kernel would, then
holds what ClickHouse stored against what was acknowledged (``checks.py``) and adds one
row to the summary table. What must hold everywhere: nothing acknowledged is lost,
nothing is duplicated under FINAL, no 5xx but 503, and every 503 carries Retry-After.

- baseline: the mixed load and nothing else.
- broker-sigkill: SIGKILL of the tansu child mid-load; /healthz must say so within 1 s,
  the stack must stay up (same pid) and writers get 2xx again within 15 s.
- front-sigkill: two HTTP fronts, one SIGKILLed mid-load; the other keeps answering 2xx, the
  stack restarts the dead one, and nothing acknowledged is lost.
- scorer-sigkill: with a goal, the scoring process SIGKILLed mid-load; ingestion carries on,
  the stack restarts it, scoring resumes.
- powercut-backlog: a batch burst until /healthz reports a backlog of 30,000 unstored
  records, then SIGKILL of the process group and the broker; restart on the same data dir.
- sigterm-drain: SIGTERM mid-burst; the port answers 503 + Retry-After until the drain
  ended, the process exits 0, and everything acknowledged is stored.
- replay-raw: every record on ``goalstream.events`` produced again unchanged; nothing new
  under FINAL.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.error
from collections import Counter
import urllib.request

import aiohttp
import pytest

from schemas import topics
from tests.faults.checks import REPORT, Row, fid_rows, tally, wait_stored
from tests.faults.load import NO_CLIENT_ID, HealthWatch, Ledger, Load, Mix, new_run

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DETECT_WITHIN_S = 1.0  # broker death -> /healthz says so
RECOVER_WITHIN_S = 15.0  # broker death -> writers get 2xx again
SLOW_PROCESSORS = {"GOALSTREAM_BATCH_MAX": "100"}
BACKLOG_TARGET = 30_000
BACKLOG_WITHIN_S = 20.0
# The port may close this long before the process exits (the parts' close after the drain).
CLOSE_BEFORE_EXIT_S = 3.0
PROCESSORS_GROUP = "goalstream-processors"  # the processors' consumer group (GOALSTREAM_CONSUMER_GROUP's default)


def counts(stack, ledger: Ledger) -> tuple:
    """(rows per fid, rows per fid under FINAL, a note): through ``goalstream sql``; a stack
    that is alive but does not answer it is killed first, so its data dir can be read."""
    try:
        return fid_rows(stack, ledger.run, False), fid_rows(stack, ledger.run, True), None
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        if not stack.running():
            raise
        stack.power_cut()
        note = f"alive but not answering goalstream sql ({str(exc).strip().splitlines()[-1][:120]}): killed to read its data dir"
        return fid_rows(stack, ledger.run, False), fid_rows(stack, ledger.run, True), note


def finish(scenario: str, stack, ledger: Ledger, started: float, notes: list[str], failures: list[str],
           recovery: float | None | str = "n/a") -> Row:
    raw, final, note = counts(stack, ledger)
    row = tally(scenario, ledger, raw, final)
    row.recovery_s = recovery
    row.notes = notes + ([note] if note else []) + [log_note(stack)]
    row.failures = failures
    row.seconds = time.monotonic() - started
    return REPORT.add(row)


def log_note(stack) -> str:
    """What the stack's stderr (every start on this work dir) says went wrong, in counts."""
    lines = [line for p in sorted(stack.workdir.glob("stack-*.err")) for line in p.read_text(errors="replace").splitlines()]
    errors = sum(1 for line in lines if " ERROR " in line)
    tracebacks = sum(1 for line in lines if line.startswith("Traceback"))
    return f"stack log: {len(lines)} lines, {errors} ERROR, {tracebacks} tracebacks"


def verdict(row: Row) -> None:
    problems = row.problems()
    assert not problems, f"{row.scenario}: " + "; ".join(problems)


def rate(ledger: Ledger) -> str:
    ok = [a for a in ledger.answers if a.status is not None and 200 <= a.status < 300]
    if not ok:
        return "no 2xx"
    span = max(a.ended for a in ok) - min(a.started for a in ledger.answers)
    return f"{len(ledger.acked) / span:,.0f} events/s ({len(ok) / span:,.0f} requests/s) acknowledged"


def statuses(ledger: Ledger, since: float | None = None, until: float | None = None) -> str:
    c: dict[str, int] = {}
    for a in ledger.writes(since, until):
        key = str(a.status) if a.status is not None else a.error
        c[key] = c.get(key, 0) + 1
    return " ".join(f"{k}:{v}" for k, v in sorted(c.items()))


async def stored_now(session: aiohttp.ClientSession, url: str, token: str) -> int | None:
    """Rows in ``events`` now, through the admin API with the run file's token (what
    ``goalstream sql`` does), without blocking the load's event loop."""
    try:
        async with session.post(f"{url}/admin/v1/sql?format=TSV", data="SELECT count() FROM events",
                                headers={"Authorization": f"Bearer {token}"}) as r:
            return int((await r.text()).strip()) if r.status == 200 else None
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return None


def healthz(stack) -> str | None:
    """One ``GET /healthz``: "200", or the status and components when degraded; None: no
    answer within 3 s."""
    try:
        with urllib.request.urlopen(f"{stack.url}/healthz", timeout=3) as r:
            return str(r.status)
    except urllib.error.HTTPError as exc:
        try:
            return f"{exc.code} {json.loads(exc.read()).get('components')}"
        except ValueError:
            return str(exc.code)
    except (OSError, ValueError):
        return None


def exit_text(rc: int | None) -> str:
    if rc is None:
        return "still running"
    return f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit {rc}"


# -- baseline --------------------------------------------------------------------------------


def test_baseline(stacks):
    t0 = time.monotonic()
    stack = stacks()
    ledger = Ledger(new_run())
    asyncio.run(Load(stack.url, Mix(ledger.run, Mix.MIXED), ledger, seconds=10).run())
    waited, complete = wait_stored(stack, ledger, timeout=60)
    resends = [a for a in ledger.answers if a.kind == "resend"]
    no_id = sum(1 for a in resends if a.endpoint.split()[0] in NO_CLIENT_ID)
    notes = [f"{rate(ledger)}; statuses {statuses(ledger)}; "
             + (f"all stored {waited:.1f} s after the load" if complete else f"not all stored after {waited:.0f} s"),
             f"{len(resends)} resends ({no_id} to trigger.ly and Retainly, which take no client id: stored again by design)",
             "requests: " + ", ".join(f"{e} {n}" for e, n in sorted(Counter(a.endpoint for a in ledger.answers).items()))]
    verdict(finish("baseline", stack, ledger, t0, notes, []))


# -- a. SIGKILL of the broker child mid-load -------------------------------------------------


def test_broker_sigkill_mid_load(stacks):
    t0 = time.monotonic()
    stack = stacks()
    ledger = Ledger(new_run())
    watch = HealthWatch(stack.url)
    fault: dict = {}

    async def scenario() -> None:
        load = Load(stack.url, Mix(ledger.run, Mix.MIXED), ledger, seconds=60)
        tasks = [asyncio.create_task(load.run()), asyncio.create_task(watch.run())]
        await asyncio.sleep(4.0)
        fault["pid"], fault["source"] = stack.broker_pid()
        assert fault["pid"], "no tansu child found (neither broker_pid in stack.json nor a child named tansu)"
        fault["t"] = time.monotonic()
        os.kill(fault["pid"], signal.SIGKILL)
        # Until writers have had only 2xx for 3 s after an outage (and /healthz says
        # "embedded"), or 18 s after the kill.
        while time.monotonic() - fault["t"] < RECOVER_WITHIN_S + 3:
            await asyncio.sleep(0.25)
            failed = [a.started for a in ledger.writes(since=fault["t"]) if a.status is None or a.status >= 500]
            healthy = watch.samples and watch.samples[-1].broker == "embedded"
            if failed and healthy and time.monotonic() - max(failed) >= 3.0 and ledger.recovery(fault["t"]) is not None:
                break
        load.stop.set()
        watch.stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    t_kill = fault["t"]
    notes, failures = [], []
    down = watch.first(t_kill, lambda s: s.status is not None and s.broker != "embedded")
    silent = watch.first(t_kill, lambda s: s.status is None)
    detect = down.received - t_kill if down else None
    after = ledger.writes(since=t_kill)
    r503 = [a.ended for a in after if a.status == 503]
    window = f"{max(r503) - min(r503):.1f} s ({len(r503)} answers, first {min(r503) - t_kill:.1f} s after the kill)" if r503 else "none"
    survived = stack.running()
    health = healthz(stack) if survived else None
    new_broker, _ = stack.broker_pid() if survived else (None, "")
    notes.append(f"SIGKILL of tansu pid {fault['pid']} (from {fault['source']}) 4 s into the load")
    notes.append(
        f"/healthz: broker != embedded {f'after {detect:.2f} s' if detect is not None else 'never reported'}; "
        f"states {' > '.join(watch.states(t_kill))}"
        + (f"; first unanswered poll {silent.sent - t_kill:.1f} s after the kill" if silent else "")
    )
    notes.append(f"writers after the kill: {statuses(ledger, since=t_kill)}; 503 window {window}")
    if survived and health is not None:
        notes.append(f"stack still running (pid {stack.pid}), broker pid now {new_broker}; /healthz {health}")
        # No early give-up: after a broker restart the processors take a while to start
        # (about 20 s here, storing nothing meanwhile), and the stack says so in /healthz.
        stored_s, complete = wait_stored(stack, ledger, timeout=75, quiet=75)
        notes.append(f"everything acknowledged stored {stored_s:.1f} s after the load" if complete
                     else f"not everything acknowledged stored after waiting {stored_s:.0f} s; /healthz then {healthz(stack)}")
    elif survived:
        notes.append(f"stack pid {stack.pid} still alive but /healthz does not answer")
        failures.append("goalstream up is wedged after the broker's death (alive, not answering)")
    else:
        notes.append(f"goalstream up: {exit_text(stack.proc.returncode)}")
        failures.append(f"goalstream up did not survive the broker's death ({exit_text(stack.proc.returncode)})")
    recovery = ledger.recovery(t_kill)
    if detect is None or detect > DETECT_WITHIN_S:
        failures.append(f"/healthz reported the broker down after {'never' if detect is None else f'{detect:.2f} s'} (limit {DETECT_WITHIN_S} s)")
    if recovery is None or recovery > RECOVER_WITHIN_S:
        failures.append(f"writers got 2xx again after {'never' if recovery is None else f'{recovery:.1f} s'} (limit {RECOVER_WITHIN_S:.0f} s)")
    verdict(finish("broker-sigkill", stack, ledger, t0, notes, failures, recovery))


# -- a2. SIGKILL of an HTTP front mid-load ---------------------------------------------------


def test_front_sigkill_mid_load(stacks):
    """Two fronts; one is SIGKILLed 4 s into the mixed load. What it had in flight was never
    acknowledged; the other front keeps serving, the stack restarts the dead one, and every
    2xx is stored."""
    t0 = time.monotonic()
    stack = stacks(extra_args=["--gateway-processes", "2"])
    ledger = Ledger(new_run())
    fault: dict = {}

    async def scenario() -> None:
        load = Load(stack.url, Mix(ledger.run, Mix.MIXED), ledger, seconds=14)
        task = asyncio.create_task(load.run())
        await asyncio.sleep(4.0)
        fault["pids"] = stack.run_info().get("front_pids") or []
        assert len(fault["pids"]) == 2, f"the run file names {fault['pids']} as the fronts"
        fault["t"] = time.monotonic()
        os.kill(fault["pids"][0], signal.SIGKILL)
        await task

    asyncio.run(scenario())
    t_kill = fault["t"]
    notes, failures = [], []
    after = ledger.writes(since=t_kill)
    in_flight = [a for a in ledger.answers if a.status is None and a.started < t_kill <= a.ended]
    ok_soon = [a for a in after if a.status is not None and 200 <= a.status < 300 and a.ended < t_kill + 2.0]
    now = stack.run_info().get("front_pids") or []
    notes.append(f"SIGKILL of front pid {fault['pids'][0]} 4 s into the load (fronts {fault['pids']}); fronts now {now}")
    notes.append(f"writers after the kill: {statuses(ledger, since=t_kill)}; {len(in_flight)} in flight at the kill went unanswered; "
                 f"{len(ok_soon)} 2xx within 2 s of it")
    if not stack.running():
        failures.append(f"goalstream up did not survive a front's death ({exit_text(stack.proc.returncode)})")
    if fault["pids"][0] in now or len(now) != 2:
        failures.append(f"the killed front was not replaced (fronts now {now})")
    if not ok_soon:
        failures.append("no 2xx within 2 s of the kill: the other front did not keep serving")
    stored_s, complete = wait_stored(stack, ledger, timeout=60)
    notes.append(f"everything acknowledged stored {stored_s:.1f} s after the load" if complete
                 else f"not everything acknowledged stored after {stored_s:.0f} s")
    verdict(finish("front-sigkill", stack, ledger, t0, notes, failures, ledger.recovery(t_kill)))


# -- a3. SIGKILL of the scoring process mid-load ---------------------------------------------

GOALS = "".join(
    f'\n[[goals]]\nworkspace = "{ws}"\nname = "conv"\nwindow_days = 30\ntarget_event = "purchase"\n' for ws in ("acme", "globex")
)


def test_scorer_sigkill_mid_load(stacks):
    """A goal in each workspace, so the scoring stage runs in a process of its own; it is
    SIGKILLed 4 s into the mixed load. Ingestion never notices (every 2xx stored, no 5xx),
    the stack restarts it, and scoring goes on after the kill."""
    from tests.conftest import globex_config

    t0 = time.monotonic()
    stack = stacks(config=globex_config() + GOALS)
    ledger = Ledger(new_run())
    fault: dict = {}

    async def scenario() -> None:
        load = Load(stack.url, Mix(ledger.run, Mix.MIXED), ledger, seconds=12)
        task = asyncio.create_task(load.run())
        await asyncio.sleep(4.0)
        fault["pid"] = stack.run_info().get("scorer_pid")
        assert isinstance(fault["pid"], int), f"the run file names no scoring process: {stack.run_info()}"
        fault["t"] = time.monotonic()
        os.kill(fault["pid"], signal.SIGKILL)
        await task

    asyncio.run(scenario())
    notes, failures = [], []
    stored_s, complete = wait_stored(stack, ledger, timeout=60)
    now = stack.run_info().get("scorer_pid")
    # A customer who signs up after the kill enters the goal: scored once the new scorer is
    # in its consumer group (after the killed member's session timed out, 10 s).
    who = f"afterkill{int(time.time())}"
    body = json.dumps({"customer_id": who, "name": "After Kill", "email": "after@example.com", "plan": "Starter"}).encode()
    request = urllib.request.Request(f"{stack.url}/api/v1/customer", data=body, method="POST",
                                     headers={"Authorization": "Token tk_live_123", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200
    deadline, scored_after = time.monotonic() + 60, 0
    while time.monotonic() < deadline:
        scored_after = int(stack.sql(f"SELECT count() FROM goal_status WHERE customer_id = '{who}'").strip() or 0)
        if scored_after:
            break
        time.sleep(0.5)
    notes.append(f"SIGKILL of the scoring process pid {fault['pid']} 4 s into the load; now pid {now}; "
                 f"a customer signed up after it {'scored' if scored_after else 'not scored'}; writers after it: {statuses(ledger, since=fault['t'])}")
    notes.append(f"everything acknowledged stored {stored_s:.1f} s after the load" if complete
                 else f"not everything acknowledged stored after {stored_s:.0f} s")
    if not stack.running():
        failures.append(f"goalstream up did not survive the scoring process's death ({exit_text(stack.proc.returncode)})")
    if now == fault["pid"] or not isinstance(now, int):
        failures.append(f"the scoring process was not replaced (run file: {now})")
    if not scored_after:
        failures.append("a customer who signed up after the kill was not scored within 60 s")
    verdict(finish("scorer-sigkill", stack, ledger, t0, notes, failures))


# -- b. SIGKILL of the process group and the broker with a backlog, restart ----------------


def test_powercut_with_backlog_then_restart(stacks, tmp_path):
    t0 = time.monotonic()
    workdir = tmp_path / "powercut"
    # Batches of 100: processors that store one insert per 100 records fall behind the burst
    # (at their default they keep up with it, and no backlog forms to be cut off).
    stack = stacks(workdir, env=SLOW_PROCESSORS)
    ledger = Ledger(new_run())
    mix = Mix(ledger.run, Mix.BURST, batch=(500, 500))
    watch = HealthWatch(stack.url, interval=0.2)
    token = stack.run_info()["token"]
    fault: dict = {}

    async def burst() -> None:
        load = Load(stack.url, mix, ledger, concurrency=8, seconds=BACKLOG_WITHIN_S + 10)
        tasks = [asyncio.create_task(load.run()), asyncio.create_task(watch.run())]
        outside = {"estimate": 0}

        async def estimate() -> None:  # acknowledged minus stored, from outside, every second
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
                while not watch.stop.is_set():
                    if (stored := await stored_now(session, stack.url, token)) is not None:
                        outside["estimate"] = len(ledger.acked) - stored
                    await asyncio.sleep(1.0)

        tasks.append(asyncio.create_task(estimate()))
        start = time.monotonic()
        while time.monotonic() - start < BACKLOG_WITHIN_S:
            await asyncio.sleep(0.05)
            backlog = watch.latest_backlog()
            if backlog is not None and backlog >= BACKLOG_TARGET:
                break
            if watch.has_backlog is False and outside["estimate"] >= BACKLOG_TARGET:
                break  # /healthz reports no backlog: go by the estimate, and fail below
        fault.update(t=time.monotonic(), backlog=watch.latest_backlog(), estimate=outside["estimate"], acked=len(ledger.acked),
                     into=time.monotonic() - start)
        await asyncio.to_thread(stack.power_cut)
        load.stop.set()
        watch.stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(burst())
    t_kill = fault["t"]
    notes, failures = [], []
    notes.append(
        f"power cut {fault['into']:.1f} s into the burst: /healthz backlog.records="
        f"{fault['backlog'] if fault['backlog'] is not None else 'absent'}, acknowledged - stored (from outside) ~{fault['estimate']:,}, "
        f"acknowledged {fault['acked']:,}; {rate(ledger)}"
    )
    if fault["backlog"] is None:
        failures.append(f"GET /healthz reports no backlog (measured from outside: acknowledged - stored ~{fault['estimate']:,} at the kill)")
    elif fault["backlog"] < BACKLOG_TARGET:
        failures.append(f"the backlog reached only {fault['backlog']:,} in {BACKLOG_WITHIN_S:.0f} s (target {BACKLOG_TARGET:,})")

    t_restart = time.monotonic()
    second = stacks(workdir)
    ready = time.monotonic() - t_restart
    # Clients come back: a little more load on the restarted stack (the same run's fids).
    asyncio.run(Load(second.url, Mix(ledger.run, Mix.MIXED, counter=mix.counter), ledger, concurrency=4, seconds=2).run())
    recovery = ledger.first_2xx(t_kill)  # the old stack is dead: any 2xx is the restarted one's
    stored_s, complete = wait_stored(second, ledger, timeout=90, quiet=15)
    notes.append(f"restart ready in {ready:.1f} s; " + (f"everything acknowledged stored {stored_s:.1f} s after the clients came back"
                                                      if complete else f"stored count stopped growing; waited {stored_s:.0f} s"))
    verdict(finish("powercut-backlog", second, ledger, t0, notes, failures, recovery))


# -- c. SIGTERM mid-burst ----------------------------------------------------------------------


def test_sigterm_mid_burst(stacks, tmp_path):
    t0 = time.monotonic()
    workdir = tmp_path / "sigterm"
    stack = stacks(workdir)
    ledger = Ledger(new_run())
    mix = Mix(ledger.run, Mix.BURST, batch=(500, 500))
    watch = HealthWatch(stack.url, interval=0.2)
    fault: dict = {}

    async def burst() -> None:
        load = Load(stack.url, mix, ledger, concurrency=8, seconds=120)
        tasks = [asyncio.create_task(load.run()), asyncio.create_task(watch.run())]
        await asyncio.sleep(4.0)
        fault["t"] = time.monotonic()
        fault["acked"] = len(ledger.acked)
        fault["backlog"] = watch.latest_backlog()
        stack.proc.send_signal(signal.SIGTERM)
        while stack.proc.poll() is None and time.monotonic() - fault["t"] < 90:
            await asyncio.sleep(0.05)
        fault["exit"] = time.monotonic()
        await asyncio.sleep(0.5)  # a moment of the closed port too
        load.stop.set()
        watch.stop.set()
        await asyncio.gather(*tasks)

    asyncio.run(burst())
    t_term, t_exit = fault["t"], fault["exit"]
    rc = stack.proc.poll()
    notes, failures = [], []
    after = ledger.writes(since=t_term)
    closed = [a.started for a in after if a.error in ("refused", "disconnected") and a.started < t_exit]
    refused = [a.started for a in after if a.error == "refused"]
    port_closed = min(refused) - t_term if refused else None
    drain_s = t_exit - t_term
    during = ledger.writes(since=t_term, until=t_exit)
    n503 = sum(1 for a in during if a.status == 503 and a.retry_after)
    notes.append(f"SIGTERM 4 s into the burst: {fault['acked']:,} acknowledged, /healthz backlog.records "
                 f"{fault['backlog'] if fault['backlog'] is not None else 'absent'}; {rate(ledger)}")
    last = max((x for x in watch.samples if x.backlog is not None), key=lambda x: x.received, default=None)
    notes.append(f"/healthz during the drain: {' > '.join(watch.states(t_term))}"
                 + (f"; last backlog.records {last.backlog:,} at {last.received - t_term:.1f} s" if last else ""))
    notes.append(
        f"exit {rc} {drain_s:.1f} s after SIGTERM; connection refused from "
        f"{f'{port_closed:.1f} s' if port_closed is not None else 'never'}; during the drain {statuses(ledger, t_term, t_exit)}"
    )
    if rc is None:
        failures.append("goalstream up did not exit within 90 s of SIGTERM")
        stack.power_cut()
    elif rc != 0:
        failures.append(f"exit status {rc} after SIGTERM")
    if port_closed is not None and t_term + port_closed < t_exit - CLOSE_BEFORE_EXIT_S:
        failures.append(f"the port refused connections {port_closed:.1f} s after SIGTERM, {drain_s - port_closed:.1f} s before the "
                        f"process exited ({len(closed)} requests refused or cut off during the drain)")
    if drain_s > 1.0 and not n503:
        failures.append("no 503 + Retry-After during the drain")
    if rc == 0:
        source = "goalstream sql on the stopped data dir"
        target = stack
    else:  # what the drain did not store must be stored by the next start
        target = stacks(workdir)
        stored_s, complete = wait_stored(target, ledger, timeout=60, quiet=15)
        source = f"a restart ({'all stored' if complete else 'not all stored'} after {stored_s:.0f} s)"
    notes.append(f"counted through {source}")
    verdict(finish("sigterm-drain", target, ledger, t0, notes, failures))


# -- d. the stored raw records produced again ------------------------------------------------


async def replay_events(bootstrap: str) -> tuple[int, dict]:
    """Read every record on goalstream.events and produce it again unchanged (key, value,
    headers, partition). Returns (records, the topic's end offsets after)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata
        parts = [TopicPartition(topics.EVENTS, p) for p in sorted(consumer.partitions_for_topic(topics.EVENTS) or ())]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records = []
        deadline = time.monotonic() + 60
        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        while await behind() and time.monotonic() < deadline:
            for tp, msgs in (await consumer.getmany(*parts, timeout_ms=1000, max_records=20000)).items():
                records.extend((tp.partition, m.key, m.value, list(m.headers)) for m in msgs if m.offset < ends[tp])
    finally:
        await consumer.stop()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(topics.EVENTS, value, key=key, partition=p, headers=h) for p, key, value, h in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(records), {tp.partition: ends[tp] + sum(1 for p, *_ in records if p == tp.partition) for tp in parts}


async def processors_reached(bootstrap: str, ends: dict[int, int], timeout: float) -> float | None:
    """Seconds until the processors' group committed ``ends`` on goalstream.events, or None."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < timeout:
            offsets = await admin.list_consumer_group_offsets(PROCESSORS_GROUP, partitions=[TopicPartition(topics.EVENTS, p) for p in ends])
            if all(offsets.get(TopicPartition(topics.EVENTS, p)) and offsets[TopicPartition(topics.EVENTS, p)].offset >= e
                   for p, e in ends.items()):
                return time.monotonic() - t0
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    return None


def test_replay_stored_raw_records(stacks):
    t0 = time.monotonic()
    stack = stacks()
    ledger = Ledger(new_run())
    asyncio.run(Load(stack.url, Mix(ledger.run, Mix.MIXED), ledger, seconds=8).run())
    waited, complete = wait_stored(stack, ledger, timeout=60)
    raw0, final0 = fid_rows(stack, ledger.run, False), fid_rows(stack, ledger.run, True)
    bootstrap = stack.run_info()["kafka"]
    t_replay = time.monotonic()
    replayed, ends = asyncio.run(replay_events(bootstrap))
    produce_s = time.monotonic() - t_replay
    caught_up = asyncio.run(processors_reached(bootstrap, ends, timeout=60))
    raw1, final1 = fid_rows(stack, ledger.run, False), fid_rows(stack, ledger.run, True)
    notes, failures = [], []
    new_raw, new_final = sum(raw1.values()) - sum(raw0.values()), sum(final1.values()) - sum(final0.values())
    notes.append(f"before the replay: {rate(ledger)}, {'all stored' if complete else 'NOT all stored'} after {waited:.1f} s")
    notes.append(f"{replayed:,} records of {topics.EVENTS} produced again in {produce_s:.1f} s; processors committed past them "
                 + (f"{caught_up:.1f} s later" if caught_up is not None else "never (60 s)")
                 + f"; rows added: raw {new_raw:+,}, under FINAL {new_final:+,}")
    if caught_up is None:
        failures.append("the processors did not commit past the replayed records within 60 s")
    if new_final:
        failures.append(f"the replay added {new_final:+,} rows under FINAL")
    verdict(finish("replay-raw", stack, ledger, t0, notes, failures))
