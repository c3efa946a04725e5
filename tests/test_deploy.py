"""The scaled-out deployment files stay well-formed (no docker, no network)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_compose_file_has_the_five_services():
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "clickhouse", "gateway", "worker", "dispatcher"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server")
    for name in ("gateway", "worker", "dispatcher"):
        service = services[name]
        assert service["command"][:2] == ["goalstream", name]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        env = service["environment"]
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["CLICKHOUSE_URL"].startswith("http://")
        assert env["GOALSTREAM_CONFIG"]
    # Workers scale with --scale worker=N: no fixed name or host port may pin them to one.
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert (DEPLOY / "Dockerfile").is_file()


def test_example_config_loads():
    config = load_config(DEPLOY / "goalstream.example.toml")
    assert len(config.workspaces) >= 1
    assert len(config.goals) >= 1
    assert config.goals[0].actions
