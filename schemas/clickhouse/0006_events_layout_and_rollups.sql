-- goalstream ClickHouse schema, version 6: events stored once each and pruned by time, typed
-- columns, current-state views that need no FINAL, daily rollups.
-- Applied once by schemas.warehouse.migrate(); never edit an applied file, add the next one.
-- Chosen by measurement on 10M generated events (tests/bench/layout.py, README "Benchmarks").

-- events, rebuilt (a partition key cannot be altered). Every statement up to the EXCHANGE can
-- run again after a crash: events_v6 is dropped and rebuilt from events. After the EXCHANGE,
-- events holds everything and a rerun rebuilds from it.
--  * One row per (workspace, message_id): the events sink checks each id against everything
--    stored before inserting it (stream_processors.sinks.StoredIds); the copy below keeps one
--    row per id of what FINAL showed before (a copy resent in another month collapses here).
--  * Partitions stay bounded whatever a client's clock says: the partition is the month of
--    the timestamp clamped to [received_at - 10 years, received_at + 1 day]; `timestamp`
--    itself is kept as sent. A filter on `timestamp` still prunes parts: ClickHouse keeps a
--    min-max index of every column the partition key reads (EXPLAIN indexes=1: Min-Max).
--  * The sort key stays: measured against customer-first-with-time and time-first layouts it
--    is as fast for analysts' month queries and for the per-customer reads (the Traitly GETs,
--    the scorer's goal state), and it keeps the smallest message_id column.
--  * name is LowCardinality (20-2,000 names per workspace in practice); inserted_at gets a
--    min-max skip index (the sink's restart seed reads the last day of it) and message_id a
--    bloom filter (the sink's exact check reads a few ids by it).
DROP TABLE IF EXISTS events_v6;

CREATE TABLE events_v6
(
    message_id   String,
    workspace    LowCardinality(String),
    customer_id  String,
    anonymous_id String,
    name         LowCardinality(String),
    timestamp    DateTime64(3, 'UTC'),
    received_at  DateTime64(3, 'UTC'),
    properties   String CODEC(ZSTD(3)),
    source       LowCardinality(String),
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3),
    -- The customer the event is about when it was sent: customer_id, else the anonymous id.
    person_id    String MATERIALIZED if(customer_id = '', anonymous_id, customer_id),
    INDEX inserted_at_minmax inserted_at TYPE minmax GRANULARITY 1,
    INDEX message_id_bloom message_id TYPE bloom_filter(0.001) GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(least(greatest(timestamp, received_at - toIntervalYear(10)), received_at + toIntervalDay(1)))
ORDER BY (workspace, customer_id, name, message_id)
SETTINGS non_replicated_deduplication_window = 10000;

INSERT INTO events_v6 (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source, inserted_at)
SELECT message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source, inserted_at
FROM events FINAL;

EXCHANGE TABLES events AND events_v6;

DROP TABLE IF EXISTS events_v6;

-- Views without FINAL: events has one row per message, so a time filter on events_typed
-- reaches the table and prunes its parts.
CREATE OR REPLACE VIEW events_typed AS
SELECT
    e.message_id, e.workspace, e.customer_id, e.anonymous_id, e.name, e.timestamp, e.received_at, e.source,
    e.properties,
    if(i.customer_id = '', e.person_id, i.customer_id) AS identified_id,
    if(startsWith(e.properties, '{') AND isValidJSON(e.properties), e.properties, '{}')::JSON AS props
FROM events AS e
LEFT JOIN customer_identities AS i
    ON i.workspace = e.workspace AND i.merged_id = e.person_id
SETTINGS type_json_skip_duplicated_paths = 1, date_time_input_format = 'best_effort', input_format_try_infer_datetimes_only_datetime64 = 1, join_use_nulls = 0;

-- Each customer's current row (deleted ones left out), the plain columns: what to query
-- instead of `customers FINAL`.
CREATE VIEW IF NOT EXISTS customers_current AS
SELECT workspace, customer_id, created_at, updated_at, name, email, plan, attributes
FROM customers FINAL
WHERE is_deleted = 0;

-- Each goal's current state per customer, without FINAL for the reader.
-- (goal_customers, from version 4, already is this view.)

-- Daily rollup: events and distinct people per workspace, event name and day (of the event's
-- timestamp). Kept by a materialized view at insert; filled from the events already stored.
CREATE TABLE IF NOT EXISTS events_daily_state
(
    workspace  LowCardinality(String),
    name       LowCardinality(String),
    day        Date,
    events     SimpleAggregateFunction(sum, UInt64),
    people     AggregateFunction(uniq, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (workspace, name, day)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS events_daily_mv TO events_daily_state AS
SELECT workspace, name, toDate(timestamp) AS day, count() AS events, uniqState(person_id) AS people
FROM events
GROUP BY workspace, name, day;

INSERT INTO events_daily_state
SELECT workspace, name, toDate(timestamp) AS day, count() AS events, uniqState(person_id) AS people
FROM events
GROUP BY workspace, name, day;

CREATE VIEW IF NOT EXISTS events_daily AS
SELECT workspace, name, day, sum(events) AS events, uniqMerge(people) AS people
FROM events_daily_state
GROUP BY workspace, name, day;

-- Daily rollup of goal conversion per cohort (the day a customer entered the goal): how
-- many entered, how many reached it. Kept by a materialized view on goal_status (every
-- version of a customer's state: distinct counts make repeats harmless).
CREATE TABLE IF NOT EXISTS goal_cohorts_daily_state
(
    workspace    LowCardinality(String),
    goal         LowCardinality(String),
    cohort_day   Date,
    entered      AggregateFunction(uniqExact, String),
    reached      AggregateFunction(uniqExact, String)
)
ENGINE = AggregatingMergeTree
ORDER BY (workspace, goal, cohort_day)
SETTINGS non_replicated_deduplication_window = 10000;

CREATE MATERIALIZED VIEW IF NOT EXISTS goal_cohorts_daily_mv TO goal_cohorts_daily_state AS
SELECT workspace, goal, toDate(entered_at) AS cohort_day,
       uniqExactState(customer_id) AS entered, uniqExactStateIf(customer_id, status = 'reached') AS reached
FROM goal_status
GROUP BY workspace, goal, cohort_day;

INSERT INTO goal_cohorts_daily_state
SELECT workspace, goal, toDate(entered_at) AS cohort_day,
       uniqExactState(customer_id) AS entered, uniqExactStateIf(customer_id, status = 'reached') AS reached
FROM goal_status
GROUP BY workspace, goal, cohort_day;

CREATE VIEW IF NOT EXISTS goal_conversion_daily AS
SELECT workspace, goal, cohort_day, uniqExactMerge(entered) AS entered, uniqExactMerge(reached) AS reached,
       reached / nullIf(entered, 0) AS conversion_rate
FROM goal_cohorts_daily_state
GROUP BY workspace, goal, cohort_day;

-- Smaller history tables: repeated short strings as LowCardinality, long text compressed
-- harder. (Their retention, a TTL, is set from the settings at every start: Warehouse.retain.)
ALTER TABLE propensity_scores
    MODIFY COLUMN model_version LowCardinality(String),
    MODIFY COLUMN drivers String CODEC(ZSTD(3)),
    MODIFY COLUMN likelihood Float64 CODEC(Gorilla, ZSTD(1)),
    MODIFY COLUMN previous_likelihood Nullable(Float64) CODEC(Gorilla, ZSTD(1));

ALTER TABLE webhook_attempts
    MODIFY COLUMN url LowCardinality(String),
    MODIFY COLUMN error String CODEC(ZSTD(3));

ALTER TABLE webhook_deliveries
    MODIFY COLUMN url LowCardinality(String),
    MODIFY COLUMN last_error String CODEC(ZSTD(3)),
    MODIFY COLUMN headers Map(String, String) CODEC(ZSTD(3));
