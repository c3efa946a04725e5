-- goalstream ClickHouse schema, version 7: data-subject regulations (forget, suppress).
-- Applied once by schemas.warehouse.migrate(); never edit an applied file, add the next one.

-- One row per regulation; its latest version is its state (pending -> running -> completed,
-- or failed with the error). The audit trail of who asked for what, and, for every part of
-- the pipeline, the list of forgotten ids it refuses to store (schemas.regulations.Forgotten).
-- It holds no personal data beyond the ids: `ids` are the requested customer id and the ids
-- found to be the same person (merged, aliased, identified anonymous ids); `removed` counts
-- rows per table, never their content.
CREATE TABLE IF NOT EXISTS regulations
(
    id            String,
    workspace     LowCardinality(String),
    customer_id   String,
    ids           Array(String),
    suppress      UInt8,
    requested_by  String,
    requested_at  DateTime64(3, 'UTC'),
    state         LowCardinality(String),
    removed       Map(String, UInt64),
    completed_at  Nullable(DateTime64(3, 'UTC')),
    error         String,
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (workspace, id);
