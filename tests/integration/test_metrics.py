"""``goalstream up`` under a mixed load, then one ``GET /metrics`` on the HTTP front: the
front's request counters and the stack process's inserts and consumer lag in one scrape
(prometheus-client's multiprocess mode under <data-dir>/run/metrics)."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def scrape(stack) -> tuple[str, dict[tuple[str, tuple], float]]:
    token = json.loads((stack.workdir / "var" / "run" / "stack.json").read_text())["token"]
    req = urllib.request.Request(f"{stack.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_one_scrape_shows_the_fronts_and_the_stack(stack):
    req = urllib.request.Request(f"{stack.url}/metrics")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("/metrics answered without a token")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401

    segment = {"Authorization": "Basic " + base64.b64encode(b"wk_1:").decode()}
    traitly = {"Authorization": "Token tk_live_123"}
    for i in range(20):
        assert post(f"{stack.url}/v1/track", json.dumps({"userId": f"m{i}", "event": "Metric Test"}).encode(), segment) == 200
    for i in range(10):
        body = json.dumps({"customer_id": f"t{i}", "name": "metric_test"}).encode()
        assert post(f"{stack.url}/api/v1/event", body, traitly) == 200
    for _ in range(5):
        assert post(f"{stack.url}/v1/track", b'{"userId": "x", "event": "y"}', {"Authorization": "Basic " + base64.b64encode(b"wrong:").decode()}) == 401
    assert post(f"{stack.url}/api/v1/event", b"{not json", traitly) == 400

    def settled():
        text, samples = scrape(stack)
        inserted = value(samples, "goalstream_insert_rows_sum", table="events")
        return inserted >= 30 and any(k[0] == "goalstream_consumer_lag" for k in samples) and (text, samples)

    text, samples = wait_for(settled, timeout=60)
    assert value(samples, "goalstream_http_requests_total", dialect="segment", route="/v1/track", method="POST", status="200") == 20
    assert value(samples, "goalstream_http_requests_total", dialect="segment", route="/v1/track", method="POST", status="401") == 5
    assert value(samples, "goalstream_http_requests_total", dialect="traitly", route="/api/v1/event", method="POST", status="200") == 10
    assert value(samples, "goalstream_http_requests_total", dialect="traitly", route="/api/v1/event", method="POST", status="400") == 1
    assert value(samples, "goalstream_records_accepted_total", dialect="segment", topic="goalstream.events") == 20
    assert value(samples, "goalstream_records_accepted_total", dialect="traitly", topic="goalstream.events") == 10
    assert value(samples, "goalstream_publish_seconds_count", dialect="segment") == 20
    assert value(samples, "goalstream_insert_seconds_count", table="events") >= 1
    lags = [v for (n, labels), v in samples.items() if n == "goalstream_consumer_lag" and dict(labels)["topic"] == "goalstream.events"]
    assert lags and all(v >= 0 for v in lags)
    excerpt = [line for line in text.splitlines() if not line.startswith("#") and (
        "http_requests_total" in line or "records_accepted" in line or "insert_rows_sum" in line
        or "insert_rows_count" in line or "insert_seconds_count" in line or "consumer_lag" in line
        or "publish_seconds_count" in line or "deadletters" in line or "scores_total" in line)]
    (stack.workdir / "metrics-excerpt.txt").write_text("\n".join(excerpt) + "\n")
    print("\n".join(excerpt))
