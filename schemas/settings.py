"""Typed settings, one object per service, built once at the entry point and passed down.

Each setting can come from a command-line option (passed in as a keyword) or from its
environment variable (``GOALSTREAM_*``, named with each field below); modules receive
the object and never read the environment themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _env(name: str, env: str) -> AliasChoices:
    return AliasChoices(name, env)


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    config: Path | None = Field(default=None, validation_alias=_env("config", "GOALSTREAM_CONFIG"))
    data_dir: Path = Field(default=Path("./var"), validation_alias=_env("data_dir", "GOALSTREAM_DATA_DIR"))
    kafka: str | None = Field(default=None, validation_alias=_env("kafka", "KAFKA_BOOTSTRAP_SERVERS"))
    kafka_port: int = Field(default=9092, ge=1, le=65535, validation_alias=_env("kafka_port", "GOALSTREAM_KAFKA_PORT"))
    clickhouse: str | None = Field(default=None, validation_alias=_env("clickhouse", "CLICKHOUSE_URL"))
    topic_partitions: int = Field(default=4, ge=1, le=1024, validation_alias=_env("topic_partitions", "GOALSTREAM_TOPIC_PARTITIONS"))
    topic_replication: int = Field(default=1, ge=1, le=7, validation_alias=_env("topic_replication", "GOALSTREAM_TOPIC_REPLICATION"))
    log_level: str = Field(default="INFO", validation_alias=_env("log_level", "GOALSTREAM_LOG_LEVEL"))
    # "text" for a terminal; "json": one object per line, for a log shipper (README "Logs").
    log_format: Literal["text", "json"] = Field(default="text", validation_alias=_env("log_format", "GOALSTREAM_LOG_FORMAT"))
    # Admin SQL (`goalstream sql`, POST /admin/v1/sql): per-query limits and concurrency.
    sql_max_execution_s: float = Field(default=10.0, gt=0, le=3600, validation_alias=_env("sql_max_execution_s", "GOALSTREAM_SQL_MAX_EXECUTION_S"))
    sql_max_rows_to_read: int = Field(default=1_000_000_000, ge=1, validation_alias=_env("sql_max_rows_to_read", "GOALSTREAM_SQL_MAX_ROWS_TO_READ"))
    sql_max_bytes_to_read: int = Field(default=50_000_000_000, ge=1, validation_alias=_env("sql_max_bytes_to_read", "GOALSTREAM_SQL_MAX_BYTES_TO_READ"))
    sql_max_result_rows: int = Field(default=1_000_000, ge=1, validation_alias=_env("sql_max_result_rows", "GOALSTREAM_SQL_MAX_RESULT_ROWS"))
    sql_max_result_bytes: int = Field(default=512 * 1024 * 1024, ge=1, validation_alias=_env("sql_max_result_bytes", "GOALSTREAM_SQL_MAX_RESULT_BYTES"))
    sql_max_memory_bytes: int = Field(default=2 * 1024**3, ge=1024**2, validation_alias=_env("sql_max_memory_bytes", "GOALSTREAM_SQL_MAX_MEMORY_BYTES"))
    sql_concurrency: int = Field(default=2, ge=1, le=16, validation_alias=_env("sql_concurrency", "GOALSTREAM_SQL_CONCURRENCY"))
    # Retention in days (0: keep forever), applied as table TTLs at every start: score
    # history (propensity_scores), webhook attempts, dead letters (kept by default: each is
    # an event that can still be replayed).
    retention_scores_days: int = Field(default=90, ge=0, le=36_500, validation_alias=_env("retention_scores_days", "GOALSTREAM_RETENTION_SCORES_DAYS"))
    retention_webhook_attempts_days: int = Field(default=30, ge=0, le=36_500, validation_alias=_env("retention_webhook_attempts_days", "GOALSTREAM_RETENTION_WEBHOOK_ATTEMPTS_DAYS"))
    retention_deadletters_days: int = Field(default=0, ge=0, le=36_500, validation_alias=_env("retention_deadletters_days", "GOALSTREAM_RETENTION_DEADLETTERS_DAYS"))
    # A regulation (goalstream forget) sweeps every table, waits this long (longer than every
    # part's refresh of the regulations plus a batch in flight), then sweeps again.
    forget_settle_s: float = Field(default=5.0, ge=0, le=600, validation_alias=_env("forget_settle_s", "GOALSTREAM_FORGET_SETTLE_S"))
    # At most this many log lines per (logger, message) per interval; the rest are
    # counted and reported as one "suppressed K similar messages" line. 0: no limit.
    log_rate_limit: int = Field(default=20, ge=0, validation_alias=_env("log_rate_limit", "GOALSTREAM_LOG_RATE_LIMIT"))
    log_rate_interval_s: float = Field(default=60.0, gt=0, validation_alias=_env("log_rate_interval_s", "GOALSTREAM_LOG_RATE_INTERVAL_S"))
    # Metrics and start-up (README "Metrics"): GET /metrics on the gateway needs the operator's
    # token unless this is false (a private port); worker and dispatcher serve /healthz and
    # /metrics, unauthenticated, on health_host:health_port (None: 9464 worker, 9465
    # dispatcher; 0: off); each process waits up to broker_wait_s for Kafka at start.
    metrics_auth: bool = Field(default=True, validation_alias=_env("metrics_auth", "GOALSTREAM_METRICS_AUTH"))
    health_host: str = Field(default="127.0.0.1", validation_alias=_env("health_host", "GOALSTREAM_HEALTH_HOST"))
    health_port: int | None = Field(default=None, ge=0, le=65535, validation_alias=_env("health_port", "GOALSTREAM_HEALTH_PORT"))
    broker_wait_s: float = Field(default=60.0, ge=0, validation_alias=_env("broker_wait_s", "GOALSTREAM_BROKER_WAIT_S"))
    # Confluent wire format for goalstream.propensity / goalstream.recommendations (schemas/registry.py):
    # off unless a schema registry URL is given; its basic auth is optional.
    schema_registry_url: str | None = Field(default=None, validation_alias=_env("schema_registry_url", "GOALSTREAM_SCHEMA_REGISTRY_URL"))
    schema_registry_username: str | None = Field(default=None, validation_alias=_env("schema_registry_username", "GOALSTREAM_SCHEMA_REGISTRY_USERNAME"))
    schema_registry_password: SecretStr | None = Field(default=None, validation_alias=_env("schema_registry_password", "GOALSTREAM_SCHEMA_REGISTRY_PASSWORD"))

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka or f"127.0.0.1:{self.kafka_port}"

    @property
    def clickhouse_dsn(self) -> str:
        # An absolute path: clickhouse-connect would read chdb://var/x as host "var", database "x".
        return self.clickhouse or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def retention(self) -> dict[str, int]:
        """Table -> days its rows are kept (0: forever), for ``Warehouse.retain``."""
        return {
            "propensity_scores": self.retention_scores_days,
            "webhook_attempts": self.retention_webhook_attempts_days,
            "deadletters": self.retention_deadletters_days,
        }

    def config_path(self, cwd: Path | None = None) -> Path | None:
        """--config, else goalstream.toml in the working directory if present, else None (dev defaults)."""
        if self.config is not None:
            return self.config
        local = (cwd or Path.cwd()) / "goalstream.toml"
        return local if local.is_file() else None


class GatewaySettings(CommonSettings):
    host: str = Field(default="127.0.0.1", validation_alias=_env("host", "GOALSTREAM_HOST"))
    port: int = Field(default=8080, ge=0, le=65535, validation_alias=_env("port", "GOALSTREAM_PORT"))
    tls_cert: Path | None = Field(default=None, validation_alias=_env("tls_cert", "GOALSTREAM_TLS_CERT"))
    tls_key: Path | None = Field(default=None, validation_alias=_env("tls_key", "GOALSTREAM_TLS_KEY"))
    tls_port: int = Field(default=8443, ge=0, le=65535, validation_alias=_env("tls_port", "GOALSTREAM_TLS_PORT"))
    max_body_bytes: int = Field(default=16 * 1024 * 1024, validation_alias=_env("max_body_bytes", "GOALSTREAM_MAX_BODY_BYTES"))
    produce_timeout_s: float = Field(default=15.0, gt=0, validation_alias=_env("produce_timeout_s", "GOALSTREAM_PRODUCE_TIMEOUT_S"))
    kafka_idempotence: bool = Field(default=True, validation_alias=_env("kafka_idempotence", "GOALSTREAM_KAFKA_IDEMPOTENCE"))
    # The access log (README "Logs"): a line per request, only 4xx/5xx ones, or none.
    access_log: Literal["all", "errors", "off"] = Field(default="all", validation_alias=_env("access_log", "GOALSTREAM_ACCESS_LOG"))
    # Rate limits (ingest_gateway/ratelimit.py), all off (0) by default. Requests per
    # second per credential (a dialect's credential of one workspace) and per workspace
    # (all its credentials together), each with a burst (0: one second's worth, at least
    # 1); failed authentications per client IP per minute, after which that IP gets 429
    # until its budget refills. Buckets are kept for at most rate_limit_max_keys keys.
    rate_limit_per_credential: float = Field(default=0.0, ge=0, validation_alias=_env("rate_limit_per_credential", "GOALSTREAM_RATE_LIMIT_PER_CREDENTIAL"))
    rate_limit_per_credential_burst: int = Field(default=0, ge=0, validation_alias=_env("rate_limit_per_credential_burst", "GOALSTREAM_RATE_LIMIT_PER_CREDENTIAL_BURST"))
    rate_limit_per_workspace: float = Field(default=0.0, ge=0, validation_alias=_env("rate_limit_per_workspace", "GOALSTREAM_RATE_LIMIT_PER_WORKSPACE"))
    rate_limit_per_workspace_burst: int = Field(default=0, ge=0, validation_alias=_env("rate_limit_per_workspace_burst", "GOALSTREAM_RATE_LIMIT_PER_WORKSPACE_BURST"))
    rate_limit_auth_failures: int = Field(default=0, ge=0, validation_alias=_env("rate_limit_auth_failures", "GOALSTREAM_RATE_LIMIT_AUTH_FAILURES"))
    rate_limit_max_keys: int = Field(default=100_000, ge=1, validation_alias=_env("rate_limit_max_keys", "GOALSTREAM_RATE_LIMIT_MAX_KEYS"))

    @model_validator(mode="after")
    def _tls_pair(self) -> "GatewaySettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together")
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None


class WorkerSettings(CommonSettings):
    consumer_group: str = Field(default="goalstream-processors", validation_alias=_env("consumer_group", "GOALSTREAM_CONSUMER_GROUP"))
    batch_max: int = Field(default=5000, ge=1, validation_alias=_env("batch_max", "GOALSTREAM_BATCH_MAX"))
    # A batch is what arrives within this window after its first message (or batch_max):
    # with the fetch wait, the floor of POST -> row visible at a trickle.
    batch_within_s: float = Field(default=0.05, gt=0, validation_alias=_env("batch_within_s", "GOALSTREAM_BATCH_WITHIN_S"))
    # How long a fetch waits on the broker for more data (faust's own stream waits 1.5 s).
    fetch_wait_ms: int = Field(default=20, ge=1, le=5000, validation_alias=_env("fetch_wait_ms", "GOALSTREAM_FETCH_WAIT_MS"))
    # The scoring stage rescores what was stored at most this often, coalescing the customers
    # touched meanwhile (a longer interval scores each busy customer fewer times).
    score_interval_s: float = Field(default=0.1, gt=0, le=60, validation_alias=_env("score_interval_s", "GOALSTREAM_SCORE_INTERVAL_S"))
    # Short rebalance/session timeouts make a worker join its group in ~2 s instead of ~40 s
    # (the join waits for the rebalance timeout); production may raise them.
    rebalance_timeout_s: float = Field(default=3.0, gt=0, validation_alias=_env("rebalance_timeout_s", "GOALSTREAM_REBALANCE_TIMEOUT_S"))
    session_timeout_s: float = Field(default=10.0, gt=0, validation_alias=_env("session_timeout_s", "GOALSTREAM_SESSION_TIMEOUT_S"))
    customer_cache_size: int = Field(default=200_000, ge=0, validation_alias=_env("customer_cache_size", "GOALSTREAM_CUSTOMER_CACHE_SIZE"))
    # How many recent message ids a worker remembers to drop a resent event before it is
    # inserted without asking ClickHouse (a replay after a restart is mostly these).
    dedup_window: int = Field(default=200_000, ge=0, validation_alias=_env("dedup_window", "GOALSTREAM_DEDUP_WINDOW"))
    # Every id is also checked against all ids stored (a Bloom filter, 2-4 bytes per stored
    # event in each worker's memory, confirmed in ClickHouse): events holds one row per
    # (workspace, message_id) whenever the resend comes. Off: the window alone.
    exact_dedup: bool = Field(default=True, validation_alias=_env("exact_dedup", "GOALSTREAM_EXACT_DEDUP"))
    # Scoring: a likelihood is published when it first exists or moves by at least this much.
    propensity_threshold: float = Field(default=0.05, ge=0, le=1, validation_alias=_env("propensity_threshold", "GOALSTREAM_PROPENSITY_THRESHOLD"))
    # How often a worker looks for models trained elsewhere (and refreshes base rates).
    model_refresh_s: float = Field(default=10.0, gt=0, validation_alias=_env("model_refresh_s", "GOALSTREAM_MODEL_REFRESH_S"))
    # Scheduled retraining of every goal's model; 0 turns it off (then run `goalstream train`).
    retrain_interval_s: float = Field(default=21_600.0, ge=0, validation_alias=_env("retrain_interval_s", "GOALSTREAM_RETRAIN_INTERVAL_S"))
    score_cache_size: int = Field(default=500_000, ge=0, validation_alias=_env("score_cache_size", "GOALSTREAM_SCORE_CACHE_SIZE"))


class StackSettings(GatewaySettings, WorkerSettings):
    """``goalstream up``: everything in one process tree, the broker embedded unless --kafka."""

    drain_timeout_s: float = Field(default=120.0, gt=0, validation_alias=_env("drain_timeout_s", "GOALSTREAM_DRAIN_TIMEOUT_S"))
    broker_max_rss_mb: int = Field(default=4096, ge=64, validation_alias=_env("broker_max_rss_mb", "GOALSTREAM_BROKER_MAX_RSS_MB"))
    # The embedded broker keeps everything in memory: with the spool on, a 2xx means the
    # records are fsynced under <data-dir>/spool first (off: a crash loses what is not stored).
    spool: bool = Field(default=True, validation_alias=_env("spool", "GOALSTREAM_SPOOL"))
    # At most this many accepted records not yet stored in ClickHouse; above it writers get
    # 503 + Retry-After (0: no bound).
    max_backlog: int = Field(default=100_000, ge=0, validation_alias=_env("max_backlog", "GOALSTREAM_MAX_BACKLOG"))
    # HTTP is served by this many front processes (ingest_gateway/cli/fronts.py), so the
    # gateway's CPU is not taken from the processors' loop; 0: the gateway runs on the
    # stack's own loop, in its process (the fallback, and the tests' cheap mode).
    gateway_processes: int = Field(default=1, ge=0, le=64, validation_alias=_env("gateway_processes", "GOALSTREAM_GATEWAY_PROCESSES"))
    # The fronts run on uvloop when it is installed (measured faster per request); off: asyncio's loop.
    uvloop: bool = Field(default=True, validation_alias=_env("uvloop", "GOALSTREAM_UVLOOP"))
    # With a goal configured, the scoring stage runs in a process of its own
    # (ingest_gateway/cli/scorer.py), off the sinks' loop; off: in the stack's process.
    scoring_process: bool = Field(default=True, validation_alias=_env("scoring_process", "GOALSTREAM_SCORING_PROCESS"))

    @property
    def embedded_broker(self) -> bool:
        return self.kafka is None

    @property
    def spooled(self) -> bool:
        """The write-ahead spool is for the embedded broker; an external Kafka's acks=all is durable."""
        return self.spool and self.embedded_broker
