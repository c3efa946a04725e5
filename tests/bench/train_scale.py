"""Training at scale: ``goalstream train`` on 200,000 customers with 20 event kinds, the
ClickHouse feature path against the previous pull-every-event-into-Python path, one run.

What runs, each step in a subprocess of its own (chDB allows one process per data path, and
each figure's peak RSS is then that process's own, ``ru_maxrss``), on a fresh chDB data dir
in a temp dir:

1. ``generate``: ``--customers`` customers (default 200,000) in workspace ``bench``, signed up
   31 to 121 days before now (so every 30-day goal window is over: all are labelled),
   ``attributes`` ``{"plan": ...}`` (4 plans, 5% none); about 30 events each (``--events-per``)
   of 20 kinds ``ev_00`` .. ``ev_19`` (skewed: ``ev_00`` the most frequent), timestamps from
   2 days before sign-up to 4 days after the window (so the window filter matters), 1% of the
   customers sending half their events anonymously under an id merged into them
   (``customer_merges``); a hidden per-customer propensity drives activity, the share of the
   goal's three actions (``ev_00`` .. ``ev_02``) and whether a ``purchase`` (the goal's
   target) comes inside the window. All by ``INSERT ... SELECT FROM numbers()`` (hashes of
   the row number: the same data every run).
2. ``old``: ``goals.labelled`` (every event timestamp into ``propensity.Labelled`` objects)
   then ``propensity.train``, as ``goalstream train`` did before (in process, timed per
   phase; both paths now end in the same ``propensity.fit``, so the difference is the
   loading and the snapshots). Above ``--old-max`` customers (default 200,000) it is skipped.
3. ``new``: ``goalstream train --json`` itself (the CLI, a subprocess: its wall time from
   spawn to exit, interpreter start and migrations included, and its peak RSS from
   ``wait4``), which now computes the snapshot features in ClickHouse
   (``stream_processors.scoring.features``) and fits on numpy arrays.
4. ``new-phases``: the same path in process, timed per phase (design query, snapshot query,
   fit).

Reported: wall time, peak RSS and holdout AUC of each, and the old/new ratio; targets: new
under 60 s at 200,000 customers x 20 kinds, peak RSS reported (bounded: the snapshot rows
are fetched as numpy column blocks, a few bytes per snapshot and feature, never one Python
object per event). Each path draws its own snapshot times (the old with numpy's generator,
the new from a hash of customer id and k), so AUCs agree to sampling noise, not exactly.

Usage: ``python tests/bench/train_scale.py [--customers 200000] [--json F]``; ``--keep DIR``
reuses (or keeps) a generated data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

WORKSPACE = "bench"
GOAL = "conv"
ACTIONS = ["ev_00", "ev_01", "ev_02"]
KINDS = 20
DAY = 86_400_000
TARGET_S = 60.0

CONFIG = (
    f'[[workspaces]]\nname = "{WORKSPACE}"\ntraitly_token = "tk_bench"\n\n'
    f'[[goals]]\nworkspace = "{WORKSPACE}"\nname = "{GOAL}"\nwindow_days = 30\ntarget_event = "purchase"\n'
    + "".join(f'[[goals.actions]]\nevent_name = "{a}"\nmessage_plaintext = "Try {a}"\n' for a in ACTIONS)
)


def generate_sql(n: int, events_per: int, now_ms: int) -> list[str]:
    entered = f"toInt64({now_ms} - 31 * {DAY} - cityHash64(c, 11) % (90 * {DAY}))"
    latent = "(cityHash64(c, 1) % 10000) / 10000"
    # Rows drawn, then kept with probability 0.3 + 0.7 * latent (mean 0.65): ~events_per each.
    drawn = int(n * events_per / 0.65)
    plan = f"['Free', 'Pro', 'Team', 'Enterprise'][1 + cityHash64(number, 12) % 4]"
    return [
        f"""
INSERT INTO customers (workspace, customer_id, created_at, updated_at, attributes, version)
SELECT '{WORKSPACE}', concat('c', toString(number)), fromUnixTimestamp64Milli(e), fromUnixTimestamp64Milli(e),
       if(cityHash64(number, 12) % 20 = 0, '{{}}', concat('{{"plan":"', {plan}, '"}}')), 1
FROM (SELECT number, number AS c, {entered} AS e FROM numbers({n}))
""",
        f"""
INSERT INTO customer_merges (workspace, customer_id, merged_id, kind, source, message_id, merged_at)
SELECT '{WORKSPACE}', concat('c', toString(number)), concat('a', toString(number)), 'alias', 'bench', toString(number),
       fromUnixTimestamp64Milli({now_ms} - 200 * {DAY})
FROM numbers({n}) WHERE number % 100 = 7
""",
        f"""
INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties)
SELECT toString(n), '{WORKSPACE}', if(anon, '', concat('c', toString(c))), if(anon, concat('a', toString(c)), ''),
       if(u < 0.25 * a, concat('ev_0', toString(cityHash64(n, 7) % 3)),
          concat('ev_', leftPad(toString(toUInt32(floor({KINDS} * pow((cityHash64(n, 8) % 10000) / 10000, 1.7)))), 2, '0'))),
       fromUnixTimestamp64Milli(t), fromUnixTimestamp64Milli(t), '{{}}'
FROM (
  SELECT number AS n, cityHash64(n, 5) % {n} AS c, {latent} AS a, (cityHash64(n, 2) % 10000) / 10000 AS u,
         c % 100 = 7 AND n % 2 = 0 AS anon,
         toInt64({entered} - 2 * {DAY} + cityHash64(n, 3) % (36 * {DAY})) AS t
  FROM numbers({drawn})
) WHERE (cityHash64(n, 6) % 1000) / 1000 < 0.3 + 0.7 * a
""",
        # The target: converts with probability 0.05 + 0.6 a^2 (x1.3 on Team/Enterprise), at
        # entered + 30 days * v^1.5; a second purchase later for some (only the first counts).
        f"""
INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties)
SELECT concat('p', toString(c), '-', toString(k)), '{WORKSPACE}', concat('c', toString(c)), '', 'purchase',
       fromUnixTimestamp64Milli(t), fromUnixTimestamp64Milli(t), '{{}}'
FROM (
  SELECT number AS c, {latent} AS a, arrayJoin([0, 1]) AS k,
         toInt64({entered} + 30 * {DAY} * pow((cityHash64(c, 13 + k) % 10000) / 10000, 1.5 - k * 0.5)) AS t,
         (cityHash64(c, 14) % 10000) / 10000 < (0.05 + 0.6 * a * a) * if(cityHash64(c, 12) % 4 >= 2, 1.3, 1.0) AS converts
  FROM numbers({n})
) WHERE converts AND (k = 0 OR cityHash64(c, 15) % 3 = 0)
""",
    ]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _goal():
    from schemas.config import Action, Goal

    return Goal(workspace=WORKSPACE, name=GOAL, window_days=30, target_event="purchase",
                actions=[Action(event_name=a) for a in ACTIONS])


async def _open(path: Path):
    from schemas.warehouse import Warehouse

    w = await Warehouse(f"chdb://{path}").open()
    await w.migrate()
    return w


async def child_generate(path: Path, n: int, events_per: int, now_ms: int) -> dict:
    w = await _open(path)
    try:
        started = time.perf_counter()
        for sql in generate_sql(n, events_per, now_ms):
            await w.command(sql)
        rows = await w.rows(
            "SELECT (SELECT count() FROM customers) AS customers, (SELECT count() FROM events) AS events, "
            "(SELECT uniqExact(name) FROM events) AS kinds, (SELECT count() FROM events WHERE name = 'purchase') AS purchases")
        return {"generate_s": round(time.perf_counter() - started, 1), **{k: int(v) for k, v in rows[0].items()}}
    finally:
        await w.close()


async def child_old(path: Path, now_ms: int) -> dict:
    from stream_processors.scoring import goals, propensity

    w = await _open(path)
    try:
        base = peak_rss_mb()
        goal = _goal()
        t0 = time.perf_counter()
        labelled = await goals.labelled(w, WORKSPACE, goal, now_ms)
        t1 = time.perf_counter()
        load_rss = peak_rss_mb()
        m = propensity.train(WORKSPACE, GOAL, goal.window_days, ACTIONS, labelled, now_ms=now_ms)
        t2 = time.perf_counter()
        return {"load_s": round(t1 - t0, 2), "fit_s": round(t2 - t1, 2), "wall_s": round(t2 - t0, 2),
                "rss_open_mb": round(base), "rss_after_load_mb": round(load_rss), "peak_rss_mb": round(peak_rss_mb()),
                "customers": m.n_customers, "positives": m.n_positive, "auc": m.auc, "kind": m.kind}
    finally:
        await w.close()


async def child_new_phases(path: Path, now_ms: int) -> dict:
    from stream_processors.scoring import features

    w = await _open(path)
    try:
        base = peak_rss_mb()
        goal = _goal()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        m = await features.train(w, goal, now_ms=now_ms, timings=timings)
        t1 = time.perf_counter()
        return {"wall_s": round(t1 - t0, 2), **{k: round(v, 2) for k, v in timings.items()},
                "rss_open_mb": round(base), "peak_rss_mb": round(peak_rss_mb()),
                "customers": m.n_customers, "positives": m.n_positive, "auc": m.auc, "kind": m.kind,
                "candidates": (m.quality or {}).get("candidates")}
    finally:
        await w.close()


def run_child(args: list[str], timeout: float = 3600) -> dict:
    """This script as a child process: its JSON answer, wall time and peak RSS (wait4)."""
    return run_cmd([sys.executable, __file__, *args], timeout, parse_last=True)


def run_cmd(cmd: list[str], timeout: float, parse_last: bool = False, env: dict | None = None) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return {"error": f"timed out after {timeout:g} s", "stderr": err[-2000:]}
    wall = time.perf_counter() - started
    result: dict = {"process_wall_s": round(wall, 2), "returncode": proc.returncode}
    if proc.returncode != 0:
        result["error"] = err[-3000:]
        return result
    text = out.strip()
    try:
        result.update(json.loads(text if not parse_last else text.splitlines()[-1]) if text else {})
    except (json.JSONDecodeError, IndexError):
        result["stdout"] = text[-2000:]
    return result


def run_measured(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Like run_cmd, with the child's own peak RSS from os.wait4."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result: dict = {"process_wall_s": round(wall, 2), "process_peak_rss_mb": round(usage.ru_maxrss / 1024), "returncode": proc.returncode}
    if proc.returncode != 0:
        result["error"] = stderr[-3000:]
        return result
    try:
        result["output"] = json.loads(stdout)
    except json.JSONDecodeError:
        result["output"] = stdout.strip().splitlines()[-1:] if stdout.strip() else []
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="goalstream train at scale: ClickHouse features vs the Python path")
    ap.add_argument("--customers", type=int, default=200_000)
    ap.add_argument("--events-per", type=int, default=30, dest="events_per")
    ap.add_argument("--old-max", type=int, default=200_000, dest="old_max",
                    help="skip the old path above this many customers (default 200,000)")
    ap.add_argument("--skip", default="", help="comma-separated: old, new, new-phases")
    ap.add_argument("--keep", type=Path, help="data dir to reuse (generated if missing) and keep")
    ap.add_argument("--json", type=Path, help="write the report here too")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        kind, path, now_ms, *rest = args.child
        path, now_ms = Path(path), int(now_ms)
        if kind == "generate":
            res = asyncio.run(child_generate(path, int(rest[0]), int(rest[1]), now_ms))
        elif kind == "old":
            res = asyncio.run(child_old(path, now_ms))
        else:
            res = asyncio.run(child_new_phases(path, now_ms))
        print(json.dumps(res))
        return 0

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    tmp = Path(tempfile.mkdtemp(prefix="goalstream-train-bench-"))
    data = args.keep or tmp / "data"
    ch = data / "clickhouse"
    meta = data / "bench.json"
    report: dict = {"customers": args.customers, "events_per_customer": args.events_per, "kinds": KINDS}
    try:
        if meta.exists():
            report["generated"] = json.loads(meta.read_text())
            if report["generated"].get("n") != args.customers:
                raise SystemExit(f"{data} holds {report['generated'].get('n')} customers, not {args.customers}")
        else:
            data.mkdir(parents=True, exist_ok=True)
            now_ms = int(time.time() * 1000)
            print(f"generating {args.customers:,} customers x ~{args.events_per} events ...", file=sys.stderr, flush=True)
            gen = run_child(["--child", "generate", str(ch), str(now_ms), str(args.customers), str(args.events_per)])
            if "error" in gen:
                print(gen["error"], file=sys.stderr)
                return 1
            report["generated"] = {"n": args.customers, "now_ms": now_ms, **gen}
            meta.write_text(json.dumps(report["generated"]))
        now_ms = report["generated"]["now_ms"]
        print(f"data: {report['generated']}", file=sys.stderr, flush=True)
        (data / "goalstream.toml").write_text(CONFIG)

        if "old" not in skip and args.customers <= args.old_max:
            print("old path (labelled + propensity.train) ...", file=sys.stderr, flush=True)
            report["old"] = run_measured([sys.executable, __file__, "--child", "old", str(ch), str(now_ms)], 3600)
        if "new" not in skip:
            print("new path (goalstream train) ...", file=sys.stderr, flush=True)
            # The CLI trains as of its own clock: the data's windows stay over (31+ days back).
            cmd = [sys.executable, "-c", "import sys; from ingest_gateway.cli import main; sys.exit(main())", "train", "--json", "--config", str(data / "goalstream.toml"),
                   "--data-dir", str(data), "--clickhouse", f"chdb://{ch}"]
            report["new"] = run_measured(cmd, 3600)
        if "new-phases" not in skip:
            print("new path, phases in process ...", file=sys.stderr, flush=True)
            report["new_phases"] = run_measured([sys.executable, __file__, "--child", "new-phases", str(ch), str(now_ms)], 3600)
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(render(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    failed = [k for k in ("old", "new", "new_phases") if k in report and report[k].get("returncode")]
    return 1 if failed else 0


def render(report: dict) -> str:
    g = report["generated"]
    lines = [f"goalstream train at scale: {g['n']:,} customers, {g.get('events', 0):,} events ({g.get('kinds', '?')} names, "
             f"{g.get('purchases', 0):,} purchases)"]
    head = f"{'path':<44} {'wall s':>8} {'peak RSS MB':>12} {'customers':>10} {'AUC':>7}  {'serving':<8}"
    lines += ["", head, "-" * len(head)]

    def row(name: str, r: dict | None, wall_key: str = "process_wall_s") -> None:
        if r is None:
            return
        if r.get("returncode"):
            lines.append(f"{name:<44} FAILED: {r.get('error', '')[-300:]}")
            return
        o = r.get("output", {})
        if isinstance(o, list):  # the CLI's --json answer: one summary per goal
            o = o[0] if o else {}
        auc = o.get("auc", o.get("holdout_auc"))
        cust = o.get("customers", o.get("training_customers"))
        lines.append(f"{name:<44} {r[wall_key]:>8.1f} {r['process_peak_rss_mb']:>12,} {cust or 0:>10,} "
                     f"{'-' if auc is None else f'{auc:.4f}':>7}  {o.get('kind', '?'):<8}")

    row("old: labelled + propensity.train (process)", report.get("old"))
    row("new: goalstream train --json (CLI process)", report.get("new"))
    row("new: features.train (process)", report.get("new_phases"))
    old, new = report.get("old"), report.get("new")
    if old and new and not old.get("returncode") and not new.get("returncode"):
        lines.append(f"\nold / new wall time: {old['process_wall_s'] / new['process_wall_s']:.1f}x; "
                     f"peak RSS old / new: {old['process_peak_rss_mb'] / new['process_peak_rss_mb']:.1f}x")
    for key in ("old", "new_phases"):
        r = report.get(key)
        if r and not r.get("returncode"):
            lines.append(f"{key} phases: " + ", ".join(f"{k} {v}" for k, v in r["output"].items() if k.endswith("_s") or k.startswith("rss")))
    phases = (report.get("new_phases") or {}).get("output")
    if isinstance(phases, dict) and phases.get("candidates"):
        lines.append("both kinds fitted, holdout: " + ", ".join(
            f"{k} log-loss {c['log_loss']:.4f} AUC {c['auc']:.4f}" for k, c in phases["candidates"].items()) + f"; serving {phases['kind']}")
    if new and not new.get("returncode") and g["n"] >= 200_000:
        ok = new["process_wall_s"] < TARGET_S
        lines.append(f"target: goalstream train on {g['n']:,} customers x {KINDS} kinds < {TARGET_S:g} s: "
                     f"{new['process_wall_s']:.1f} s {'pass' if ok else 'FAIL'}; peak RSS {new['process_peak_rss_mb']:,} MB")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
