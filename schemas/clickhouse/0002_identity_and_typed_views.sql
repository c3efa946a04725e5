-- goalstream ClickHouse schema, version 2: customer merges, and typed views for analysts.
-- Applied once by schemas.warehouse.migrate(); never edit an applied file, add the next one.

-- Every merge or alias: from merged_at on, `merged_id` is the customer `customer_id`.
-- (Customer.io merge_customers, Segment alias.) A replayed record collapses on the key.
CREATE TABLE IF NOT EXISTS customer_merges
(
    workspace    LowCardinality(String),
    customer_id  String,
    merged_id    String,
    kind         LowCardinality(String),
    source       LowCardinality(String),
    message_id   String,
    merged_at    DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(merged_at)
ORDER BY (workspace, merged_id, customer_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- The id each merged id now belongs to (its latest merge; one level: chains are resolved
-- by readers that need them, see ingest_gateway.dialects.base.Services.identity).
CREATE VIEW IF NOT EXISTS customer_identities AS
SELECT workspace, merged_id, argMax(m.customer_id, m.merged_at) AS customer_id, max(m.merged_at) AS last_merged_at
FROM customer_merges AS m FINAL
GROUP BY workspace, merged_id;

-- Events once each (FINAL), with their properties typed: `props` is a ClickHouse JSON
-- column whose paths keep the sender's types (Int64, Float64, Bool, String) and whose
-- date-looking strings are Date/DateTime (the view fixes the parser to best_effort so a
-- ClickHouse server with default settings types them as chDB does), and with
-- `identified_id`, the customer the event counts for after merges (an anonymous event's
-- anonymous_id can be merged too, e.g. by a Segment alias).
CREATE VIEW IF NOT EXISTS events_typed AS
SELECT
    e.message_id, e.workspace, e.customer_id, e.anonymous_id, e.name, e.timestamp, e.received_at, e.source,
    e.properties,
    if(i.customer_id = '', if(e.customer_id = '', e.anonymous_id, e.customer_id), i.customer_id) AS identified_id,
    if(startsWith(e.properties, '{') AND isValidJSON(e.properties), e.properties, '{}')::JSON AS props
FROM events AS e FINAL
LEFT JOIN customer_identities AS i
    ON i.workspace = e.workspace AND i.merged_id = if(e.customer_id = '', e.anonymous_id, e.customer_id)
SETTINGS type_json_skip_duplicated_paths = 1, date_time_input_format = 'best_effort', input_format_try_infer_datetimes_only_datetime64 = 1, join_use_nulls = 0;

-- Current customers (deleted ones left out), attributes typed as in events_typed.
CREATE VIEW IF NOT EXISTS customers_typed AS
SELECT
    workspace, customer_id, created_at, updated_at, name, email, plan, attributes,
    if(startsWith(attributes, '{') AND isValidJSON(attributes), attributes, '{}')::JSON AS attrs
FROM customers FINAL
WHERE is_deleted = 0
SETTINGS type_json_skip_duplicated_paths = 1, date_time_input_format = 'best_effort', input_format_try_infer_datetimes_only_datetime64 = 1;
