"""Every Prometheus metric goalstream exports, in one registry shared by the gateway, the
stream processors, the scorer and the webhook dispatcher (names prefixed ``goalstream_``).

What flows through here: the parts count (``inc``/``observe``/``set``) on the objects below;
``exposition()`` renders them for ``GET /metrics`` (the gateway app, and the health port of
``goalstream worker``/``dispatcher``). Labels are bounded by construction: a dialect name, a
route's template (never the raw path), a status code, a topic, a partition, a table, a stage,
an outcome; never a workspace, customer or message id.

Multi-process (``goalstream up``): the HTTP fronts are separate processes from the stack
process that runs the processors (and the scoring process is another one), and one scrape of
any front must show all of them. prometheus-client's multiprocess mode does exactly that:
every process writes its values to memory-mapped files in one directory and a scrape merges
them (``MultiProcessCollector``). We chose it over merging the stack's exposition fetched
over the fronts' IPC channel because that would still miss the other fronts' and the scoring
process's counters, and it costs the hot path nothing more than a write into an mmap.
``use_directory`` is called at the composition root (``goalstream up``) before any child
starts: it empties the directory (a previous run's files would add to this run's counters)
and sets ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's own interface, read by the
children it spawns). Every metric below has labels, so no value is created before that call
(a labelled metric makes its value on the first ``labels()``). Alone (``goalstream gateway``,
``worker``, ``dispatcher``) nothing is set and each process exports its own registry.
"""

from __future__ import annotations

import os
import shutil
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client import disable_created_metrics, multiprocess

disable_created_metrics()  # no *_created series: half the exposition, and no dashboard uses them
REGISTRY = CollectorRegistry(auto_describe=True)
ENV = "PROMETHEUS_MULTIPROC_DIR"

# Latency buckets from 0.5 ms (a spooled publish) to 30 s (a stalled broker or ClickHouse).
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROWS = (1, 10, 50, 100, 500, 1000, 2500, 5000, 10000, 50000)

HTTP_REQUESTS = Counter(
    "goalstream_http_requests", "HTTP requests answered by the gateway, by dialect, route template, method and status.",
    ["dialect", "route", "method", "status"], registry=REGISTRY,
)
RECORDS_ACCEPTED = Counter(
    "goalstream_records_accepted", "Records the gateway accepted (durable in Kafka or the spool before the 2xx), by dialect and topic.",
    ["dialect", "topic"], registry=REGISTRY,
)
PUBLISH_SECONDS = Histogram(
    "goalstream_publish_seconds", "Time from a request's records handed to the producer to their acknowledgement, by dialect.",
    ["dialect"], buckets=_LATENCY, registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "goalstream_consumer_lag", "Records on a partition not yet handled by its consumer (high watermark - 1 - last handled offset).",
    ["consumer", "topic", "partition"], registry=REGISTRY, multiprocess_mode="mostrecent",
)
INSERT_ROWS = Histogram(
    "goalstream_insert_rows", "Rows per ClickHouse insert (batch size), by table.",
    ["table"], buckets=_ROWS, registry=REGISTRY,
)
INSERT_SECONDS = Histogram(
    "goalstream_insert_seconds", "ClickHouse insert latency, by table.",
    ["table"], buckets=_LATENCY, registry=REGISTRY,
)
DEADLETTERS = Counter(
    "goalstream_deadletters", "Records sent to goalstream.deadletter, by the stage that refused them.",
    ["stage"], registry=REGISTRY,
)
SCORES = Counter(
    "goalstream_scores", "Propensity scores: computed by the scorer, and published to the scores topic.",
    ["state"], registry=REGISTRY,
)
WEBHOOK_ATTEMPTS = Counter(
    "goalstream_webhook_attempts", "Webhook delivery attempts, by outcome.",
    ["outcome"], registry=REGISTRY,
)
FORGOTTEN_RECORDS = Counter(
    "goalstream_forgotten_records", "Records of a forgotten or suppressed person not stored or sent, by stage "
    "(gateway: refused or discarded for a suppressed person; a sink: in flight at the request, or suppressed; "
    "scorer, dispatcher: not scored or sent).",
    ["stage"], registry=REGISTRY,
)

# The names as Prometheus exposes them (a Counter ``x`` is scraped as ``x_total``), for the
# dashboard test and the README.
EXPOSED: dict[str, str] = {
    "goalstream_http_requests_total": "counter",
    "goalstream_records_accepted_total": "counter",
    "goalstream_publish_seconds": "histogram",
    "goalstream_consumer_lag": "gauge",
    "goalstream_insert_rows": "histogram",
    "goalstream_insert_seconds": "histogram",
    "goalstream_deadletters_total": "counter",
    "goalstream_scores_total": "counter",
    "goalstream_webhook_attempts_total": "counter",
    "goalstream_forgotten_records_total": "counter",
}

# The request's dialect, set by the gateway's metrics middleware, read where records are
# published (``Services.publish`` is shared by every dialect).
DIALECT: ContextVar[str] = ContextVar("goalstream_dialect", default="none")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_refreshers: list[Callable[[], None]] = []
_directory: Path | None = None
# (metric, label values) -> the labelled child: ``labels()`` costs ~3 us of argument checks
# and a lock per call, a dict lookup ~0.1 us; bounded as the labels are.
_children: dict[tuple, Any] = {}


def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, cached: for the per-request paths."""
    key = (metric, labels)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*labels)
    return found


def directory_of(data_dir: Path) -> Path:
    """Where ``goalstream up`` keeps the processes' metric files."""
    return (data_dir / "run" / "metrics").resolve()


def use_directory(path: Path) -> None:
    """Multiprocess mode under ``path`` for this process and the children it starts (emptied
    first: the files of a previous run would count again)."""
    global _directory
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    os.environ[ENV] = str(path)  # prometheus-client's interface: the children read it at import
    values.ValueClass = values.MultiProcessValue()
    _children.clear()  # children made before count in memory only
    _directory = path


def join_directory(path: Path) -> None:
    """In a child of ``goalstream up`` (an HTTP front): scrape the stack's directory (its
    values are already written there: the inherited environment chose multiprocess mode)."""
    global _directory
    _directory = path


def on_collect(refresh: Callable[[], None]) -> None:
    """Run ``refresh`` before each exposition of this process (gauges computed on demand,
    e.g. consumer lag in ``goalstream worker``)."""
    _refreshers.append(refresh)


def exposition() -> tuple[bytes, str]:
    """The text exposition and its content type: every process's values in multiprocess
    mode, this process's registry otherwise."""
    for refresh in list(_refreshers):
        try:
            refresh()
        except Exception:  # a metric that cannot be computed now must not fail the scrape
            pass
    if _directory is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(_directory))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
