-- goalstream ClickHouse schema, version 4: goals, per-goal aggregates, models and scores.
-- Applied once by schemas.warehouse.migrate(); never edit an applied file, add the next one.

-- Each customer's state in each goal of its workspace: entered at sign-up, for window_days.
-- Written by the scoring processor whenever it looks at the customer; read through
-- goal_customers, which also expires an active goal whose window has ended.
CREATE TABLE IF NOT EXISTS goal_status
(
    workspace    LowCardinality(String),
    goal         LowCardinality(String),
    customer_id  String,
    status       LowCardinality(String),
    entered_at   DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    reached_at   Nullable(DateTime64(3, 'UTC')),
    plan         String,
    updated_at   DateTime64(3, 'UTC'),
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (workspace, goal, customer_id)
SETTINGS non_replicated_deduplication_window = 10000;

-- Per workspace, goal, customer and event name: the count inside the goal window and all-time.
CREATE TABLE IF NOT EXISTS goal_aggregates
(
    workspace     LowCardinality(String),
    goal          LowCardinality(String),
    customer_id   String,
    event_name    String,
    window_count  UInt32,
    total_count   UInt32,
    updated_at    DateTime64(3, 'UTC'),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (workspace, goal, customer_id, event_name)
SETTINGS non_replicated_deduplication_window = 10000;

-- Every trained model (the newest per workspace and goal is the one in use). `model` is
-- the JSON of stream_processors.propensity.Model: plain numbers, no pickles.
CREATE TABLE IF NOT EXISTS propensity_models
(
    workspace    LowCardinality(String),
    goal         LowCardinality(String),
    version      String,
    kind         LowCardinality(String),
    trained_at   DateTime64(3, 'UTC'),
    n_customers  UInt32,
    n_positive   UInt32,
    base_rate    Float64,
    auc          Nullable(Float64),
    model        String CODEC(ZSTD(3))
)
ENGINE = MergeTree
ORDER BY (workspace, goal, trained_at);

-- Every score computed, published or not (published = 1 when it went to goalstream.propensity).
CREATE TABLE IF NOT EXISTS propensity_scores
(
    workspace            LowCardinality(String),
    goal                 LowCardinality(String),
    customer_id          String,
    scored_at            DateTime64(3, 'UTC'),
    likelihood           Float64,
    previous_likelihood  Nullable(Float64),
    published            UInt8,
    status               LowCardinality(String),
    model_version        String,
    model_kind           LowCardinality(String),
    trigger              LowCardinality(String),
    drivers              String,
    message_id           String
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(scored_at)
ORDER BY (workspace, goal, customer_id, scored_at)
SETTINGS non_replicated_deduplication_window = 10000;

-- Each customer's current state in each goal (an active goal whose window has ended is expired).
CREATE VIEW IF NOT EXISTS goal_customers AS
SELECT
    workspace, goal, customer_id,
    if(status = 'active' AND window_end <= now64(3), 'expired', status) AS status,
    entered_at, window_end, reached_at, plan, updated_at
FROM goal_status FINAL;

-- Conversion rate per goal and sign-up cohort (week): reached / (reached + expired).
CREATE VIEW IF NOT EXISTS goal_conversion_by_cohort AS
SELECT
    workspace, goal, toStartOfWeek(entered_at) AS cohort_week,
    count() AS customers,
    countIf(status = 'reached') AS reached,
    countIf(status = 'expired') AS expired,
    countIf(status = 'active') AS active,
    reached / nullIf(reached + expired, 0) AS conversion_rate
FROM goal_customers
GROUP BY workspace, goal, cohort_week;

-- Completion of each event inside the goal window among converters and non-converters
-- (customers whose outcome is known): how many did it at least once, and how often.
CREATE VIEW IF NOT EXISTS goal_action_completion AS
SELECT
    s.workspace AS workspace, s.goal AS goal, a.event_name AS event_name,
    if(s.converted, 'converters', 'non-converters') AS segment,
    s.customers AS customers, a.completed AS completed,
    a.completed / s.customers AS completion_rate,
    a.avg_window_count AS avg_window_count
FROM
(
    SELECT workspace, goal, status = 'reached' AS converted, count() AS customers
    FROM goal_customers WHERE status != 'active'
    GROUP BY workspace, goal, converted
) AS s
INNER JOIN
(
    SELECT g.workspace AS workspace, g.goal AS goal, g.status = 'reached' AS converted, x.event_name AS event_name,
           countIf(x.window_count > 0) AS completed, avg(x.window_count) AS avg_window_count
    FROM (SELECT workspace, goal, customer_id, status FROM goal_customers WHERE status != 'active') AS g
    INNER JOIN (SELECT workspace, goal, customer_id, event_name, window_count FROM goal_aggregates FINAL) AS x
        ON x.workspace = g.workspace AND x.goal = g.goal AND x.customer_id = g.customer_id
    GROUP BY workspace, goal, converted, event_name
) AS a
ON a.workspace = s.workspace AND a.goal = s.goal AND a.converted = s.converted;
