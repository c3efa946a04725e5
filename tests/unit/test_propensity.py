"""The propensity model against a simulated population whose true propensity is known.

Trains in memory on the simulator's training cohort (outcomes known), scores the scoring
cohort as a live scorer would (``features_now``) and compares with ``p_true``. Figures
print with ``pytest -s``.
"""

from __future__ import annotations

import functools
import json
import math
import time

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from stream_processors.scoring import propensity as pr
from tests.sim import population

NOW = 1_750_000_000_000
ACTIONS = ["Style Widget", "Invite Teammate"]
GOAL = "30-day Conversion"


def _train(pop: population.Population, seed: int, **kw) -> pr.Model:
    return pr.train("acme", GOAL, 30, ACTIONS, population.labelled(pop, 30), seed=seed, now_ms=NOW, **kw)


@functools.cache
def _trained(seed: int) -> tuple[population.Population, pr.Model, float]:
    pop = population.generate(3000, 500, seed=seed, now_ms=NOW)
    started = time.perf_counter()
    model = _train(pop, seed=seed)
    return pop, model, time.perf_counter() - started


@pytest.fixture(scope="module")
def trained() -> tuple[population.Population, pr.Model]:
    pop, model, _ = _trained(1)
    return pop, model


def _reliability_error(p: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Customer-weighted mean over 10 likelihood bins of |mean likelihood - mean p_true|."""
    which = np.minimum((p * bins).astype(int), bins - 1)
    return sum(abs(p[which == b].mean() - truth[which == b].mean()) * (which == b).sum() for b in range(bins) if (which == b).any()) / len(p)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_served_likelihood_recovers_true_propensity(seed):
    pop, model, train_s = _trained(seed)
    scoring = pop.cohort("score")
    feats = [population.features_now(c, NOW) for c in scoring]
    started = time.perf_counter()
    p = np.array([model.likelihood(f) for f in feats])
    per_call_us = (time.perf_counter() - started) / len(feats) * 1e6
    truth = np.array([c.p_true for c in scoring])

    rho = spearmanr(p, truth).statistic
    mae = float(np.mean(np.abs(p - truth)))
    rel = _reliability_error(p, truth)
    style_first = np.mean([(imp := pr.importance(model.action_gains(f, ACTIONS)))["Style Widget"] > imp["Invite Teammate"] for f in feats])
    # The best possible AUC: the true propensity ranking the training cohort's outcomes.
    outcomes = [lab.reached_at_ms is not None for lab in population.labelled(pop, 30)]
    oracle_auc = roc_auc_score(outcomes, [c.p_true for c in pop.cohort("train")])
    print(
        f"\nseed {seed}: spearman {rho:.4f}, calibration |p - p_true| {mae:.4f}, reliability (10 bins) {rel:.4f}, "
        f"Style Widget first {style_first:.1%}, holdout AUC {model.auc:.3f} (true p: {oracle_auc:.3f}), base rate {model.base_rate:.3f}, "
        f"train {train_s:.2f}s, likelihood() {per_call_us:.1f} us/call"
    )
    assert model.kind == "logistic"
    assert rho >= 0.95
    assert mae <= 0.06 and rel <= 0.06
    assert style_first >= 0.95
    assert abs(model.auc - oracle_auc) < 0.04
    assert per_call_us < 500


def test_snapshots_do_not_inflate_converters(trained):
    """Mean likelihood at day 2.5 matches the scoring cohort's true conversion rate, i.e.
    converters' snapshots are not over-represented early in the window."""
    pop, model = trained
    scoring = pop.cohort("score")
    p = [model.likelihood(population.features_now(c, NOW)) for c in scoring]
    assert abs(np.mean(p) - np.mean([c.p_true for c in scoring])) < 0.03


def test_base_rate_below_minimums():
    pop = population.generate(300, 0, seed=4, now_ms=NOW)
    labelled = population.labelled(pop, 30)
    few = pr.train("acme", GOAL, 30, ACTIONS, labelled[:99], now_ms=NOW)
    assert few.kind == "base_rate" and few.auc is None and few.features == []
    assert few.n_customers == 99
    assert few.base_rate == pytest.approx(sum(c.reached_at_ms is not None for c in labelled[:99]) / 99)
    f = population.features_now(pop.customers[0], NOW)
    assert few.likelihood(f) == few.base_rate
    assert few.drivers(f) == []
    assert few.action_gains(f, ACTIONS) == {"Style Widget": 0.0, "Invite Teammate": 0.0}

    # Enough customers but too few of one class.
    expired = [c for c in labelled if c.reached_at_ms is None][:150]
    reached = [c for c in labelled if c.reached_at_ms is not None][:9]
    lopsided = pr.train("acme", GOAL, 30, ACTIONS, expired + reached, now_ms=NOW)
    assert lopsided.kind == "base_rate" and lopsided.n_positive == 9
    assert pr.train("acme", GOAL, 30, ACTIONS, expired + reached, min_per_class=9, now_ms=NOW).kind == "logistic"

    empty = pr.base_rate_model("acme", GOAL, 0, 0, now_ms=NOW)
    assert empty.base_rate == 0.0 and empty.trained_at_ms == NOW
    assert pr.base_rate_model("acme", GOAL, 3, 12).base_rate == 0.25


def test_json_round_trip_scores_identically(trained):
    pop, model = trained
    text = model.to_json()
    assert "inf" not in text.lower() and "nan" not in text.lower()
    json.loads(text)  # plain JSON
    again = pr.Model.from_json(text)
    assert again.to_json() == text
    for attr in ("workspace", "goal", "version", "kind", "trained_at_ms", "n_customers", "n_positive", "base_rate", "auc", "features"):
        assert getattr(again, attr) == getattr(model, attr)
    for c in pop.customers[::50]:
        f = population.features_now(c, NOW)
        assert again.likelihood(f) == model.likelihood(f)
        assert again.drivers(f) == model.drivers(f)
        assert again.action_gains(f, ACTIONS) == model.action_gains(f, ACTIONS)
    base = pr.base_rate_model("acme", GOAL, 7, 20, now_ms=NOW)
    assert pr.Model.from_json(base.to_json()).likelihood(f) == 0.35


def test_drivers_explain_the_score(trained):
    _, model = trained
    assert model.features[:3] == ["Style Widget", "Invite Teammate", "Browse"]
    assert "days_since_entry" in model.features and "plan" in model.features
    keen = pr.Features({"Style Widget": 4, "Invite Teammate": 2, "Browse": 3}, 2.5, {"plan": "Pro"})
    idle = pr.Features({"Browse": 3}, 2.5, {"plan": "Starter"})
    top = model.drivers(keen)
    print(f"\ndrivers of a keen Pro customer: {top}\ndrivers of an idle Starter: {model.drivers(idle)}")
    assert len(top) == 3
    assert [abs(d["contribution"]) for d in top] == sorted((abs(d["contribution"]) for d in top), reverse=True)
    assert top[0] == {"feature": "Style Widget", "value": 4.0, "contribution": top[0]["contribution"]}
    assert top[0]["contribution"] > 0
    by_feature = {d["feature"]: d for d in model.drivers(keen, top=100)}
    assert by_feature["plan"]["value"] == "Pro" and by_feature["plan"]["contribution"] > 0
    assert by_feature["Invite Teammate"]["contribution"] > 0
    assert {d["feature"]: d["contribution"] for d in model.drivers(idle, top=100)}["Style Widget"] < 0
    # The contributions add up to this customer's log-odds minus the average customer's.
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    average = model._b + sum(w * m for w, m in zip(model._w, model.mean))
    total = sum(d["contribution"] for d in model.drivers(keen, top=100))
    assert total == pytest.approx(logit(model.likelihood(keen)) - average, abs=1e-3)
    assert model.drivers(keen, top=0) == []


def test_action_gains_and_importance(trained):
    _, model = trained
    f = pr.Features({"Style Widget": 1}, 2.5, {"plan": "Starter"})
    gains = model.action_gains(f, [*ACTIONS, "Never Seen"])
    assert gains["Style Widget"] > gains["Invite Teammate"] > 0
    assert gains["Never Seen"] == 0.0
    counts = dict(f.counts, **{"Style Widget": 2})
    assert gains["Style Widget"] == model.likelihood(pr.Features(counts, 2.5, f.attributes)) - model.likelihood(f)
    imp = pr.importance(gains)
    assert imp["Style Widget"] > imp["Invite Teammate"] > 0 and imp["Never Seen"] == 0.0
    assert sum(imp.values()) == pytest.approx(1.0, abs=1e-3)


def test_importance_is_relative_to_the_payload():
    assert pr.importance({"a": 0.3, "b": 0.1, "c": -0.2}) == {"a": 0.75, "b": 0.25, "c": 0.0}
    assert pr.importance({"a": 1 / 3, "b": 2 / 3}) == {"a": 0.3333, "b": 0.6667}
    assert pr.importance({"a": 0.0, "b": -0.1}) == {"a": 0.0, "b": 0.0}
    assert pr.importance({}) == {}


def test_version_is_unique_per_training(trained):
    pop, model = trained
    labelled = population.labelled(pop, 30)
    later = pr.train("acme", GOAL, 30, ACTIONS, labelled, seed=1, now_ms=NOW + 1)
    other_seed = pr.train("acme", GOAL, 30, ACTIONS, labelled, seed=2, now_ms=NOW)
    assert len({model.version, later.version, other_seed.version}) == 3
    assert model.version.startswith(f"{NOW}-")


def test_counts_are_clipped_where_training_saw_none(trained):
    """A customer with a hundred times the usual count is not scored as a certainty."""
    _, model = trained
    usual = pr.Features({"Browse": 3}, 2.5, {"plan": "Starter"})
    flood = pr.Features({"Browse": 3000}, 2.5, {"plan": "Starter"})
    assert abs(model.likelihood(flood) - model.likelihood(usual)) < 0.1
    unknown_plan = pr.Features({}, 2.5, {"plan": "Enterprise"})
    no_plan = pr.Features({}, 2.5, {})
    assert model.likelihood(unknown_plan) == model.likelihood(no_plan)


def test_simulated_population_is_what_the_brief_says():
    pop = population.generate(400, 100, seed=9, now_ms=NOW)
    day = population.DAY_MS
    for c in pop.cohort("score"):
        assert 2.1 * day <= NOW - c.entered_at_ms <= 2.9 * day
        assert all(n != "purchase" and ts < NOW for n, ts in c.events)
    labelled = population.labelled(pop, 30)
    for c, lab in zip(pop.cohort("train"), labelled):
        assert NOW - c.entered_at_ms >= 31 * day
        assert lab.window_end_ms == c.entered_at_ms + 30 * day
        if lab.reached_at_ms is not None:
            assert c.entered_at_ms + 3 * day <= lab.reached_at_ms < lab.window_end_ms
        assert "purchase" not in lab.events
        assert sum(map(len, lab.events.values())) == sum(c.counts.values())
    rate = np.mean([lab.reached_at_ms is not None for lab in labelled])
    assert abs(rate - np.mean([c.p_true for c in pop.cohort("train")])) < 0.06
    again = population.generate(400, 100, seed=9, now_ms=NOW)
    assert again == pop


async def test_simulator_sends_the_population_through_the_api(tmp_path):
    """``simulate.send`` against a stand-in of the Traitly endpoints that sheds load once."""
    from aiohttp import web

    from tests.sim import simulate

    received: dict[str, list] = {"customer": [], "event": []}
    shed = {"done": False}

    async def handler(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Token tk_live_123"
        if not shed["done"]:
            shed["done"] = True
            return web.json_response({"error": {"type": "api_error", "message": "busy"}}, status=503, headers={"Retry-After": "0"})
        body = await request.json()
        assert isinstance(body, list) and 1 <= len(body) <= 1000
        received[request.path.rsplit("/", 1)[1]].append(body)
        return web.json_response({"data": [], "object": "x"})

    app = web.Application()
    app.router.add_post("/api/v1/customer", handler)
    app.router.add_post("/api/v1/event", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        pop = population.generate(1200, 300, seed=5, now_ms=NOW)
        sent = await simulate.send(f"http://127.0.0.1:{port}", "tk_live_123", pop, concurrency=2)
    finally:
        await runner.cleanup()

    customers = [c for batch in received["customer"] for c in batch]
    events = [e for batch in received["event"] for e in batch]
    assert sent == {"customers": 1500, "events": len(events)}
    assert len(received["customer"]) == 2  # 1000 + 500
    assert sorted(c["customer_id"] for c in customers) == sorted(c.customer_id for c in pop.customers)
    assert {"customer_id", "name", "email", "plan", "created_at"} <= set(customers[0])
    assert len({e["message_id"] for e in events}) == len(events) == sum(len(c.events) for c in pop.customers)
    assert all(e["created_at"] < NOW / 1000 for e in events)
    assert simulate.event_payloads(pop) == simulate.event_payloads(population.generate(1200, 300, seed=5, now_ms=NOW))

    path = tmp_path / "truth.jsonl"
    simulate.write_truth(pop, path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 1500
    scoring = [r for r in rows if r["cohort"] == "score"]
    assert len(scoring) == 300 and all(r["gains"]["Style Widget"] > r["gains"]["Invite Teammate"] > 0 for r in scoring)
