"""The ``goalstream`` command: ``up``, ``gateway``, ``worker``, ``dispatcher``, ``sql``,
``train``, ``deadletter``, ``webhooks``, ``doctor``; ``--version``.

Each subcommand builds its service's settings object once (options override the
``GOALSTREAM_*`` environment variables of ``schemas/settings.py``, listed in README.md),
loads and validates the config file, and hands both down. Errors in either are printed
as one clear message and exit status 2. The four long-running commands are processes
run by ``lifecycle.serve`` (``stack.py``, ``processes.py``); the others are one-shot and
talk to a running stack on the same data dir through its run file when there is one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from schemas.config import ConfigError, GoalstreamConfig, load_config
from schemas.settings import CommonSettings, GatewaySettings, StackSettings, WorkerSettings

from . import lifecycle, runfile


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="config file (TOML); default goalstream.toml here, else dev defaults")
    p.add_argument("--data-dir", type=Path, dest="data_dir", help="where embedded data lives (default ./var)")
    p.add_argument("--kafka", help="bootstrap servers HOST:PORT[,..] (default: the embedded broker)")
    p.add_argument("--kafka-port", type=int, dest="kafka_port", help="the embedded broker's port (default 9092)")
    p.add_argument("--clickhouse", help="ClickHouse DSN (default chdb://<data-dir>/clickhouse)")
    p.add_argument("--log-level", dest="log_level")
    p.add_argument("--log-format", dest="log_format", choices=["text", "json"], help="text (default) or json: one object per line")


def _http(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--tls-cert", type=Path, dest="tls_cert")
    p.add_argument("--tls-key", type=Path, dest="tls_key")
    p.add_argument("--tls-port", type=int, dest="tls_port")
    p.add_argument("--access-log", dest="access_log", choices=["all", "errors", "off"],
                   help="a log line per request (default all), per 4xx/5xx only, or none")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="goalstream", description="Self-hosted customer-event pipeline.")
    root.add_argument("--version", action="version", version=f"goalstream {_version()}")
    sub = root.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole embedded stack in the foreground")
    _common(up)
    _http(up)
    up.add_argument("--broker-max-rss-mb", type=int, dest="broker_max_rss_mb", help="recycle the embedded broker above this RSS")
    up.add_argument("--max-backlog", type=int, dest="max_backlog",
                    help="accepted records not yet stored before writers get 503 (default 100000; 0: no bound)")
    up.add_argument("--no-spool", action="store_false", dest="spool", default=None,
                    help="acknowledge on the embedded broker's ack only, without the fsynced spool (a crash loses the backlog)")
    up.add_argument("--gateway-processes", type=int, dest="gateway_processes",
                    help="HTTP front processes (default 1; 0: the gateway on the stack's own event loop)")
    up.add_argument("--no-uvloop", action="store_false", dest="uvloop", default=None,
                    help="run the HTTP fronts on asyncio's own event loop instead of uvloop")
    up.add_argument("--no-scoring-process", action="store_false", dest="scoring_process", default=None,
                    help="run the scoring stage in the stack's own process instead of one of its own")
    gw = sub.add_parser("gateway", help="run the HTTP gateway alone (scaled out)")
    _common(gw)
    _http(gw)
    wk = sub.add_parser("worker", help="run the stream processors alone (scaled out)")
    _common(wk)
    dp = sub.add_parser("dispatcher", help="run the webhook dispatcher alone (scaled out)")
    _common(dp)
    for p, port in ((gw, None), (wk, 9464), (dp, 9465)):
        p.add_argument("--broker-wait", type=float, dest="broker_wait_s",
                       help="seconds to keep retrying an unreachable Kafka at start (default 60; 0: fail at once)")
        if port is not None:
            p.add_argument("--health-port", type=int, dest="health_port", help=f"port of /healthz and /metrics (default {port}; 0: off)")
            p.add_argument("--health-host", dest="health_host", help="address of the health port (default 127.0.0.1)")
    wh = sub.add_parser("webhooks", help="webhook deliveries that failed: list them, or send them again")
    _common(wh)
    wh.add_argument("action", choices=["list", "replay"])
    wh.add_argument("--id", action="append", dest="ids", help="a failed delivery's dead-letter id (repeatable; default: all)")
    wh.add_argument("--limit", type=int, default=1000)
    wh.add_argument("--dry-run", action="store_true", dest="dry_run")
    sql = sub.add_parser("sql", help="run a read-only query against ClickHouse")
    _common(sql)
    sql.add_argument("query")
    sql.add_argument("--format", default="PrettyCompact", help="ClickHouse output format (JSONEachRow, CSV, Pretty, ...)")
    tr = sub.add_parser("train", help="train the goals' propensity models and rescore active customers")
    _common(tr)
    tr.add_argument("--goal", help="only this goal (default: every goal)")
    tr.add_argument("--json", action="store_true", help="print the result as JSON")
    dl = sub.add_parser("deadletter", help="list dead letters, or send them again")
    _common(dl)
    dl.add_argument("action", choices=["list", "replay"])
    dl.add_argument("--id", action="append", dest="ids", help="a dead letter's id (repeatable)")
    dl.add_argument("--stage", help="only this stage (events-sink, customers-sink, gateway:<dialect>, ...)")
    dl.add_argument("--limit", type=int, default=1000)
    dl.add_argument("--dry-run", action="store_true", dest="dry_run", help="replay: show what would be sent")
    doc = sub.add_parser("doctor", help="check config, ports, broker, ClickHouse, data dir and disk; non-zero on any FAIL")
    _common(doc)
    _http(doc)
    from .forget import add_parser as forget_parser

    forget_parser(sub, _common)
    im = sub.add_parser("import", help="import historical data (Segment JSONL, Customer.io CSV/JSONL, plain events/customers)")
    _common(im)
    im.add_argument("files", nargs="+", type=Path, metavar="FILE")
    im.add_argument("--workspace", help="the workspace the data belongs to (default: the config's only workspace)")
    im.add_argument("--format", dest="import_format", choices=["segment", "customerio", "events", "customers"],
                    help="default: detected from the extension and the first line")
    im.add_argument("--restart", action="store_true", help="ignore the checkpoint: read the files from the start")
    im.add_argument("--resume", action="store_true", help="continue from the checkpoint (the default)")
    im.add_argument("--dry-run", action="store_true", dest="dry_run", help="decode and report, send nothing")
    im.add_argument("--batch", type=int, default=1000, help="records per Kafka batch (default 1000)")
    return root


def _version() -> str:
    """The installed package's version (pyproject.toml), from its metadata."""
    from importlib import metadata

    try:
        return metadata.version("goalstream")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _doctor(args: argparse.Namespace) -> int:
    """One line per check, OK/WARN/FAIL (ingest_gateway/cli/preflight.py); exit 1 on any FAIL."""
    from . import preflight

    checks: list[preflight.Check] = []
    try:
        settings = _settings(StackSettings, args)
        path = settings.config_path()
        load_config(path)
        checks.append(preflight.Check("config", preflight.OK, f"{path or 'dev defaults (no goalstream.toml here)'} loads and validates"))
    except ValidationError as exc:
        bad = ", ".join("-".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        print(preflight.Check("settings", preflight.FAIL, bad).line())
        return 1
    except ConfigError as exc:
        checks.append(preflight.Check("config", preflight.FAIL, str(exc)))
    checks += [preflight.data_dir_check(settings), *preflight.port_checks(settings), preflight.broker_check(settings),
               preflight.clickhouse_check(settings), preflight.disk_check(settings.data_dir)]
    for c in checks:
        print(c.line(), flush=True)
    return 1 if any(c.status == preflight.FAIL for c in checks) else 0


def _import(settings: CommonSettings, config: GoalstreamConfig, args: argparse.Namespace) -> int:
    from . import importer

    names = [w.name for w in config.workspaces]
    workspace = args.workspace or (names[0] if len(names) == 1 else None)
    if workspace is None or workspace not in names:
        print(f"goalstream import: give --workspace (one of: {', '.join(names)})", file=sys.stderr)
        return 2
    running = runfile.running(settings.data_dir)  # a running stack takes the batches through its spool
    return asyncio.run(importer.run(args.files, fmt=args.import_format, workspace=workspace, bootstrap=settings.kafka_bootstrap,
                                    data_dir=settings.data_dir, restart=args.restart, dry_run=args.dry_run,
                                    batch_size=max(1, args.batch), stack=running))


def _settings(cls: type[CommonSettings], args: argparse.Namespace) -> Any:
    given = {k: v for k, v in vars(args).items() if v is not None and k in cls.model_fields}
    return cls(**given)


def _setup_logging(settings: CommonSettings, config: GoalstreamConfig) -> None:
    """stderr, with every record filtered on its way (ingest_gateway/logsafe.py): aiohttp's
    parser errors made one line, floods rate-limited, every configured secret redacted;
    each record stamped with the request it was logged in (ingest_gateway/requestlog.py)
    and formatted as text or one JSON object per line (``--log-format``)."""
    from .. import logsafe, requestlog

    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logsafe.formatter(settings.log_format))
        if not any(isinstance(f, requestlog.ContextFilter) for f in handler.filters):
            handler.addFilter(requestlog.ContextFilter())  # before the redactor, which then sees its fields
    for noisy in ("faust", "mode", "aiokafka", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    logsafe.install(
        logging.getLogger().handlers,
        logsafe.config_secrets(config),
        rate_limit=settings.log_rate_limit,
        rate_interval_s=settings.log_rate_interval_s,
    )


def _process(command: str, settings: CommonSettings, config: GoalstreamConfig) -> lifecycle.Process:
    """The long-running command's process; imported here, so ``sql`` never loads faust."""
    if command == "up":
        from .stack import Stack

        return Stack(settings, config)
    from . import processes

    return {"gateway": processes.Gateway, "worker": processes.Worker, "dispatcher": processes.Dispatcher}[command](settings, config)


class QueryFailed(Exception):
    """A read-only query could not be run; the message says why, for the user."""


def _query(settings: CommonSettings, statement: str, fmt: str) -> bytes:
    """Run one read-only query as the operator: through the running stack if there is
    one (it holds the embedded ClickHouse, and checks the query on its admin lane), else
    against ClickHouse directly, through the same check and limits (ingest_gateway.sqlguard)."""
    if (info := runfile.running(settings.data_dir)) is not None:
        try:
            return runfile.call(info, "POST", f"/admin/v1/sql?format={urllib.parse.quote(fmt)}", statement.encode(), timeout=300)
        except runfile.StackRefused as exc:
            raise QueryFailed(str(exc)) from None
    import clickhouse_connect

    from schemas.warehouse import embedded_path, normalize_dsn

    dsn = normalize_dsn(settings.clickhouse_dsn)
    if (path := embedded_path(dsn)) is not None and not path.exists():
        raise QueryFailed(f"no data at {dsn}; start the stack first (goalstream up)")
    from .. import sqlguard

    try:
        client = clickhouse_connect.get_client(dsn=dsn)
    except Exception as exc:
        raise QueryFailed(f"cannot open ClickHouse at {dsn}: {exc}") from None
    try:
        # readonly and the limits go in the query's own SETTINGS (never clickhouse-connect's
        # settings=, which on chDB would stick to the session).
        return sqlguard.run(client, statement, fmt, sqlguard.OPERATOR, sqlguard.Limits.from_settings(settings))
    except (sqlguard.NotReadOnly, sqlguard.LimitReached, sqlguard.QueryFailed) as exc:
        raise QueryFailed(str(exc)) from None
    except Exception as exc:
        raise QueryFailed(f"{type(exc).__name__}: {exc}") from None
    finally:
        client.close()


def _sql(settings: CommonSettings, query: str, fmt: str) -> int:
    """The query is checked where it runs (the stack's admin lane, or _query's own
    client): the check needs ClickHouse's parser."""
    from .. import sqlguard

    if not sqlguard.FORMATS.match(fmt):
        print(f"goalstream sql: bad format {fmt!r}", file=sys.stderr)
        return 2
    try:
        sys.stdout.buffer.write(_query(settings, query, fmt))
    except QueryFailed as exc:
        print(f"goalstream sql: {exc}", file=sys.stderr)
        return 1
    return 0


def _train(settings: WorkerSettings, config: GoalstreamConfig, goal: str | None, as_json: bool) -> int:
    if not config.goals:
        print("goalstream train: the config defines no goals", file=sys.stderr)
        return 2
    if goal is not None and not any(g.name == goal for g in config.goals):
        print(f"goalstream train: no goal named {goal!r} (have: {', '.join(g.name for g in config.goals)})", file=sys.stderr)
        return 2
    info = runfile.running(settings.data_dir)
    from .importer import Spinner

    try:
        if info is not None:
            # The running stack holds the embedded ClickHouse and the scorer: it trains and
            # rescores. One request per goal name, so the spinner can say which one runs.
            results = []
            names = list(dict.fromkeys(g.name for g in config.goals if goal is None or g.name == goal))
            for i, name in enumerate(names, 1):
                with Spinner(f"training goal {name} ({i}/{len(names)})"):
                    body = runfile.call(info, "POST", f"/admin/v1/train?goal={urllib.parse.quote(name)}", b"", timeout=3600)
                results.extend(json.loads(body)["data"])
        else:
            with Spinner("training"):
                results = asyncio.run(_train_direct(settings, config, goal))
    except runfile.StackRefused as exc:
        print(f"goalstream train: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"goalstream train: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        auc = "n/a" if r["holdout_auc"] is None else f"{r['holdout_auc']:.3f}"
        line = (
            f"{r['workspace']}/{r['goal']}: {r['kind']} model {r['version']}, training size {r['training_customers']} "
            f"customers ({r['positives']} reached, base rate {r['base_rate']:.3f}), "
        )
        q = r.get("quality") or {}
        if q.get("log_loss") is not None:
            others = ", ".join(
                f"{k} {c['log_loss']:.4f}" for k, c in (q.get("candidates") or {}).items() if k != r["kind"] and c.get("log_loss") is not None
            )
            line += f"holdout log-loss {q['log_loss']:.4f}" + (f" (vs {others})" if others else "")
            if q.get("lift_top_decile") is not None:
                line += f", lift at the top decile {q['lift_top_decile']:.2f}"
            line += ", "
        line += f"holdout AUC {auc}"
        if r["kind"] == "base_rate":
            line += " (not enough labelled customers yet: scoring with the base rate)"
        if "rescored" in r:
            line += f"; {r['rescored']} active customers rescored"
        else:
            line += "; running workers rescore active customers when they pick it up"
        print(line)
        bins = [b for b in q.get("calibration") or () if b.get("count")]
        if bins:
            # The rest of the report, indented under its goal: when and on what it was
            # measured, and the holdout calibration (mean predicted -> observed rate per bin).
            print(f"  trained {q.get('trained_at')}, holdout {q.get('n_holdout_customers')} customers "
                  f"({q.get('n_holdout_snapshots')} snapshots); calibration, predicted -> observed (count): "
                  + ", ".join(f"{b['mean_predicted']:.3f} -> {b['observed_rate']:.3f} ({b['count']})" for b in bins))
    return 0


async def _train_direct(settings: WorkerSettings, config: GoalstreamConfig, goal: str | None) -> list[dict]:
    """No stack on this data dir: train against ClickHouse and store; workers pick it up."""
    from schemas import model
    from schemas.warehouse import Warehouse
    from stream_processors.scoring import processor as scoring

    warehouse = await Warehouse(settings.clickhouse_dsn).open()
    try:
        await warehouse.migrate()
        out = []
        now = model.now_ms()
        for g in config.goals:
            if goal is not None and g.name != goal:
                continue
            m = await scoring.train_goal(warehouse, g, now)  # as Scorer.train
            await scoring.store_model(warehouse, m)
            out.append(scoring.summary(m))
        return out
    finally:
        await warehouse.close()


def _deadletter(settings: CommonSettings, args: argparse.Namespace) -> int:
    from stream_processors import deadletters

    sql = deadletters.select_sql(ids=args.ids, stage=args.stage, limit=args.limit, with_payload=args.action == "replay")
    try:
        rows = [json.loads(line) for line in _query(settings, sql, "JSONEachRow").splitlines() if line.strip()]
    except QueryFailed as exc:
        print(f"goalstream deadletter: {exc}", file=sys.stderr)
        return 1
    if args.action == "list":
        for row in rows:
            print(json.dumps(row))
        return 0
    if not args.ids and not args.stage:
        print(f"goalstream {args.command} replay: name what to replay with --id or --stage", file=sys.stderr)
        return 2
    plan = deadletters.plan(rows)
    for row, why in plan.skipped:
        print(f"skipped {row['id']}: {why}", file=sys.stderr)
    if args.dry_run:
        for item in plan.sends:
            print(f"would send {item.id} to {item.topic}")
        return 0
    running = runfile.running(settings.data_dir)  # the running stack's broker, if there is one
    from .importer import counter

    bar = counter(len(plan.sends), f"goalstream {args.command} replay")
    try:
        sent = asyncio.run(deadletters.send(running and running.get("kafka") or settings.kafka_bootstrap, plan.sends, bar))
    finally:
        bar.close()
    print(f"replayed {sent} of {len(rows)} dead letters ({len(plan.skipped)} not replayable)")
    return 0 if not plan.skipped else 1


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "doctor":
        return _doctor(args)
    cls = {"up": StackSettings, "gateway": GatewaySettings, "worker": WorkerSettings, "sql": CommonSettings, "deadletter": CommonSettings, "train": WorkerSettings,
        "dispatcher": CommonSettings, "webhooks": CommonSettings, "import": CommonSettings, "forget": CommonSettings}[
        args.command
    ]
    try:
        settings = _settings(cls, args)
        config = load_config(settings.config_path())
    except ValidationError as exc:
        lines = [f"  --{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in exc.errors()]
        print("goalstream: invalid settings:\n" + "\n".join(lines), file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(f"goalstream: {exc}", file=sys.stderr)
        return 2
    _setup_logging(settings, config)
    if args.command == "sql":
        return _sql(settings, args.query, args.format)
    if args.command == "deadletter":
        return _deadletter(settings, args)
    if args.command == "webhooks":
        # Failed deliveries are dead letters of stage "dispatcher"; replaying one sends it
        # back through the dispatcher to the endpoint it failed for.
        args.stage = "dispatcher"
        return _deadletter(settings, args)
    if args.command == "import":
        return _import(settings, config, args)
    if args.command == "forget":
        from .forget import run as forget

        return forget(settings, config, args)
    if args.command == "train":
        return _train(settings, config, args.goal, args.json)
    if args.command in ("up", "gateway"):
        from . import preflight

        try:  # before anything starts: a busy port or a taken data dir is said within a second
            preflight.early(args.command, settings)
        except preflight.AlreadyRunning as exc:
            print(f"goalstream {args.command}: {exc}", file=sys.stderr)
            return 1
    try:
        return asyncio.run(lifecycle.serve(_process(args.command, settings, config)))
    except Exception as exc:  # one clear line, the traceback in the log at debug
        logging.getLogger("goalstream").debug("fatal", exc_info=True)
        print(f"goalstream {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

