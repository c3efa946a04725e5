"""The metrics module, GET /metrics on the gateway app (in process, records kept in memory),
multiprocess merging, the Grafana dashboard's names, the worker/dispatcher health port and
the start-up wait for an unreachable broker."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from ingest_gateway.app import create_app
from ingest_gateway.cli.lifecycle import Interrupted
from ingest_gateway.cli.processes import HealthPort, wait_for_topics
from ingest_gateway.health import Health
from schemas import metrics
from schemas.config import parse_config
from schemas.kafka import KafkaUnavailable
from schemas.settings import CommonSettings, GatewaySettings
from tests.conftest import ROOT, free_port, globex_config
from tests.memory import MemoryProducer

CONFIG = parse_config(globex_config())
DASHBOARD = ROOT / "deploy" / "grafana" / "goalstream.json"
TOKEN = "operator-run-token"


class NoWarehouse:
    is_open = False


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_metric_is_prefixed_labelled_and_listed():
    families = {m.name: m for m in metrics.REGISTRY.collect()}
    assert families, "the registry is empty"
    for name, family in families.items():
        assert name.startswith("goalstream_")
    exposed = {(n[: -len("_total")] if t == "counter" else n) for n, t in metrics.EXPOSED.items()}
    assert exposed == set(families)
    for collector in metrics.REGISTRY._collector_to_names:  # every metric has labels: no value before use_directory
        assert collector._labelnames, collector


def test_no_unbounded_label():
    for collector in metrics.REGISTRY._collector_to_names:
        assert not {"workspace", "customer_id", "path", "message_id", "url"} & set(collector._labelnames)


def _promql_names(expr: str) -> set[str]:
    names = set(re.findall(r"\bgoalstream_[a-z_]+", expr))
    out = set()
    for n in names:
        for suffix in ("_bucket", "_sum", "_count"):
            if n.endswith(suffix) and metrics.EXPOSED.get(n[: -len(suffix)]) == "histogram":
                n = n[: -len(suffix)]
        out.add(n)
    return out


def test_dashboard_uses_exactly_the_registry_names():
    dash = json.loads(DASHBOARD.read_text())
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in dash["templating"]["list"])
    used: set[str] = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            names = _promql_names(target["expr"])
            assert names, target["expr"]
            unknown = names - set(metrics.EXPOSED)
            assert not unknown, f"{panel['title']}: {unknown} not in schemas/metrics.py"
            used |= names
    assert used == set(metrics.EXPOSED), f"not on any panel: {set(metrics.EXPOSED) - used}"


async def _client(**settings) -> tuple[TestClient, MemoryProducer]:
    producer = MemoryProducer()
    app = create_app(GatewaySettings(**settings), CONFIG, producer=producer, warehouse=NoWarehouse(), local_token=TOKEN)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client, producer


async def test_gateway_counts_requests_by_route_template_and_status():
    client, _ = await _client()
    ok = ("segment", "/v1/track", "POST", "200")
    bad_auth = ("segment", "/v1/track", "POST", "401")
    unmatched = ("none", "unmatched", "GET", "404")
    labels = ("dialect", "route", "method", "status")
    before = {k: sample("goalstream_http_requests_total", **dict(zip(labels, k))) for k in (ok, bad_auth, unmatched)}
    accepted = sample("goalstream_records_accepted_total", dialect="segment", topic="goalstream.events")
    published = sample("goalstream_publish_seconds_count", dialect="segment")
    try:
        auth = {"Authorization": "Basic " + base64.b64encode(b"wk_1:").decode()}
        for i in range(3):
            r = await client.post("/v1/track", json={"userId": f"u{i}", "event": "Signed Up"}, headers=auth)
            assert r.status == 200, await r.text()
        r = await client.post("/v1/track", json={"userId": "u", "event": "x"}, headers={"Authorization": "Basic " + base64.b64encode(b"nope:").decode()})
        assert r.status == 401
        r = await client.get("/no/such/path/with-an-id-123")
        assert r.status == 404

        r = await client.get("/metrics")
        assert r.status == 401  # the operator's token is required by default
        r = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    finally:
        await client.close()
    assert sample("goalstream_http_requests_total", **dict(zip(labels, ok))) - before[ok] == 3
    assert sample("goalstream_http_requests_total", **dict(zip(labels, bad_auth))) - before[bad_auth] == 1
    assert sample("goalstream_http_requests_total", **dict(zip(labels, unmatched))) - before[unmatched] == 1
    assert sample("goalstream_records_accepted_total", dialect="segment", topic="goalstream.events") - accepted == 3
    assert sample("goalstream_publish_seconds_count", dialect="segment") - published == 3
    assert "with-an-id-123" not in text  # the raw path never becomes a label
    families = {f.name for f in text_string_to_metric_families(text)}
    assert {"goalstream_http_requests", "goalstream_records_accepted", "goalstream_publish_seconds"} <= families


async def test_metrics_open_when_auth_is_off():
    client, _ = await _client(metrics_auth=False)
    try:
        r = await client.get("/metrics")
        assert r.status == 200
        assert "goalstream_http_requests_total" in await r.text()
    finally:
        await client.close()


MULTIPROCESS = r"""
import subprocess, sys
from pathlib import Path
from schemas import metrics
metrics.use_directory(Path(sys.argv[1]))
metrics.HTTP_REQUESTS.labels("segment", "/v1/track", "POST", "200").inc(2)
child = "from schemas import metrics; metrics.INSERT_ROWS.labels('events').observe(7); metrics.CONSUMER_LAG.labels('processors', 'goalstream.events', '0').set(5)"
subprocess.run([sys.executable, "-c", child], check=True)
sys.stdout.write(metrics.exposition()[0].decode())
"""


def test_multiprocess_merges_the_children(tmp_path):
    # In a subprocess: multiprocess mode is process-wide, and this pytest process keeps its own registry.
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "stale_counter_1.db").write_bytes(b"")  # a previous run's file: removed
    out = subprocess.run([sys.executable, "-c", MULTIPROCESS, str(tmp_path / "metrics")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert 'goalstream_http_requests_total{dialect="segment",method="POST",route="/v1/track",status="200"} 2.0' in out.stdout
    assert 'goalstream_insert_rows_sum{table="events"} 7.0' in out.stdout
    assert 'goalstream_consumer_lag{consumer="processors",partition="0",topic="goalstream.events"} 5.0' in out.stdout
    assert not (tmp_path / "metrics" / "stale_counter_1.db").exists()


async def test_health_port_serves_healthz_and_metrics():
    health = Health()
    health.set("kafka", "waiting")
    port = free_port()
    server = HealthPort("127.0.0.1", port, health)
    url = await server.start()
    try:
        assert url == f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as s:
            async with s.get(f"{url}/healthz") as r:
                assert r.status == 503 and (await r.json())["components"] == {"kafka": "waiting"}
            health.set("kafka", "up")
            async with s.get(f"{url}/healthz") as r:
                assert r.status == 200
            async with s.get(f"{url}/metrics") as r:
                assert r.status == 200 and "goalstream_consumer_lag" in await r.text()
    finally:
        await server.stop()


async def test_broker_wait_is_bounded_and_stops_on_the_signal():
    unreachable = CommonSettings(kafka=f"127.0.0.1:{free_port()}", broker_wait_s=0.3)
    with pytest.raises(KafkaUnavailable, match="gave up after 0.3s"):
        await asyncio.wait_for(wait_for_topics(unreachable, asyncio.Event()), 20)
    stopping = asyncio.Event()
    waiting = asyncio.ensure_future(wait_for_topics(CommonSettings(kafka=unreachable.kafka, broker_wait_s=600), stopping))
    await asyncio.sleep(1.0)
    assert not waiting.done()
    stopping.set()
    with pytest.raises(Interrupted):
        await asyncio.wait_for(waiting, 5)


def test_child_is_cached_and_counts_as_labels():
    before = sample("goalstream_deadletters_total", stage="unit-test")
    a = metrics.child(metrics.DEADLETTERS, "unit-test")
    assert a is metrics.child(metrics.DEADLETTERS, "unit-test")
    a.inc()
    metrics.DEADLETTERS.labels("unit-test").inc()
    assert sample("goalstream_deadletters_total", stage="unit-test") - before == 2
