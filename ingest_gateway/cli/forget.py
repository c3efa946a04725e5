"""``goalstream forget``: erase a person everywhere (and suppress them), or list the regulations.

What flows: the workspace and customer id -> with a stack running on the data dir, ``POST
/admin/v1/forget`` on it as the operator (it holds the embedded ClickHouse and every part that
must obey); else a ``stream_processors.forget.Regulator`` on ClickHouse directly (on a
server, workers elsewhere pick the regulation up within a second) -> waits until it completed
and prints the rows removed per table. ``--list`` prints the regulations with their state.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
import time
import urllib.parse
from typing import Any

from schemas.config import GoalstreamConfig
from schemas.settings import CommonSettings

from . import runfile

WAIT_S = 3600.0


class ForgetFailed(Exception):
    """The regulation could not be made or read; the message says why, for the user."""


def add_parser(sub: Any, common: Any) -> None:
    fg = sub.add_parser("forget", help="erase a person from every store (and with --suppress refuse them from now on); --list the regulations")
    common(fg)
    fg.add_argument("--workspace", help="the person's workspace (default: the config's only workspace)")
    fg.add_argument("--customer", dest="customer", help="the person's customer id (ids merged into it are erased too)")
    fg.add_argument("--suppress", action="store_true", help="also refuse every later record about the person")
    fg.add_argument("--list", action="store_true", dest="list", help="show the regulations and their state")
    fg.add_argument("--no-wait", action="store_false", dest="wait", help="return once the regulation is recorded")
    fg.add_argument("--json", action="store_true", help="print JSON")


def _http(info: dict[str, Any], method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    try:
        return json.loads(runfile.call(info, method, path, data, content_type="application/json"))
    except runfile.StackRefused as exc:
        raise ForgetFailed(str(exc)) from None


async def _direct(settings: CommonSettings, action: Any) -> Any:
    from schemas.regulations import Forgotten
    from schemas.warehouse import Warehouse, WarehouseError, embedded_path, normalize_dsn
    from stream_processors.forget import Regulator

    dsn = normalize_dsn(settings.clickhouse_dsn)
    if (path := embedded_path(dsn)) is not None and not path.exists():
        raise ForgetFailed(f"no data at {dsn}; start the stack first (goalstream up)")
    try:
        warehouse = await Warehouse(dsn).open()
    except WarehouseError as exc:
        raise ForgetFailed(f"cannot open ClickHouse at {dsn}: {exc}") from None
    try:
        await warehouse.migrate()
        # Embedded, nothing else can hold this data (chDB is one process per path): no part
        # needs time to hear of it. On a server, workers elsewhere do.
        regulator = Regulator(warehouse, Forgotten(), settle_s=0.0 if path is not None else settings.forget_settle_s)
        try:
            return await action(regulator)
        finally:
            await regulator.stop()
    finally:
        await warehouse.close()


def run(settings: CommonSettings, config: GoalstreamConfig, args: argparse.Namespace) -> int:
    workspace = args.workspace
    if workspace is None and len(config.workspaces) == 1:
        workspace = config.workspaces[0].name
    if workspace is not None and config.workspace(workspace) is None:
        print(f"goalstream forget: no workspace named {workspace!r}", file=sys.stderr)
        return 2
    info = runfile.running(settings.data_dir)
    try:
        if args.list:
            if info is not None:
                found = _http(info, "GET", "/admin/v1/forget")["data"]
                found = [r for r in found if workspace is None or args.workspace is None or r["workspace"] == workspace]
            else:
                found = asyncio.run(_direct(settings, lambda reg: reg.list(args.workspace)))
            _print_list(found, args.json)
            return 0
        if not args.customer:
            print("goalstream forget: give --customer ID (or --list)", file=sys.stderr)
            return 2
        if workspace is None:
            print("goalstream forget: give --workspace (the config has several)", file=sys.stderr)
            return 2
        started = time.monotonic()
        who = f"goalstream forget (user {getpass.getuser()})"
        if info is not None:
            reg = _http(info, "POST", "/admin/v1/forget", {
                "workspace": workspace, "customer_id": args.customer, "suppress": args.suppress, "requested_by": who,
            })
            while args.wait and reg["state"] not in ("completed", "failed") and time.monotonic() - started < WAIT_S:
                time.sleep(0.5)
                reg = _http(info, "GET", f"/admin/v1/forget/{urllib.parse.quote(reg['id'])}")
        else:
            async def forget(regulator: Any) -> dict[str, Any]:
                r = await regulator.request(workspace, args.customer, suppress=args.suppress, requested_by=who)
                return await regulator.wait(r["id"], WAIT_S) if args.wait else r

            reg = asyncio.run(_direct(settings, forget))
    except ForgetFailed as exc:
        print(f"goalstream forget: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(reg, indent=2))
    else:
        _print_one(reg, time.monotonic() - started)
    return 1 if reg["state"] == "failed" else 0


def _print_one(reg: dict[str, Any], took_s: float) -> None:
    kind = "forgotten and suppressed" if reg["suppress"] else "forgotten"
    print(f"regulation {reg['id']}: {reg['workspace']}/{reg['customer_id']} {kind}: {reg['state']} ({took_s:.1f}s)")
    if reg["ids"]:
        print(f"  ids: {', '.join(reg['ids'])}")
    for table, n in sorted(reg["removed"].items()):
        print(f"  {table}: {n} rows removed")
    if reg.get("error"):
        print(f"  error: {reg['error']}")
    if reg["state"] not in ("completed", "failed"):
        print("  still running; see goalstream forget --list")


def _print_list(found: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(found, indent=2))
        return
    if not found:
        print("no regulations")
        return
    print(f"{'id':36}  {'workspace':12}  {'customer':20}  {'type':20}  {'state':9}  {'requested_at':24}  {'completed_at':24}  rows")
    for r in found:
        print(f"{r['id']:36}  {r['workspace']:12}  {r['customer_id'][:20]:20}  {r['type']:20}  {r['state']:9}  "
              f"{r['requested_at'] or '':24}  {r['completed_at'] or '':24}  {r['rows_removed']}")
