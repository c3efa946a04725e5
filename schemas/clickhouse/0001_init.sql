-- goalstream ClickHouse schema, version 1: events and customers.
-- Applied once by schemas.warehouse.migrate(); never edit an applied file, add the next one.

-- Every accepted event. ReplacingMergeTree keyed on message_id collapses a record that
-- reached the table twice (a replayed Kafka batch whose boundaries moved); the insert
-- deduplication token (see stream_processors) stops the common case at insert time.
CREATE TABLE IF NOT EXISTS events
(
    message_id   String,
    workspace    LowCardinality(String),
    customer_id  String,
    anonymous_id String,
    name         String,
    timestamp    DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC'),
    properties   String CODEC(ZSTD(3)),
    source       LowCardinality(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(timestamp)
ORDER BY (workspace, customer_id, name, message_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- One row per version of a customer; read with FINAL for the current one. A delete is
-- a row with is_deleted = 1, which FINAL leaves out.
CREATE TABLE IF NOT EXISTS customers
(
    workspace    LowCardinality(String),
    customer_id  String,
    created_at   DateTime64(3, 'UTC'),
    updated_at   DateTime64(3, 'UTC'),
    name         String,
    email        String,
    plan         String,
    attributes   String CODEC(ZSTD(3)),
    message_id   String,
    version      UInt64,
    is_deleted   UInt8
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (workspace, customer_id)
SETTINGS non_replicated_deduplication_window = 10000;
