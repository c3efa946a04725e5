"""The scoring processor: a live propensity per customer and goal, and recommended actions.

Flow: a sink stores a batch in ClickHouse -> it hands the customers the batch touched to
``Scorer.score`` -> ``goals.load_states`` recomputes their goal states from ClickHouse ->
``goals.assess`` with the goal's model -> every score into ClickHouse (``propensity_scores``,
with ``goal_status`` and ``goal_aggregates`` for analysts) -> when a likelihood first
exists or moves by at least the threshold (or the goal is reached by a customer we had
scored), a ``GoalPropensityChange`` on ``goalstream.propensity`` and, for an active
customer, a ``RecommendedNextActions`` on ``goalstream.recommendations``.

``train`` fits each goal's model on the customers whose outcome is known, stores it in
``propensity_models`` and rescores the goal's active customers. A background loop picks
up models trained elsewhere and retrains on a schedule; only the worker that owns
partition 0 of ``goalstream.events`` does either, so scaled-out workers do not repeat it.

Records are published before the scores are stored and their ids are derived from the
batch that caused them, so a replayed batch republishes the same ids (receivers can
deduplicate) and nothing is announced that was not published.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any, Callable

import orjson

from schemas import metrics, model, topics
from schemas.config import Goal, GoalstreamConfig
from schemas.kafka import RecordProducer
from schemas.model import Record
from schemas.regulations import Forgotten
from schemas.settings import WorkerSettings
from schemas.warehouse import Warehouse

from ..retry import retry
from . import features
from . import goals as g
from . import propensity

log = logging.getLogger("goalstream.scoring")

PROPENSITY_CHANGE = "goalstream.GoalPropensityChange"
RECOMMENDED_ACTIONS = "goalstream.RecommendedNextActions"
# Customers per scoring round trip to ClickHouse. Measured (chDB, 300k events of 5,000
# customers): the goal states of 200, 1,000 or 5,000 customers took 116, 112 and 215 ms to
# read, since their rows are spread over nearly every granule; so the live stage reads a
# cycle's customers at once, and only a rescore of more is cut in chunks.
CHUNK = 10000
LIVE_CHUNK = 5000
# Within a chunk the loop is given back after this much assessing, so a chunk never holds
# up the sinks' inserts or the gateway's answers sharing the loop. By time, not by count: an
# assessment costs ~50 us with a logistic model and ~135 us with gbt (tests/bench/
# model_quality.py), so a fixed count held the loop 2.7x longer once trees served.
YIELD_AFTER_S = 0.005
# A chunk's records are published this many goal states at a time, each send overlapping
# the next ones' assessment (one in flight at a time: aiokafka's send_batch waits on the
# partition's previous batch), so the first customers' changes are out before the last are
# assessed. All are acknowledged before any of the chunk's scores is stored.
PUBLISH_EVERY = 500
SCORE_COLUMNS = (
    "workspace", "goal", "customer_id", "scored_at", "likelihood", "previous_likelihood", "published",
    "status", "model_version", "model_kind", "trigger", "drivers", "message_id",
)
STATUS_COLUMNS = ("workspace", "goal", "customer_id", "status", "entered_at", "window_end", "reached_at", "plan", "updated_at", "version")
AGG_COLUMNS = ("workspace", "goal", "customer_id", "event_name", "window_count", "total_count", "updated_at", "version")
MODEL_COLUMNS = ("workspace", "goal", "version", "kind", "trained_at", "n_customers", "n_positive", "base_rate", "auc", "model")


class _Rows:
    """What one ``score`` call stores once all its chunks are assessed and published."""

    def __init__(self) -> None:
        self.scores: list[list[Any]] = []
        self.statuses: list[list[Any]] = []
        self.aggs: list[list[Any]] = []
        self.published: dict[tuple[str, str, str], float] = {}
        self.written: dict[tuple[str, ...], tuple[Any, ...]] = {}  # what the inserts will have stored


def _message_id(*parts: str) -> str:
    # str(uuid.UUID(bytes=digest)) spelled out: the same text at a third of the cost.
    h = hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _token(*parts: str) -> str:
    return hashlib.blake2b("|".join(parts).encode(), digest_size=16).hexdigest()


class Scorer:
    def __init__(
        self,
        settings: WorkerSettings,
        config: GoalstreamConfig,
        warehouse: Warehouse,
        producer: RecordProducer,
        is_leader: Callable[[], bool] = lambda: True,
        models: g.ModelStore | None = None,
        forgotten: Forgotten | None = None,
    ):
        self.settings = settings
        # Nobody forgotten is scored while their regulation runs (or ever, if suppressed),
        # and what is remembered of them goes when they are forgotten.
        self.forgotten = forgotten
        self.config = config
        self.warehouse = warehouse
        self.producer = producer
        self.is_leader = is_leader
        self.models = models or g.ModelStore(warehouse, ttl_s=settings.model_refresh_s)
        # The last published likelihood per (workspace, goal, customer); None = never.
        self.last: OrderedDict[tuple[str, str, str], float | None] = OrderedDict()
        self.versions: dict[tuple[str, str], str] = {}
        self._lock = asyncio.Lock()  # the two sinks may touch one customer at once
        self._task: asyncio.Task | None = None
        self.scored = 0
        self.published = 0
        # Identities and customer rows, kept between rounds until a customer record touches them.
        self.known = g.Known(settings.customer_cache_size)
        if forgotten is not None:
            forgotten.on_forgotten(self._forgotten)
        # The goal_status and goal_aggregates rows as last stored: a row is written again only
        # when it changes (a customer's event moves one name's counts, not the other names'
        # or the status), so a round inserts a fraction of the rows. Forgotten after a
        # restart: then every row is written once more, which ReplacingMergeTree collapses.
        self.written: dict[tuple[str, ...], tuple[Any, ...]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self.versions = await self._stored_versions()
        if self.config.goals:
            self._task = asyncio.create_task(self._background(), name="goalstream-scoring-background")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    async def _background(self) -> None:
        """Pick up models trained elsewhere; retrain on schedule (leader only)."""
        loop = asyncio.get_running_loop()
        last_train = loop.time()
        while True:
            await asyncio.sleep(self.settings.model_refresh_s)
            try:
                if not self.is_leader():
                    continue
                stored = await self._stored_versions()
                for key, version in stored.items():
                    if self.versions.get(key) != version:
                        self.versions[key] = version
                        goal = self._goal(*key)
                        if goal is not None:
                            log.info("new model %s for %s/%s: rescoring active customers", version, *key)
                            self.models.put(await self.models.load(key[0], goal))
                            await self.rescore(key[0], goal, f"model:{version}")
                interval = self.settings.retrain_interval_s
                if interval > 0 and loop.time() - last_train >= interval:
                    last_train = loop.time()
                    await self.train()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scoring background task failed; trying again later")

    async def _stored_versions(self) -> dict[tuple[str, str], str]:
        rows = await self.warehouse.rows(
            "SELECT workspace, goal, argMax(version, trained_at) AS version FROM propensity_models GROUP BY workspace, goal", {}
        )
        return {(r["workspace"], r["goal"]): r["version"] for r in rows}

    def _goal(self, workspace: str, name: str) -> Goal | None:
        return next((x for x in self.config.goals_of(workspace) if x.name == name), None)

    # -- scoring -----------------------------------------------------------------------

    def rebalanced(self) -> None:
        """Partitions were taken from this scorer: another may have scored (and written, and
        published for) their customers meanwhile, so what is remembered of anyone is read
        afresh: identities and customer rows, rows written, likelihoods published."""
        self.known = g.Known(self.settings.customer_cache_size)
        self.written.clear()
        self.last.clear()

    def forget(self, touched: dict[str, set[str]]) -> None:
        """A record on ``goalstream.customers`` changed these customers: read them afresh."""
        for workspace, ids in touched.items():
            self.known.forget(workspace, ids)

    def _forgotten(self, forgotten: dict[str, set[str]]) -> None:
        self.forget(forgotten)
        for key in [k for k in self.last if k[2] in forgotten.get(k[0], ())]:
            del self.last[key]
        self.written.clear()  # only saves rewriting unchanged rows: read afresh for everyone

    async def score(self, touched: dict[str, set[str]], trigger: str, token: str, chunk: int = CHUNK) -> int:
        """Score every goal of each touched customer; returns how many scores were made.

        Chunk by chunk: goal states read, assessed, changes published; then, per workspace,
        one insert per table for all chunks (small inserts would pile up parts)."""
        n = 0
        for workspace, ids in touched.items():
            if not self.config.goals_of(workspace):
                continue
            ordered = sorted(i for i in ids if i)
            if (f := self.forgotten) is not None:
                await f.ready(self.warehouse)
                if f.any:
                    kept = [i for i in ordered if not f.holds(workspace, (i,))]
                    if len(kept) < len(ordered):
                        metrics.FORGOTTEN_RECORDS.labels("scorer").inc(len(ordered) - len(kept))
                    ordered = kept
            if not ordered:
                continue
            async with self._lock:
                rows = _Rows()
                for start in range(0, len(ordered), chunk):
                    await self._score_chunk(workspace, ordered[start : start + chunk], trigger, f"{token}/{start}", rows)
                tok = _token(token, workspace, trigger)
                insert = self.warehouse.insert
                if rows.scores:
                    await insert("propensity_scores", rows.scores, SCORE_COLUMNS, f"scores-{tok}")
                if rows.statuses:
                    await insert("goal_status", rows.statuses, STATUS_COLUMNS, f"status-{tok}")
                if rows.aggs:
                    await insert("goal_aggregates", rows.aggs, AGG_COLUMNS, f"aggs-{tok}")
                for key, likelihood in rows.published.items():
                    self._remember(key, likelihood)
                # Only once stored: a failed insert is retried with every row it had.
                if len(self.written) + len(rows.written) > self.settings.score_cache_size * 4:
                    self.written.clear()
                self.written.update(rows.written)
                self.scored += len(rows.scores)
                self.published += len(rows.published)
                n += len(rows.scores)
        return n

    async def _score_chunk(self, workspace: str, ids: list[str], trigger: str, token: str, out: "_Rows") -> None:
        now = model.now_ms()
        states = await g.load_states(self.warehouse, self.config, workspace, ids, now, known=self.known)
        if not states:
            return
        await self._load_last(workspace, {s.customer_id for s in states})
        goals = {s.goal.name: s.goal for s in states}
        models = {name: await self.models.get(workspace, goal) for name, goal in goals.items()}
        records: list[Record] = []
        sending: asyncio.Future | None = None
        published = 0  # score records among those sent, counted once the chunk is through
        held = time.perf_counter()
        try:
            for i, s in enumerate(states):
                if i and i % PUBLISH_EVERY == 0 and records:
                    if sending is not None:
                        await sending
                    sending = asyncio.ensure_future(self.producer.publish(records, batched=True))
                    published += sum(r.topic == topics.PROPENSITY for r in records)
                    records = []
                if time.perf_counter() - held >= YIELD_AFTER_S:
                    await asyncio.sleep(0)
                    held = time.perf_counter()
                records += self._assess(s, models[s.goal.name], now, token, trigger, out)
            if sending is not None:
                await sending
            if records:
                await self.producer.publish(records, batched=True)  # first: never store "published" for what was not
                published += sum(r.topic == topics.PROPENSITY for r in records)
            metrics.SCORES.labels("computed").inc(len(states))
            metrics.SCORES.labels("published").inc(published)
        finally:
            if sending is not None and not sending.done():
                sending.cancel()  # the chunk failed: its retry publishes the same ids again
                await asyncio.gather(sending, return_exceptions=True)

    def _assess(self, s: g.GoalState, m: propensity.Model, now: int, token: str, trigger: str, out: "_Rows") -> list[Record]:
        """One customer and goal: assessed, its rows added to ``out``; returns what to publish."""
        workspace = s.workspace
        threshold = self.settings.propensity_threshold
        scores, statuses, aggs, published = out.scores, out.statuses, out.aggs, out.published
        version = now * 1000
        records: list[Record] = []
        a = g.assess(s, m, now)
        key = (workspace, s.goal.name, s.customer_id)
        prev = self.last.get(key)
        if a.status == "active":
            publish = prev is None or abs(a.likelihood - prev) >= threshold
        elif a.status == "reached":
            publish = prev is not None and prev != 1.0  # tell whoever saw it active, once
        else:
            publish = False
        mid = _message_id(token, workspace, s.goal.name, s.customer_id)
        if publish:
            records += self._records(s, a, prev, mid, now)
            published[key] = a.likelihood
        if a.status == "active" or publish:
            scores.append([
                workspace, s.goal.name, s.customer_id, now, a.likelihood, prev, 1 if publish else 0,
                a.status, a.model_version, a.model_kind, trigger, orjson.dumps(a.drivers).decode(), mid,
            ])
        # Timestamps as epoch ms: clickhouse-connect writes ints to a DateTime64(3) as its
        # ticks, with no datetime made and taken apart per value.
        status = (a.status, s.entered_at_ms, s.window_end_ms, s.reached_at_ms, str(s.attributes.get("plan") or ""))
        if self.written.get(key) != status:
            statuses.append([workspace, s.goal.name, s.customer_id, *status, now, version])
            out.written[key] = status
        for name, total in s.total_counts.items():
            counts = (s.window_counts.get(name, 0), total)
            akey = (*key, name)
            if self.written.get(akey) != counts:
                aggs.append([workspace, s.goal.name, s.customer_id, name, *counts, now, version])
                out.written[akey] = counts
        return records

    def _records(self, s: g.GoalState, a: g.Assessment, prev: float | None, mid: str, now: int) -> list[Record]:
        key = model.partition_key(s.workspace, s.customer_id)
        change = {
            "message_id": mid,
            "workspace": s.workspace,
            "customer_id": s.customer_id,
            "goal_name": s.goal.name,
            "likelihood": a.likelihood,
            "previous_likelihood": prev,
            "status": a.status,
            "model_version": a.model_version,
            "model_kind": a.model_kind,
            "drivers": [
                {"feature": str(d["feature"]), "value": _text(d.get("value")), "contribution": float(d["contribution"])}
                for d in a.drivers
            ],
            "goal_days_left": a.goal_days_left,
            "timestamp": now,
        }
        out = [Record(PROPENSITY_CHANGE, topics.PROPENSITY, key, change)]
        if a.status == "active":
            actions = {
                "message_id": mid,
                "workspace": s.workspace,
                "customer_id": s.customer_id,
                "goal_name": s.goal.name,
                "likelihood": a.likelihood,
                "model_version": a.model_version,
                "model_kind": a.model_kind,
                "actions": a.actions,
                "timestamp": now,
            }
            out.append(Record(RECOMMENDED_ACTIONS, topics.RECOMMENDATIONS, key, actions))
        return out

    async def _load_last(self, workspace: str, ids: set[str]) -> None:
        """The last published likelihoods, from ClickHouse for customers not in the cache."""
        goals = [x.name for x in self.config.goals_of(workspace)]
        missing = sorted({cid for cid in ids if any((workspace, goal, cid) not in self.last for goal in goals)})
        if not missing:
            return
        rows = await self.warehouse.rows(
            "SELECT goal, customer_id, argMax(likelihood, scored_at) AS l FROM propensity_scores "
            "WHERE workspace = {ws:String} AND customer_id IN {ids:Array(String)} AND published = 1 "
            "GROUP BY goal, customer_id",
            {"ws": workspace, "ids": missing},
        )
        found = {(workspace, r["goal"], r["customer_id"]): float(r["l"]) for r in rows}
        for cid in missing:
            for goal in goals:
                self._remember((workspace, goal, cid), found.get((workspace, goal, cid)))

    def _remember(self, key: tuple[str, str, str], likelihood: float | None) -> None:
        self.last[key] = likelihood
        self.last.move_to_end(key)
        while len(self.last) > self.settings.score_cache_size:
            self.last.popitem(last=False)

    async def score_with_retry(self, touched: dict[str, set[str]], trigger: str, token: str, chunk: int = LIVE_CHUNK) -> None:
        """Used by the sinks after a batch is stored: wait out ClickHouse or Kafka outages
        (the batch is not acknowledged meanwhile). A bug in scoring is logged, not allowed
        to stop ingestion: scores can be recomputed (``goalstream train`` rescores)."""
        try:
            await retry(lambda: self.score(touched, trigger, token, chunk), what=f"scoring a {trigger} batch", logger=log)
        except Exception:
            log.exception("scoring a %s batch failed; its customers keep their previous scores", trigger)

    # -- training ----------------------------------------------------------------------

    async def rescore(self, workspace: str, goal: Goal, token: str) -> int:
        rows = await self.warehouse.rows(
            "SELECT customer_id FROM goal_customers WHERE workspace = {ws:String} AND goal = {g:String} AND status = 'active'",
            {"ws": workspace, "g": goal.name},
        )
        ids = {r["customer_id"] for r in rows}
        return await self.score({workspace: ids}, "retrain", token) if ids else 0

    async def train(self, goal_name: str | None = None, rescore: bool = True, workspace: str | None = None) -> list[dict[str, Any]]:
        """Fit, store and start using each goal's model (or the one named; ``workspace``:
        only that workspace's goals); then rescore."""
        summaries = []
        now = model.now_ms()
        for goal in self.config.goals:
            if goal_name is not None and goal.name != goal_name:
                continue
            if workspace is not None and goal.workspace != workspace:
                continue
            m = await train_goal(self.warehouse, goal, now)
            await store_model(self.warehouse, m)
            self.models.put(m)
            self.versions[(goal.workspace, goal.name)] = m.version
            rescored = await self.rescore(goal.workspace, goal, f"model:{m.version}") if rescore else 0
            summaries.append(summary(m, rescored))
            log.info("trained %s/%s: %s", goal.workspace, goal.name, summaries[-1])
        return summaries


# Up to this many labelled customers a goal's events are read into Python and the snapshots
# drawn there; above it the snapshot features are computed in ClickHouse (features.py:
# bounded memory). Both paths end in the same propensity.fit: both model kinds compete.
CLICKHOUSE_FEATURES_ABOVE = 50_000


async def train_goal(warehouse: Warehouse, goal: Goal, now: int) -> propensity.Model:
    """One goal's model, trained by the path its size calls for (tests/integration/
    test_train_features.py keeps the two paths' snapshot rows equal)."""
    if await features.labelled_count(warehouse, goal, now) > CLICKHOUSE_FEATURES_ABOVE:
        return await features.train(warehouse, goal, now_ms=now)
    labelled = await g.labelled(warehouse, goal.workspace, goal, now)
    names = [a.event_name for a in goal.actions]
    loop = asyncio.get_running_loop()
    # CPU-bound: off the event loop.
    return await loop.run_in_executor(
        None, lambda: propensity.train(goal.workspace, goal.name, goal.window_days, names, labelled, now_ms=now)
    )


async def store_model(warehouse: Warehouse, m: propensity.Model) -> None:
    row = [m.workspace, m.goal, m.version, m.kind, model.from_ms(m.trained_at_ms), m.n_customers, m.n_positive, m.base_rate, m.auc, m.to_json()]
    await warehouse.insert("propensity_models", [row], MODEL_COLUMNS, None)


def summary(m: propensity.Model, rescored: int | None = None) -> dict[str, Any]:
    out = {
        "workspace": m.workspace,
        "goal": m.goal,
        "kind": m.kind,
        "version": m.version,
        "training_customers": m.n_customers,
        "positives": m.n_positive,
        "base_rate": round(m.base_rate, 4),
        "holdout_auc": None if m.auc is None else round(m.auc, 4),
        # The holdout report: auc, log_loss, calibration (10 bins), lift_top_decile, training
        # size and date, kind, and the candidates' log-loss the kind was chosen by.
        "quality": m.report(),
    }
    if rescored is not None:
        out["rescored"] = rescored
    return out
