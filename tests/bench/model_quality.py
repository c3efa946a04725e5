"""The propensity model against a known truth: the served model next to a same-run plain
gradient-boosting reference and the logistic model alone, and the per-score cost of each kind.

What flows: ``tests.sim.population.generate`` (a truth: ``NONLINEAR``, ``NONLINEAR_2`` and
the linear ``Truth()``) -> the training cohort as ``Labelled`` -> ``propensity.train`` three ways: as
served (both kinds, chosen by holdout log-loss), logistic only (the model before model
kinds) and, as the reference, scikit-learn's ``HistGradientBoostingClassifier()`` with its
defaults, fitted on one row per training customer (each event's count and the plan, i.e.
what the scoring cohort has visible: ``visible`` and ``hgb_reference``, which the end-to-end
test tests/integration/test_goals_nonlinear.py uses too) -> the scoring cohort (signed up 2.1-2.9 days ago, all
events done, outcome pending) scored by each and compared with ``p_true``: Spearman and the
mean absolute error. Then the cost of ``likelihood``, ``drivers`` and ``action_gains`` per
call (pure Python, what the hot path runs per customer and goal).

Usage: ``python tests/bench/model_quality.py [--train 5000] [--score 1000] [--seeds 1 2 3]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from sklearn.ensemble import HistGradientBoostingClassifier  # noqa: E402

from stream_processors.scoring import propensity as pr  # noqa: E402
from tests.sim import population  # noqa: E402

NOW = 1_750_000_000_000
TRUTHS = {"non-linear": population.NONLINEAR, "non-linear-2": population.NONLINEAR_2, "linear": population.Truth()}


def visible(c: population.Customer, truth: population.Truth, now_ms: int) -> list[float]:
    """What the reference sees of a customer: each simulated event's count inside the window
    (for a scoring customer: so far, at now_ms), and the plan as 0/1."""
    counts = population.features_now(c, now_ms, window_days=truth.window_days, target=truth.target).counts
    return [float(counts.get(e.name, 0)) for e in truth.events] + [float(c.plan == truth.plan)]


def against_truth(p, p_true) -> tuple[float, float]:
    """(Spearman, mean absolute error) of likelihoods ``p`` against the true probabilities."""
    return float(spearmanr(p, p_true).statistic), float(np.mean(np.abs(np.asarray(p) - np.asarray(p_true))))


def hgb_reference(pop: population.Population, seed: int) -> HistGradientBoostingClassifier:
    """A plain HistGradientBoostingClassifier (defaults) fitted on one row per training
    customer: visible counts -> reached the target inside the window."""
    truth = pop.truth
    outcomes = [lab.reached_at_ms is not None for lab in population.labelled(pop, truth.window_days)]
    rows = [visible(c, truth, pop.now_ms) for c in pop.cohort("train")]
    return HistGradientBoostingClassifier(random_state=seed).fit(rows, outcomes)


def _per_call_us(fn, items, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, (time.perf_counter() - started) / len(items) * 1e6)
    return best


def run(name: str, truth: population.Truth, n_train: int, n_score: int, seed: int) -> tuple[list[tuple], dict]:
    pop = population.generate(n_train, n_score, seed=seed, now_ms=NOW, params=truth)
    labelled = population.labelled(pop, truth.window_days)
    actions = list(truth.actions)
    started = time.perf_counter()
    served = pr.train("acme", truth.goal, truth.window_days, actions, labelled, seed=seed, now_ms=NOW)
    train_s = time.perf_counter() - started
    logistic = pr.train("acme", truth.goal, truth.window_days, actions, labelled, seed=seed, now_ms=NOW, kinds=("logistic",))
    gbt = pr.train("acme", truth.goal, truth.window_days, actions, labelled, seed=seed, now_ms=NOW, kinds=("gbt",))
    reference = hgb_reference(pop, seed)

    scoring = pop.cohort("score")
    p_true = np.array([c.p_true for c in scoring])
    feats = [population.features_now(c, NOW, window_days=truth.window_days, target=truth.target) for c in scoring]
    rows = []
    for label, p in (
        (f"served ({served.kind})", np.array([served.likelihood(f) for f in feats])),
        ("HGB reference", reference.predict_proba([visible(c, truth, NOW) for c in scoring])[:, 1]),
        ("logistic only", np.array([logistic.likelihood(f) for f in feats])),
    ):
        rows.append((name, seed, label, *against_truth(p, p_true)))
    q = served.quality
    info = {
        "train_s": train_s,
        "log_loss": {k: c["log_loss"] for k, c in q["candidates"].items()},
        "trees": q["candidates"]["gbt"]["trees"],
        "cost": {},
    }
    for m in (logistic, gbt):
        info["cost"][m.kind] = {
            "likelihood": _per_call_us(m.likelihood, feats),
            "drivers": _per_call_us(m.drivers, feats),
            "action_gains": _per_call_us(lambda f, m=m: m.action_gains(f, actions), feats),
            "json_kb": len(m.to_json()) / 1024,
        }
    return rows, info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--score", type=int, default=1000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--truth", choices=[*TRUTHS, "all"], default="all")
    args = ap.parse_args(argv)
    print(f"{args.train} training customers, {args.score} scored; truth: p_true of the scoring cohort\n")
    print(f"{'population':<12} {'seed':>4}  {'model':<17} {'spearman':>8} {'MAE':>7}")
    infos = []
    for name, truth in TRUTHS.items():
        if args.truth not in ("all", name):
            continue
        for seed in args.seeds:
            rows, info = run(name, truth, args.train, args.score, seed)
            for pop, s, label, rho, mae in rows:
                print(f"{pop:<12} {s:>4}  {label:<17} {rho:>8.4f} {mae:>7.4f}")
            ll = ", ".join(f"{k} {v:.4f}" for k, v in info["log_loss"].items())
            print(f"{'':<18} holdout log-loss {ll}; {info['trees']} trees; train (both kinds) {info['train_s']:.1f}s")
            infos.append((name, seed, info))
    print("\nper-call cost (us, pure Python, best of 3 over the scoring cohort)")
    print(f"{'population':<12} {'seed':>4}  {'kind':<9} {'likelihood':>10} {'drivers':>8} {'gains':>7} {'json KiB':>9}")
    for name, seed, info in infos:
        for kind, c in info["cost"].items():
            print(
                f"{name:<12} {seed:>4}  {kind:<9} {c['likelihood']:>10.1f} {c['drivers']:>8.1f} {c['action_gains']:>7.1f} {c['json_kb']:>9.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
