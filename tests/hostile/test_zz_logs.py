"""Runs last (file order): after every probe, the stack's log holds no configured secret.

The log is the stack's stderr as a supervisor would capture it. Every credential of the
config, the webhook signing secret, the operator token and the per-run local token are
searched for; multi-line tracebacks are counted too (a flood of them is a disk-filling
attack and a leak of request data).
"""

from __future__ import annotations

import json

import pytest

from tests.hostile.conftest import OPERATOR, REPORT, SECRETS, WEBHOOK_SECRET

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_no_secret_in_the_log(hostile_stack):
    assert REPORT.rows, "run with the rest of tests/hostile"
    log = hostile_stack.err_path.read_text(errors="replace")
    run = json.loads((hostile_stack.workdir / "var" / "run" / "stack.json").read_text())
    secrets = [v for creds in SECRETS.values() for v in creds.values()] + [WEBHOOK_SECRET, OPERATOR, run["token"]]
    hits = {s: log.count(s) for s in secrets if s in log}
    assert hits == {}, f"secrets in the stack log: { {k[:4] + '...': v for k, v in hits.items()} }"
    tracebacks = log.count("Traceback (most recent call last)")
    assert tracebacks == 0, f"{tracebacks} tracebacks in {len(log.splitlines())} log lines"
    REPORT.add("log-grep", f"{len(secrets)} secrets, {len(log.splitlines())} lines", 200, 0.0)
