"""Operations polish (issue 14): --version, doctor, the early checks of up/gateway, the
changelog. Real sockets and real child processes; nothing of the stack is started."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

from ingest_gateway.cli import commands, preflight, runfile

ROOT = Path(__file__).resolve().parents[2]


def _goalstream(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "import sys; from ingest_gateway.cli import main; sys.exit(main())", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


def _listening() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_version_comes_from_package_metadata(capsys):
    with pytest.raises(SystemExit) as exc:
        commands.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"goalstream {metadata.version('goalstream')}"


def test_changelog_keeps_a_changelog_with_unreleased_and_the_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog") and "keepachangelog.com" in text
    assert "## [Unreleased]" in text and f"## [{metadata.version('goalstream')}]" in text


def _fake_stack(data_dir: Path, port: int) -> None:
    # A run file naming this (live) test process, as a running `goalstream up` writes it.
    runfile.write(data_dir, url=f"http://127.0.0.1:{port}", token="t", kafka="127.0.0.1:1")


def test_up_on_a_data_dir_in_use_names_pid_and_url_at_once(tmp_path):
    _fake_stack(tmp_path / "var", 18080)
    t0 = time.monotonic()
    r = _goalstream("up", "--data-dir", str(tmp_path / "var"), "--port", "0", cwd=tmp_path)
    assert r.returncode == 1 and time.monotonic() - t0 < 20  # interpreter start dominates; nothing else started
    assert f"goalstream already runs on this data dir {tmp_path / 'var'} (pid {os.getpid()}, URL http://127.0.0.1:18080)" in r.stderr
    assert not (tmp_path / "var" / "logs").exists()  # no broker was started


def test_busy_port_is_reported_before_anything_starts(tmp_path):
    with _listening() as s:
        port = s.getsockname()[1]
        for command in ("up", "gateway"):
            r = _goalstream(command, "--data-dir", str(tmp_path / "var"), "--port", str(port), cwd=tmp_path)
            assert r.returncode == 1, r.stderr
            assert f"port {port} on 127.0.0.1 is already in use by another process" in r.stderr
        assert not (tmp_path / "var" / "logs").exists()
        # Held by the goalstream of this data dir: the message names it.
        _fake_stack(tmp_path / "other", port)
        with pytest.raises(preflight.AlreadyRunning, match=rf"in use by goalstream \(pid {os.getpid()}, URL http://127.0.0.1:{port}\)"):
            preflight.early("gateway", commands._settings(commands.GatewaySettings, commands.parser().parse_args(
                ["gateway", "--data-dir", str(tmp_path / "other"), "--port", str(port)])))


def test_doctor_all_ok_or_warn_on_a_fresh_dir(tmp_path):
    with _listening() as s:  # a broker stand-in: something answers on the given bootstrap
        r = _goalstream("doctor", "--data-dir", str(tmp_path / "var"), "--port", "0",
                        "--kafka", f"127.0.0.1:{s.getsockname()[1]}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    names = [line.split(":")[0].split(None, 1)[1] for line in lines]
    assert names == ["config", "data dir", "port 0", "broker", "clickhouse", "disk"], lines
    assert all(line.split()[0] in ("OK", "WARN") for line in lines)
    assert "dev defaults" in lines[0]


def test_doctor_fails_on_busy_port_unreachable_broker_and_bad_config(tmp_path):
    (tmp_path / "bad.toml").write_text("[[workspaces]]\nnope = 1\n")
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead = free.getsockname()[1]
    free.close()  # nothing listens there now
    with _listening() as s:
        busy = s.getsockname()[1]
        r = _goalstream("doctor", "--config", str(tmp_path / "bad.toml"), "--data-dir", str(tmp_path / "var"),
                        "--port", str(busy), "--kafka", f"127.0.0.1:{dead}",
                        "--clickhouse", "http://default:s3cret@127.0.0.1:%d/default" % dead, cwd=tmp_path)
    assert r.returncode == 1
    by = {line.split(":")[0].split(None, 1)[1]: line.split()[0] for line in r.stdout.splitlines()}
    assert by["config"] == "FAIL" and by[f"port {busy}"] == "FAIL"
    assert by["broker"] == "FAIL" and by["clickhouse"] == "FAIL"
    assert "s3cret" not in r.stdout + r.stderr  # the DSN's password never printed


def test_doctor_names_the_running_stack_holding_the_data_dir(tmp_path):
    with _listening() as s:
        port = s.getsockname()[1]
        runfile.write(tmp_path / "var", url=f"http://127.0.0.1:{port}", token="t", kafka=f"127.0.0.1:{port}")
        (tmp_path / "var" / "clickhouse").mkdir()
        r = _goalstream("doctor", "--data-dir", str(tmp_path / "var"), "--port", str(port), cwd=tmp_path)
    assert r.returncode == 0, r.stdout
    assert f"held by the running goalstream (pid {os.getpid()}" in r.stdout
    assert f"chDB at {tmp_path / 'var' / 'clickhouse'}, held by goalstream (pid {os.getpid()}" in r.stdout
    info = json.loads(runfile.path(tmp_path / "var").read_text())
    assert info["pid"] == os.getpid()


async def test_recommended_next_actions_in_a_workspace_without_goals_says_so():
    from aiohttp.test_utils import TestClient, TestServer

    from ingest_gateway.app import create_app
    from schemas.config import parse_config
    from schemas.settings import GatewaySettings
    from tests.conftest import globex_config
    from tests.unit.test_hostile_input import Producer, Warehouse

    config = parse_config(globex_config())
    assert not config.goals  # the dev-like config: workspaces, no goals
    client = TestClient(TestServer(create_app(GatewaySettings(), config, producer=Producer(), warehouse=Warehouse())))
    await client.start_server()
    try:
        for params in ({"customer_id": "c1"}, {"customer_id": "c1", "goal_name": "anything"}):
            r = await client.get("/api/v1/recommended-next-actions", params=params, headers={"Authorization": "Token tk_live_123"})
            body = await r.json()
            assert r.status == 400, body
            assert "has no goals configured" in body["error"]["message"] and "give" not in body["error"]["message"]
    finally:
        await client.close()


def test_a_held_data_dir_lock_is_named_before_the_run_file_exists(tmp_path):
    # A `goalstream up` still starting holds <data-dir>/run/lock (flock) but has no run file yet.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from ingest_gateway.cli import runfile; runfile.lock(Path(sys.argv[1])); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / "var")], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert runfile.lock_holder(tmp_path / "var") == str(holder.pid)
        with pytest.raises(RuntimeError, match=rf"already runs on this data dir .* \(pid {holder.pid}\)"):
            runfile.lock(tmp_path / "var")
        r = _goalstream("up", "--data-dir", str(tmp_path / "var"), "--port", "0", cwd=tmp_path)
        assert r.returncode == 1 and f"(pid {holder.pid}, still starting: no URL yet)" in r.stderr
    finally:
        holder.kill()
        holder.wait()
    assert runfile.lock_holder(tmp_path / "var") is None  # the kernel dropped it with the process
    os.close(runfile.lock(tmp_path / "var"))
