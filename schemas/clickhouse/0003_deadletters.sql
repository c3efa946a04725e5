-- goalstream ClickHouse schema, version 3: dead letters, kept where they survive a broker restart.
-- Applied once by schemas.warehouse.migrate(); never edit an applied file, add the next one.

-- Every record on goalstream.deadletter, byte for byte (key, value, headers) with the
-- reason and where it failed, so `goalstream deadletter replay` can send it again and
-- analysts can see what went wrong. stage = the processor (events-sink, customers-sink)
-- or gateway:<dialect> for a refused request whose sender could not see the error.
CREATE TABLE IF NOT EXISTS deadletters
(
    id               String,
    reason           String,
    stage            LowCardinality(String),
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    key              Nullable(String),
    value            Nullable(String) CODEC(ZSTD(3)),
    headers          Map(String, String),
    failed_at        DateTime64(3, 'UTC'),
    stored_at        DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(failed_at)
ORDER BY (stage, id)
SETTINGS non_replicated_deduplication_window = 10000;
