-- goalstream ClickHouse schema, version 5: webhook deliveries, attempts and endpoint state.
-- Applied once by schemas.warehouse.migrate(); never edit an applied file, add the next one.

-- One row per (endpoint, record) delivery; its latest version is its state. Pending ones
-- are what a dispatcher reloads on start, so retries survive a restart (and a broker that
-- forgets everything). `record`/`headers` keep the source message for dead-lettering.
CREATE TABLE IF NOT EXISTS webhook_deliveries
(
    delivery_id       String,
    workspace         LowCardinality(String),
    endpoint_id       LowCardinality(String),
    url               String,
    object            LowCardinality(String),
    customer_id       String,
    webhook_id        String,
    body              String CODEC(ZSTD(3)),
    source_topic      LowCardinality(String),
    source_partition  Int32,
    source_offset     Int64,
    record            String CODEC(ZSTD(3)),
    headers           Map(String, String),
    attempts          UInt16,
    next_attempt_at   DateTime64(3, 'UTC'),
    status            LowCardinality(String),
    last_error        String,
    created_at        DateTime64(3, 'UTC'),
    updated_at        DateTime64(3, 'UTC'),
    version           UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY delivery_id
SETTINGS non_replicated_deduplication_window = 10000;

-- Every attempt, for analysts and for debugging a receiver.
CREATE TABLE IF NOT EXISTS webhook_attempts
(
    delivery_id      String,
    workspace        LowCardinality(String),
    endpoint_id      LowCardinality(String),
    url              String,
    webhook_id       String,
    attempt          UInt16,
    attempted_at     DateTime64(3, 'UTC'),
    duration_ms      Float64,
    status_code      Nullable(UInt16),
    outcome          LowCardinality(String),
    error            String,
    next_attempt_at  Nullable(DateTime64(3, 'UTC'))
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(attempted_at)
ORDER BY (workspace, endpoint_id, attempted_at);

-- Endpoints a receiver disabled with 410 Gone (until a replay turns them back on).
CREATE TABLE IF NOT EXISTS webhook_endpoints
(
    endpoint_id  String,
    workspace    LowCardinality(String),
    url          String,
    disabled     UInt8,
    reason       String,
    updated_at   DateTime64(3, 'UTC'),
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY endpoint_id;
