"""The model choice on non-linear populations (``tests.sim.population.NONLINEAR`` and
``NONLINEAR_2``): the served model against a same-run plain HistGradientBoostingClassifier
reference and the logistic model; tree drivers (a negative action reported as such), tree storage without pickles,
the quality report, and FORMAT 1 models still loading. Figures print with ``pytest -s``."""

from __future__ import annotations

import functools
import json
import math
import time

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier

from stream_processors.scoring import processor
from stream_processors.scoring import propensity as pr
from tests.bench.model_quality import against_truth, hgb_reference, visible
from tests.sim import population

NOW = 1_750_000_000_000
TRUTH = population.NONLINEAR
ACTIONS = list(TRUTH.actions)
TRUTHS = {"NONLINEAR": population.NONLINEAR, "NONLINEAR_2": population.NONLINEAR_2}


def _nonlinear(seed: int = 7, truth: str = "NONLINEAR", n_train: int = 3000, n_score: int = 500) -> dict:
    return _trained(seed, truth, n_train, n_score)  # positional: one cache entry per case, however it is called


@functools.cache
def _trained(seed: int, truth: str, n_train: int, n_score: int) -> dict:
    t = TRUTHS[truth]
    pop = population.generate(n_train, n_score, seed=seed, now_ms=NOW, params=t)
    labelled = population.labelled(pop, 30)
    started = time.perf_counter()
    served = pr.train("acme", t.goal, 30, list(t.actions), labelled, seed=seed, now_ms=NOW)
    train_s = time.perf_counter() - started
    logistic = pr.train("acme", t.goal, 30, list(t.actions), labelled, seed=seed, now_ms=NOW, kinds=("logistic",))
    reference = hgb_reference(pop, seed)  # the same reference as tests/bench/model_quality.py
    return {"pop": pop, "served": served, "logistic": logistic, "reference": reference, "train_s": train_s}


# (truth, seed, training customers, scored): NONLINEAR_2 at NONLINEAR's size, and at the
# bench's size and first seed. Seeds 2, 4 and 7 at 3,000 customers are the ones where the
# first choice rule (gbt only if better by more than 2 standard errors of the holdout
# log-loss) kept logistic, which then trailed the reference by 0.013-0.038 Spearman.
CASES = [
    pytest.param("NONLINEAR", 7, 3000, 500, id="NONLINEAR-7-3000"),
    *(pytest.param("NONLINEAR_2", seed, 3000, 500, id=f"NONLINEAR_2-{seed}-3000") for seed in (2, 4, 7)),
    pytest.param("NONLINEAR_2", 1, 5000, 1000, id="NONLINEAR_2-1-5000"),
]


@pytest.mark.parametrize("truth, seed, n_train, n_score", CASES)
def test_nonlinear_population_is_served_by_trees_at_least_as_well_as_the_reference(truth, seed, n_train, n_score):
    r = _nonlinear(seed, truth, n_train, n_score)
    t = TRUTHS[truth]
    scoring = r["pop"].cohort("score")
    truth_p = np.array([c.p_true for c in scoring])
    feats = [population.features_now(c, NOW) for c in scoring]
    served, logistic = r["served"], r["logistic"]
    started = time.perf_counter()
    p_served = np.array([served.likelihood(f) for f in feats])
    served_us = (time.perf_counter() - started) / len(feats) * 1e6
    p_logistic = np.array([logistic.likelihood(f) for f in feats])
    p_ref = r["reference"].predict_proba([visible(c, t, NOW) for c in scoring])[:, 1]
    s_rho, s_mae = against_truth(p_served, truth_p)
    l_rho, l_mae = against_truth(p_logistic, truth_p)
    r_rho, r_mae = against_truth(p_ref, truth_p)
    q = served.quality
    print(
        f"\n{truth} seed {seed}, {n_train} customers: served {served.kind} spearman {s_rho:.4f} MAE {s_mae:.4f} | HGB reference {r_rho:.4f} / {r_mae:.4f} | "
        f"logistic {l_rho:.4f} / {l_mae:.4f}; holdout log-loss {q['candidates']}; train {r['train_s']:.1f}s; "
        f"likelihood() {served_us:.1f} us"
    )
    assert served.kind == "gbt"
    assert q["choice"]["log_loss_gain"] > pr.CHOICE_SE * q["choice"]["standard_error"]
    assert s_rho >= r_rho and s_mae <= r_mae
    assert s_rho > l_rho + 0.05 and s_mae < l_mae
    assert served_us < 500


def test_linear_population_keeps_the_logistic_model():
    pop = population.generate(3000, 300, seed=5, now_ms=NOW)
    model = pr.train("acme", "30-day Conversion", 30, ["Style Widget", "Invite Teammate"], population.labelled(pop, 30), seed=5, now_ms=NOW)
    q = model.quality
    assert model.kind == "logistic" and set(q["candidates"]) == {"logistic", "gbt"}
    assert q["candidates"]["logistic"]["log_loss"] == q["log_loss"]
    scoring = pop.cohort("score")
    p = np.array([model.likelihood(population.features_now(c, NOW)) for c in scoring])
    rho, mae = against_truth(p, np.array([c.p_true for c in scoring]))
    assert rho >= 0.95 and mae <= 0.06


def test_many_support_tickets_is_a_negative_driver():
    served = _nonlinear()["served"]
    assert served.kind == "gbt"
    calm = pr.Features({"Connect Integration": 1, "Upload Data": 2, "Browse": 3}, 2.5, {"plan": "Solo"})
    upset = pr.Features({"Connect Integration": 1, "Upload Data": 2, "Browse": 3, "Support Ticket": 5}, 2.5, {"plan": "Solo"})
    top = served.drivers(upset)
    print(f"\ndrivers with 5 support tickets: {top}")
    assert served.likelihood(upset) < served.likelihood(calm) - 0.1
    ticket = next(d for d in top if d["feature"] == "Support Ticket")
    assert ticket["value"] == 5.0 and ticket["contribution"] < -0.5
    assert [abs(d["contribution"]) for d in top] == sorted((abs(d["contribution"]) for d in top), reverse=True)
    # Path contributions add up to this customer's calibrated log-odds minus the average's.
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    total = sum(d["contribution"] for d in served.drivers(upset, top=100))
    assert total == pytest.approx(logit(served.likelihood(upset)) - served._b, abs=1e-3)
    assert served.drivers(upset, top=0) == []


def test_tree_gains_follow_saturation_and_the_plan():
    served = _nonlinear()["served"]
    none = pr.Features({"Upload Data": 2}, 2.5, {"plan": "Solo"})
    connected = pr.Features({"Connect Integration": 2, "Upload Data": 2}, 2.5, {"plan": "Solo"})
    first = served.action_gains(none, ACTIONS)["Connect Integration"]
    third = served.action_gains(connected, ACTIONS)["Connect Integration"]
    assert first > 0.15 and abs(third) < 0.05  # the first integration matters, the third adds nothing
    team = served.action_gains(pr.Features({"Connect Integration": 1}, 2.5, {"plan": "Team"}), ACTIONS)
    solo = served.action_gains(pr.Features({"Connect Integration": 1}, 2.5, {"plan": "Solo"}), ACTIONS)
    assert team["Invite Teammate"] > solo["Invite Teammate"] + 0.05
    imp = pr.importance(served.action_gains(none, ACTIONS))
    assert max(imp, key=imp.get) == "Connect Integration"
    assert sum(imp.values()) == pytest.approx(1.0, abs=1e-3)


def test_tree_walk_is_the_fitted_estimator():
    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, size=(2000, 4)).astype(float)
    y = (rng.random(2000) < 1 / (1 + np.exp(-(X[:, 0] - 2 * np.minimum(X[:, 1], 1) + 0.5)))).astype(int)
    clf = HistGradientBoostingClassifier(max_iter=30, random_state=0).fit(X, y)
    baseline, trees = pr._trees(clf)
    design = pr.Design(("a", "b", "c", "d"), (math.inf,) * 4, 30.0, (), {})
    m = pr.Model("acme", "g", "v", "gbt", NOW, 2000, int(y.sum()), float(y.mean()), None, ["a", "b", "c", "d"], design, baseline=baseline, trees=trees)
    got = np.array([m._raw(list(x)) for x in X[:200]])
    np.testing.assert_allclose(got, clf.decision_function(X[:200]), rtol=0, atol=1e-9)


def test_gbt_json_round_trip_without_pickle():
    pop, served = _nonlinear()["pop"], _nonlinear()["served"]
    text = served.to_json()
    d = json.loads(text)  # plain JSON: numbers and arrays, nothing opaque
    assert d["format"] == pr.FORMAT and d["kind"] == "gbt" and len(d["trees"]) == d["quality"]["candidates"]["gbt"]["trees"]
    assert set(d["trees"][0]) == {"feature", "threshold", "left", "right", "value"}
    assert "pickle" not in text and "inf" not in text.lower() and "nan" not in text.lower()
    again = pr.Model.from_json(text)
    assert again.to_json() == text
    for c in pop.customers[::40]:
        f = population.features_now(c, NOW)
        assert again.likelihood(f) == served.likelihood(f)
        assert again.drivers(f) == served.drivers(f)
        assert again.action_gains(f, ACTIONS) == served.action_gains(f, ACTIONS)


def test_quality_report():
    served = _nonlinear()["served"]
    q = served.quality
    assert q["kind"] == "gbt" and q["n_customers"] == 3000 and q["trained_at"] == "2025-06-15T15:06:40Z"
    assert q["auc"] == served.auc and 0.7 < q["auc"] < 1
    assert q["log_loss"] < q["candidates"]["logistic"]["log_loss"]
    assert len(q["calibration"]) == 10 and sum(b["count"] for b in q["calibration"]) == q["n_holdout_snapshots"]
    assert 500 <= q["n_holdout_customers"] <= 700
    for b in q["calibration"]:
        if b["count"] >= 200:  # calibrated: observed rate near the mean prediction where there are data
            assert abs(b["mean_predicted"] - b["observed_rate"]) < 0.08, b
    assert q["lift_top_decile"] > 1.5
    s = processor.summary(served, rescored=3)
    assert s["quality"] == q and s["kind"] == "gbt" and s["rescored"] == 3
    json.dumps(s, allow_nan=False)
    base = processor.summary(pr.base_rate_model("acme", "g", 3, 10, now_ms=NOW))
    assert base["quality"]["kind"] == "base_rate" and base["quality"]["n_customers"] == 10 and base["quality"]["log_loss"] is None


def test_format_1_models_still_load_and_score():
    """A model stored before model kinds (FORMAT 1: no quality report) scores as it did."""
    pop = population.generate(600, 50, seed=3, now_ms=NOW)
    model = pr.train("acme", "30-day Conversion", 30, ["Style Widget"], population.labelled(pop, 30), now_ms=NOW, kinds=("logistic",))
    old = json.loads(model.to_json())
    old["format"] = 1
    del old["quality"]
    loaded = pr.Model.from_json(json.dumps(old))
    assert loaded.kind == "logistic" and loaded.quality is None
    for c in pop.cohort("score"):
        f = population.features_now(c, NOW)
        assert loaded.likelihood(f) == model.likelihood(f) and loaded.drivers(f) == model.drivers(f)
    assert loaded.report()["kind"] == "logistic" and loaded.report()["auc"] == model.auc
    assert processor.summary(loaded)["quality"]["n_customers"] == 600
    base = json.loads(pr.base_rate_model("acme", "g", 1, 4, now_ms=NOW).to_json())
    base["format"] = 1
    del base["quality"]
    assert pr.Model.from_json(json.dumps(base)).likelihood(pr.Features({}, 1.0, {})) == 0.25
    with pytest.raises(ValueError, match="format"):
        pr.Model.from_json(json.dumps({**old, "format": 99}))
