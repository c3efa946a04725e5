"""Goal propensity: train a calibrated per-goal model and score customers with it.

Flow: ``Labelled`` customers (outcome known: reached the goal's target inside the window,
or expired) -> ``train`` (snapshots) -> ``fit`` -> ``Model`` (JSON via ``to_json``/``from_json``, no pickle) ->
per event, ``Model.likelihood(Features)``, ``drivers`` (why this score) and
``action_gains`` -> ``importance`` (the payload's recommended next actions).

Training examples are snapshots: each labelled customer is looked at ``SNAPSHOTS`` times
t drawn over the whole window [entered, window_end) (denser early on); a snapshot at or
after the customer's conversion is dropped (no longer at risk, and a live scorer would not
score them). Features are what the customer had before t (event counts with ts < t, days
since entry, attributes) and the label is whether they reach the target later. Drawing t
over the whole window for everyone matters: drawing it in [entered, reached_at) would
crowd converters' snapshots into the early days and inflate the predicted rate there.

Two model kinds are fitted on the same snapshots, and the one with the lower holdout
log-loss serves (``fit``; a tie keeps logistic; the paired standard error of the difference
is reported with it):

- ``logistic``: an L2 logistic regression (scikit-learn) on standardized features: counts
  of each configured action and of the most frequent other events (clipped at a high
  quantile so heavy users do not extrapolate a linear effect), a piecewise-linear spline of
  days since entry, and one-hot plan. Scoring is one dot product (weights folded per raw
  column).
- ``gbt``: gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier) on the
  raw counts, days since entry and one-hot plan: saturating effects, negative actions and
  interactions with the plan come for free. The number of trees is chosen on the
  out-of-fold log-loss. The trees are stored as plain JSON arrays per node (feature,
  threshold, left, right, value) and scored by walking them in pure Python. Drivers are
  path contributions (Saabas): the change of the node value at each split of the decision
  path, credited to the split's feature, so a feature that lowers the likelihood (support
  tickets) is reported with a negative contribution.

Both are calibrated by Platt scaling on out-of-fold decision values (``CALIBRATION_FOLDS``
refits; above ``ONE_FOLD_ABOVE`` training snapshots one held-out fold, and the model fitted
on the others serves) of the training customers, and measured on a holdout of customers
never fitted on;
the serving model's holdout report (AUC, log-loss, a 10-bin calibration curve, lift at the
top decile, training size and date, kind, and both candidates' log-loss) is kept in
``quality``. Scoring uses only the stored numbers (pure Python, no numpy or scikit-learn).

Per-call cost measured with ``tests/bench/model_quality.py`` (5,000 training customers,
1,000 scored, a shared 2-core machine), in microseconds: logistic likelihood 7-12,
drivers 13-22, action_gains of 2-3 actions 23-32; gbt (40-60 trees of at most 15 leaves)
likelihood 16-20, drivers 28-37, action_gains 47-82. The stored gbt JSON is 40-60 KiB.

The snapshots reach ``fit`` as arrays (``Snapshots``) by either path: ``train`` draws them in
Python from ``Labelled`` objects; ``features.train`` computes them in ClickHouse for a large
goal. Everything after that (caps, split, both fits, the choice, the report) is one code.

Without enough labelled customers of both outcomes, the model is ``base_rate``: every
customer scores the goal's base rate, with no drivers and no action gains.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.model import iso_s, reduced_report
from schemas.model import now_ms as wall_ms

DAY_MS = 86_400_000
SNAPSHOTS = 10  # snapshot times per labelled customer
# Snapshot times are entered + window * u**SNAPSHOT_POWER (u uniform): denser early in the
# window, where customers act most and so most live scores are asked for. Any draw that
# does not depend on the outcome leaves P(reached | features, t) unbiased; this one only
# spends more of the data where it is used (measured: halves the calibration error at
# day 2-3 of the simulator's 30-day window compared with uniform t).
SNAPSHOT_POWER = 2.0
# Hinges of the days-since-entry spline, as fractions of window_days: dense early, where
# counts are still growing and the hazard changes fastest, sparser later.
KNOT_FRACTIONS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 0.9)
MAX_OTHER_EVENTS = 20
MAX_LEVELS = 10  # one-hot levels per categorical attribute, plus OTHER
CATEGORICAL = ("plan",)
OTHER = "other"
# Counts are clipped at COUNT_CAP_FACTOR x this quantile of the training snapshots: a little
# extrapolation of a monotone effect is fine, 50x the usual count is not.
COUNT_CAP_QUANTILE = 0.999
COUNT_CAP_FACTOR = 1.5
CALIBRATION_FOLDS = 4  # folds over the non-holdout customers, for out-of-fold Platt scaling
HOLDOUT = 0.2  # share of customers kept for the holdout AUC
L2_C = 1.0
DAYS = "days_since_entry"
FORMAT = 2  # of to_json's payload (2: model kinds, trees, the quality report)
READABLE_FORMATS = (1, 2)  # FORMAT 1 (logistic or base_rate, no quality report) still loads
KINDS = ("logistic", "gbt")  # the trained kinds train() chooses between
# Gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier on raw counts, days
# since entry and one-hot plan). The number of trees is chosen on the out-of-fold log-loss of
# the calibration folds (at most GBT_MAX_TREES), so the holdout stays unseen.
GBT_MAX_TREES = 150
GBT_PARAMS = dict(learning_rate=0.1, max_leaf_nodes=15, min_samples_leaf=40, l2_regularization=1.0)
# gbt serves only if its holdout log-loss is lower than the logistic model's by more than
# this many standard errors of the paired difference (per holdout customer). 0: the lower
# log-loss serves. 2 was tried first, to keep the simpler model where both are as good; on
# NONLINEAR_2 at 3,000 customers it kept logistic for 4 of 9 seeds (gains of 0.7-1.8
# standard errors), which then trailed a plain gradient-boosting reference by 0.013-0.038
# Spearman. On the linear populations gbt's log-loss is higher anyway (logistic serves).
CHOICE_SE = 0.0
# The trees fit at most this many training snapshots (a random subset of the training
# customers above it): measured on 2 cores, one fit of 150 trees on 300k rows x 32 columns
# takes 3.6 s idle.
GBT_MAX_ROWS = 400_000
# Above this many training snapshots (for the trees: of their subset) one calibration fold is
# held out, not CALIBRATION_FOLDS in turn, and the model fitted on the other folds serves:
# one fit instead of CALIBRATION_FOLDS + 1, when three quarters of the data fix the model as
# well as all of it.
ONE_FOLD_ABOVE = 100_000
FIT_THREADS = 1  # BLAS/OpenMP threads of a fit of at most ONE_FOLD_ABOVE snapshots (see fit)
CALIBRATION_BINS = 10


@dataclass(slots=True)  # made per score: frozen would triple its cost
class Features:
    """What a customer looks like at scoring time."""

    counts: Mapping[str, int]  # event name -> count inside the goal window so far
    days_since_entry: float
    attributes: Mapping[str, Any]  # customer attributes ({"plan": "Pro", ...})


@dataclass(frozen=True)
class Labelled:
    """A customer whose outcome is known (training input)."""

    customer_id: str
    entered_at_ms: int
    window_end_ms: int
    reached_at_ms: int | None  # first target event inside the window; None = expired
    attributes: Mapping[str, Any]
    events: Mapping[str, Sequence[int]]  # name -> timestamps (ms) in [entered, window_end), target excluded


@dataclass
class Snapshots:
    """Training snapshots as arrays: what ``fit`` takes from either path (``train``'s
    Python snapshots, or ``features.snapshot_rows``'s ClickHouse rows)."""

    customer: Any  # per snapshot: its customer's index into customer_label (int64)
    counts: Any  # (snapshots, len(design.events)): count of each event with ts < t
    days: Any  # per snapshot: days since entry at t (float64)
    levels: Any  # (snapshots, len(design.levels)): index of the customer's level per attribute
    label: Any  # per snapshot: 1 if the customer reaches the goal after t
    customer_label: Any  # per customer: 1 reached, 0 expired


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def _level(value: Any) -> str:
    return OTHER if value is None else str(value)


def _index(levels: tuple[str, ...], value: Any) -> int:
    """A value's one-hot column among ``levels`` (not one of them: OTHER, the last)."""
    value = _level(value)
    return levels.index(value) if value in levels else len(levels) - 1


@dataclass(frozen=True)
class Design:
    """How a customer's features become a row of numbers, and which feature each column explains."""

    events: tuple[str, ...]
    caps: tuple[float, ...]  # per event: counts above are clipped
    window_days: float
    knots: tuple[float, ...]  # in days
    levels: Mapping[str, tuple[str, ...]]  # attribute -> one-hot levels, OTHER last

    def columns(self) -> list[tuple[str, str]]:
        """(feature, column) pairs in row order; a feature may span several columns."""
        cols = [(e, e) for e in self.events]
        cols.append((DAYS, DAYS))
        cols += [(DAYS, f"{DAYS}>{k:g}") for k in self.knots]
        for attr, levels in self.levels.items():
            cols += [(attr, f"{attr}={lv}") for lv in levels]
        return cols

    def features(self) -> list[str]:
        return list(dict.fromkeys(f for f, _ in self.columns()))

    def row(self, counts: Mapping[str, int], days: float, attributes: Mapping[str, Any]) -> list[float]:
        out = [float(min(counts.get(e, 0), cap)) for e, cap in zip(self.events, self.caps)]
        out += self.days_columns(days)
        return out + self.one_hot(attributes)

    def tree_columns(self) -> list[tuple[str, str]]:
        """(feature, column) pairs of a gbt row: raw counts, days since entry, one-hot levels."""
        cols = [(e, e) for e in self.events]
        cols.append((DAYS, DAYS))
        for attr, levels in self.levels.items():
            cols += [(attr, f"{attr}={lv}") for lv in levels]
        return cols

    def tree_row(self, counts: Mapping[str, int], days: float, attributes: Mapping[str, Any]) -> list[float]:
        # Trees do not extrapolate: counts are not clipped.
        out = [float(counts.get(e, 0)) for e in self.events]
        out.append(min(max(float(days), 0.0), self.window_days))
        return out + self.one_hot(attributes)

    def matrix(self, snaps: Snapshots, rows: Any = slice(None), trees: bool = False) -> Any:
        """``row`` (or with ``trees``, ``tree_row``) of the snapshots ``rows`` selects,
        vectorized: float64, snapshots x columns."""
        import numpy as np

        counts, days, levels = snaps.counts[rows], snaps.days[rows], snaps.levels[rows]
        n_e = len(self.events)
        knots = () if trees else self.knots
        X = np.zeros((len(days), n_e + 1 + len(knots) + sum(len(v) for v in self.levels.values())))
        if n_e:
            if trees:
                X[:, :n_e] = counts  # trees do not extrapolate: counts are not clipped
            else:
                np.minimum(counts, np.asarray(self.caps), out=X[:, :n_e], casting="unsafe")
        d = np.clip(days, 0.0, self.window_days)
        X[:, n_e] = d
        for i, k in enumerate(knots):
            X[:, n_e + 1 + i] = np.maximum(0.0, d - k)
        base = n_e + 1 + len(knots)
        for j, lv in enumerate(self.levels.values()):
            X[np.arange(len(d)), base + levels[:, j].astype(np.int64)] = 1.0
            base += len(lv)
        return X

    def level_index(self, attributes: Mapping[str, Any]) -> list[int]:
        """Per categorical attribute (``levels`` order), the index of the customer's level
        (a level without a column of its own: OTHER, the last)."""
        return [_index(levels, attributes.get(attr)) for attr, levels in self.levels.items()]

    def one_hot(self, attributes: Mapping[str, Any]) -> list[float]:
        """The attributes' one-hot columns (of ``row`` and ``tree_row``)."""
        out: list[float] = []
        for attr, levels in self.levels.items():
            cols = [0.0] * len(levels)
            cols[_index(levels, attributes.get(attr))] = 1.0
            out += cols
        return out

    def days_columns(self, days: float) -> list[float]:
        d = min(max(float(days), 0.0), self.window_days)
        return [d] + [max(0.0, d - k) for k in self.knots]

    def value(self, feature: str, f: Features) -> Any:
        """The customer's value of a feature, as shown in drivers."""
        if feature == DAYS:
            return round(float(f.days_since_entry), 4)
        if feature in self.levels:
            return _level(f.attributes.get(feature))
        return float(f.counts.get(feature, 0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": list(self.events),
            "caps": list(self.caps),
            "window_days": self.window_days,
            "knots": list(self.knots),
            "levels": {k: list(v) for k, v in self.levels.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Design:
        return cls(
            events=tuple(d["events"]),
            caps=tuple(float(c) for c in d["caps"]),
            window_days=float(d["window_days"]),
            knots=tuple(float(k) for k in d["knots"]),
            levels={k: tuple(v) for k, v in d["levels"].items()},
        )


@dataclass
class Model:
    """A trained (or base-rate) propensity model; scoring needs only the numbers it holds."""

    workspace: str
    goal: str
    version: str
    kind: str  # "logistic", "gbt" or "base_rate"
    trained_at_ms: int
    n_customers: int
    n_positive: int
    base_rate: float
    auc: float | None  # holdout AUC (None for base_rate)
    features: list[str]  # names of the model's features, for explanations
    design: Design | None = None
    # logistic: standardized-space parameters as fitted (what to_json stores) ...
    mean: list[float] = field(default_factory=list)
    scale: list[float] = field(default_factory=list)
    coef: list[float] = field(default_factory=list)
    intercept: float = 0.0
    platt: tuple[float, float] = (1.0, 0.0)  # calibrated logit = a * decision + b (both trained kinds)
    # gbt: raw decision = baseline + sum over trees of the leaf reached; each tree is
    # {"feature", "threshold", "left", "right", "value"} arrays per node (feature -1 = leaf;
    # x[feature] <= threshold goes left; an inner node's value is the count-weighted mean of
    # its leaves, for path contributions).
    baseline: float = 0.0
    trees: list[dict[str, list]] = field(default_factory=list)
    quality: dict[str, Any] | None = None  # the holdout report made at training (None: FORMAT 1)
    # ... folded once, so likelihood() is one dot product (logistic) or one walk per tree (gbt).
    _w: list[float] = field(default_factory=list, init=False, repr=False)
    _b: float = field(default=0.0, init=False, repr=False)
    _groups: list[str] = field(default_factory=list, init=False, repr=False)
    _nodes: tuple = field(default=(), init=False, repr=False)  # (feature, threshold, left, right, value) over all trees
    _roots: list[int] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind == "logistic":
            a, b = self.platt
            self._w = [a * c / s for c, s in zip(self.coef, self.scale)]
            self._b = b + a * (self.intercept - sum(c * m / s for c, m, s in zip(self.coef, self.mean, self.scale)))
            self._groups = [f for f, _ in self.design.columns()]
        elif self.kind == "gbt":
            feat: list[int] = []
            thr: list[float] = []
            left: list[int] = []
            right: list[int] = []
            val: list[float] = []
            for t in self.trees:
                off = len(feat)
                self._roots.append(off)
                feat += [int(i) for i in t["feature"]]
                thr += [float(x) for x in t["threshold"]]
                left += [off + int(i) for i in t["left"]]
                right += [off + int(i) for i in t["right"]]
                val += [float(x) for x in t["value"]]
            self._nodes = (feat, thr, left, right, val)
            self._groups = [f for f, _ in self.design.tree_columns()]
            # The calibrated logit of the average training snapshot (what drivers are relative to).
            a, b = self.platt
            self._b = b + a * (self.baseline + sum(val[r] for r in self._roots))

    # -- scoring -----------------------------------------------------------------------

    def _row(self, f: Features, counts: Mapping[str, int] | None = None) -> list[float]:
        c = f.counts if counts is None else counts
        if self.kind == "gbt":
            return self.design.tree_row(c, f.days_since_entry, f.attributes)
        return self.design.row(c, f.days_since_entry, f.attributes)

    def _raw(self, x: Sequence[float]) -> float:
        feat, thr, left, right, val = self._nodes
        s = self.baseline
        for n in self._roots:
            j = feat[n]
            while j >= 0:
                n = left[n] if x[j] <= thr[n] else right[n]
                j = feat[n]
            s += val[n]
        return s

    def _logit(self, row: Sequence[float]) -> float:
        if self.kind == "gbt":
            a, b = self.platt
            return a * self._raw(row) + b
        return self._b + sum(w * x for w, x in zip(self._w, row))

    def likelihood(self, f: Features) -> float:
        if self.kind not in KINDS:
            return self.base_rate
        return _sigmoid(self._logit(self._row(f)))

    def drivers(self, f: Features, top: int = 3) -> list[dict]:
        """Each feature's part of the calibrated log-odds relative to the average training
        snapshot (the sum over features is this customer's logit minus the average's);
        negative when the feature lowers the likelihood.

        logistic: weight x (value - training mean) per column, summed per feature. gbt:
        path contributions (Saabas): along each tree's decision path, the change of the node
        value at each split goes to the split's feature, times the Platt slope."""
        if self.kind not in KINDS:
            return []
        row = self._row(f)
        parts: dict[str, float] = {}
        if self.kind == "logistic":
            for g, w, x, m in zip(self._groups, self._w, row, self.mean):
                parts[g] = parts.get(g, 0.0) + w * (x - m)
        else:
            feat, thr, left, right, val = self._nodes
            per_col = [0.0] * len(row)
            for n in self._roots:
                j = feat[n]
                while j >= 0:
                    child = left[n] if row[j] <= thr[n] else right[n]
                    per_col[j] += val[child] - val[n]
                    n = child
                    j = feat[n]
            a = self.platt[0]
            for g, c in zip(self._groups, per_col):
                parts[g] = parts.get(g, 0.0) + a * c
        ranked = sorted(parts.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[: max(top, 0)]
        return [{"feature": g, "value": self.design.value(g, f), "contribution": round(c, 4)} for g, c in ranked]

    def action_gains(self, f: Features, actions: Sequence[str]) -> dict[str, float]:
        """likelihood with one more of each action minus likelihood now, by the serving model
        (0.0 for base_rate and for actions the model does not know)."""
        if self.kind not in KINDS:
            return {a: 0.0 for a in actions}
        now = self.likelihood(f)
        known = set(self.design.events)
        gains = {}
        for a in actions:
            if a not in known:
                gains[a] = 0.0
                continue
            counts = dict(f.counts)
            counts[a] = counts.get(a, 0) + 1
            gains[a] = _sigmoid(self._logit(self._row(f, counts))) - now
        return gains

    def report(self) -> dict[str, Any]:
        """The quality report (``quality``); for a model without one (base_rate, FORMAT 1)
        what is known: kind, training size and date, holdout AUC."""
        if self.quality is not None:
            return self.quality
        return reduced_report(self.kind, self.trained_at_ms, self.n_customers, self.n_positive, self.auc)

    # -- persistence -------------------------------------------------------------------

    def to_json(self) -> str:
        d: dict[str, Any] = {
            "format": FORMAT,
            "workspace": self.workspace,
            "goal": self.goal,
            "version": self.version,
            "kind": self.kind,
            "trained_at_ms": self.trained_at_ms,
            "n_customers": self.n_customers,
            "n_positive": self.n_positive,
            "base_rate": self.base_rate,
            "auc": self.auc,
            "features": self.features,
            "quality": self.quality,
        }
        if self.kind == "logistic":
            d.update(
                design=self.design.to_dict(),
                mean=self.mean,
                scale=self.scale,
                coef=self.coef,
                intercept=self.intercept,
                platt=list(self.platt),
            )
        elif self.kind == "gbt":
            d.update(design=self.design.to_dict(), platt=list(self.platt), baseline=self.baseline, trees=self.trees)
        # json writes floats by repr, so a round trip restores them bit for bit.
        return json.dumps(d, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Model:
        d = json.loads(text)
        if d.get("format") not in READABLE_FORMATS:
            raise ValueError(f"unsupported propensity model format {d.get('format')!r}")
        trained = d["kind"] in KINDS
        return cls(
            workspace=d["workspace"],
            goal=d["goal"],
            version=d["version"],
            kind=d["kind"],
            trained_at_ms=int(d["trained_at_ms"]),
            n_customers=int(d["n_customers"]),
            n_positive=int(d["n_positive"]),
            base_rate=float(d["base_rate"]),
            auc=d["auc"],
            features=list(d["features"]),
            design=Design.from_dict(d["design"]) if trained else None,
            mean=list(d.get("mean", [])),
            scale=list(d.get("scale", [])),
            coef=list(d.get("coef", [])),
            intercept=float(d.get("intercept", 0.0)),
            platt=tuple(d.get("platt", (1.0, 0.0))),
            baseline=float(d.get("baseline", 0.0)),
            trees=list(d.get("trees", [])),
            quality=d.get("quality"),
        )


# -- training ------------------------------------------------------------------------


def _now_ms(now_ms: int | None) -> int:
    return wall_ms() if now_ms is None else int(now_ms)


def _version(trained_at_ms: int, params: Mapping[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return f"{trained_at_ms}-{digest}"


def base_rate_model(workspace: str, goal: str, n_positive: int, n_customers: int, now_ms: int | None = None) -> Model:
    trained = _now_ms(now_ms)
    rate = n_positive / n_customers if n_customers else 0.0
    return Model(
        workspace=workspace,
        goal=goal,
        version=_version(trained, {"kind": "base_rate", "n": n_customers, "pos": n_positive}),
        kind="base_rate",
        trained_at_ms=trained,
        n_customers=n_customers,
        n_positive=n_positive,
        base_rate=rate,
        auc=None,
        features=[],
    )


def importance(gains: Mapping[str, float]) -> dict[str, float]:
    """Each positive gain as a share of the payload's positive gains (0.0 for the others)."""
    total = sum(g for g in gains.values() if g > 0)
    if total <= 0:
        return {a: 0.0 for a in gains}
    return {a: round(g / total, 4) if g > 0 else 0.0 for a, g in gains.items()}


@dataclass(frozen=True)
class _Snapshot:
    customer: int  # index into the labelled list, for splitting by customer
    counts: dict[str, int]
    days: float
    label: int


def _snapshots(labelled: Sequence[Labelled], events: Sequence[str], rng: Any) -> list[_Snapshot]:
    out = []
    for i, c in enumerate(labelled):
        series = {e: sorted(c.events.get(e, ())) for e in events}
        span = max(c.window_end_ms - c.entered_at_ms, 1)
        for u in rng.random(SNAPSHOTS):
            t = c.entered_at_ms + u**SNAPSHOT_POWER * span
            if c.reached_at_ms is not None and t >= c.reached_at_ms:
                continue  # already converted at t: not at risk, never scored live
            counts = {e: bisect.bisect_left(ts, t) for e, ts in series.items()}
            out.append(_Snapshot(i, counts, (t - c.entered_at_ms) / DAY_MS, int(c.reached_at_ms is not None)))
    return out


def _design(labelled: Sequence[Labelled], window_days: int, actions: Sequence[str]) -> Design:
    totals: Counter[str] = Counter()
    for c in labelled:
        for name, ts in c.events.items():
            totals[name] += len(ts)
    others = [e for e, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0])) if e not in actions]
    events = tuple(dict.fromkeys(actions)) + tuple(others[:MAX_OTHER_EVENTS])
    # Rare levels get no column of their own: a coefficient from a handful of customers is noise.
    min_level = max(5, len(labelled) // 100)
    levels = {}
    for attr in CATEGORICAL:
        seen = Counter(_level(c.attributes.get(attr)) for c in labelled)
        common = [v for v, n in seen.most_common() if n >= min_level and v != OTHER][:MAX_LEVELS]
        levels[attr] = tuple(common) + (OTHER,)
    knots = tuple(round(f * window_days, 6) for f in KNOT_FRACTIONS)
    return Design(events=events, caps=(math.inf,) * len(events), window_days=float(window_days), knots=knots, levels=levels)


def split(customer_label: Any, rng: Any) -> Any:
    """Part per customer: 0..CALIBRATION_FOLDS-1 are folds of the training customers,
    CALIBRATION_FOLDS is the holdout. Stratified by outcome, so every part holds both
    classes whenever there are a few of each."""
    import numpy as np

    part = np.zeros(len(customer_label), dtype=np.int64)
    for cls in (1, 0):
        idx = rng.permutation(np.flatnonzero(np.asarray(customer_label) == cls))
        n_hold = round(len(idx) * HOLDOUT)
        part[idx[:n_hold]] = CALIBRATION_FOLDS
        part[idx[n_hold:]] = np.arange(len(idx) - n_hold) % CALIBRATION_FOLDS
    return part


def _both(y: Any) -> bool:
    """Whether labels ``y`` hold both classes."""
    return len(y) > 0 and y.min() != y.max()


def _log_loss_rows(y: Any, p: Any) -> Any:
    import numpy as np

    p = np.clip(p, 1e-12, 1 - 1e-12)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _quality(kind: str, y: Any, p: Any, trained_ms: int, n: int, n_pos: int, n_hold: int) -> dict[str, Any]:
    """The holdout report of the serving model, on the holdout customers' snapshots."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    bins = np.minimum((p * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    calibration = []
    for b in range(CALIBRATION_BINS):
        sel = bins == b
        k = int(sel.sum())
        calibration.append({
            "bin": [b / CALIBRATION_BINS, (b + 1) / CALIBRATION_BINS],
            "mean_predicted": round(float(p[sel].mean()), 4) if k else None,
            "observed_rate": round(float(y[sel].mean()), 4) if k else None,
            "count": k,
        })
    top = np.argsort(-p, kind="stable")[: max(1, len(p) // 10)]
    rate = float(y.mean()) if len(y) else 0.0
    return {
        "kind": kind,
        "trained_at": iso_s(trained_ms),
        "n_customers": n,
        "n_positive": n_pos,
        "n_holdout_customers": n_hold,
        "n_holdout_snapshots": int(len(y)),
        "auc": float(roc_auc_score(y, p)) if _both(y) else None,
        "log_loss": float(_log_loss_rows(y, p).mean()) if len(y) else None,
        "calibration": calibration,
        "lift_top_decile": round(float(y[top].mean()) / rate, 4) if rate > 0 else None,
    }


def _platt(oof: Any, y: Any) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    if not _both(y):
        return (1.0, 0.0)
    # Platt scaling: a 1-D logistic regression of the label on the decision function,
    # unpenalized so it can undo the model's shrinkage rather than add its own.
    p = LogisticRegression(C=1e6, max_iter=1000).fit(oof.reshape(-1, 1), y)
    return (float(p.coef_[0][0]), float(p.intercept_[0]))


class _Fold:
    """Snapshot rows sorted by part (``order``): the training rows (parts 0..F-1) are then a
    prefix ``[:n_train]``, sliced as views, and the holdout the rest."""

    def __init__(self, snaps: Snapshots, part_of_customer: Any):
        import numpy as np

        part = part_of_customer[snaps.customer]
        self.order = np.argsort(part, kind="stable")
        self.part = part[self.order]
        self.y = np.asarray(snaps.label)[self.order].astype(np.int64)
        self.customer = np.asarray(snaps.customer)[self.order]
        self.n_train = int((self.part < CALIBRATION_FOLDS).sum())


def _fit_logistic(design: Design, snaps: Snapshots, f: _Fold) -> dict[str, Any]:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    # The final model fits all non-holdout customers; Platt scaling fits the out-of-fold
    # decision values of CALIBRATION_FOLDS refits on the same customers, so calibration
    # sees every one of them (a single 20% split made the Platt slope noisy) without ever
    # scoring a customer the model was fitted on.
    X = design.matrix(snaps, f.order)
    n, y, part = f.n_train, f.y, f.part
    mean = X[:n].mean(axis=0)
    scale = X[:n].std(axis=0)
    scale[scale < 1e-12] = 1.0  # a constant column (an action nobody did) keeps weight 0
    X -= mean  # standardized in place, without a second copy
    X /= scale

    def model(start: Any = None) -> Any:
        # newton-cholesky: the L2 optimum of lbfgs (measured at 200k customers: coefficients
        # within 0.003) in ~6 Newton steps where lbfgs takes ~50, as rows far outnumber
        # columns here. Fold refits start from the final model's optimum, close to theirs.
        clf = LogisticRegression(C=L2_C, solver="newton-cholesky", max_iter=200, warm_start=start is not None)
        if start is not None:
            clf.coef_, clf.intercept_ = start.coef_.copy(), start.intercept_.copy()
        return clf

    def fold(k: int) -> slice:
        return slice(int(np.searchsorted(part, k)), int(np.searchsorted(part, k, side="right")))

    if n > ONE_FOLD_ABOVE and _both(y[:n][part[:n] != 0]):
        # One fold held out (ONE_FOLD_ABOVE): the model fitted on the others serves, and
        # Platt scaling fits its decisions on the held-out fold.
        clf = model().fit(X[:n][part[:n] != 0], y[:n][part[:n] != 0])
        platt = _platt(clf.decision_function(X[fold(0)]), y[fold(0)])
    else:
        clf = model().fit(X[:n], y[:n])
        oof = np.zeros(n)
        for k in range(CALIBRATION_FOLDS):
            rest = part[:n] != k
            if _both(y[:n][rest]):
                oof[fold(k)] = model(clf).fit(X[:n][rest], y[:n][rest]).decision_function(X[fold(k)])
        platt = _platt(oof, y[:n])
    coef, intercept = clf.coef_[0], float(clf.intercept_[0])
    decision = X[n:] @ coef + intercept
    return {
        "mean": mean, "scale": scale, "coef": coef, "intercept": intercept, "platt": platt,
        "p_hold": 1.0 / (1.0 + np.exp(-(platt[0] * decision + platt[1]))),
    }


def _trees(clf: Any, n: int | None = None) -> tuple[float, list[dict[str, list]]]:
    """A fitted HistGradientBoostingClassifier's (first ``n``) trees as plain arrays (see
    ``Model.trees``)."""
    import numpy as np

    baseline = float(np.asarray(clf._baseline_prediction).ravel()[0])
    out = []
    for (predictor,) in clf._predictors[:n]:
        nodes = predictor.nodes
        if (nodes["is_categorical"] != 0).any():
            raise ValueError("categorical splits are not supported")
        leaf = nodes["is_leaf"].astype(bool)
        feature = np.where(leaf, -1, nodes["feature_idx"]).astype(int)
        threshold = np.where(leaf, 0.0, nodes["num_threshold"])
        left = np.where(leaf, 0, nodes["left"]).astype(int)
        right = np.where(leaf, 0, nodes["right"]).astype(int)
        value = nodes["value"].astype(float).copy()
        count = nodes["count"].astype(float)
        # Inner nodes: the count-weighted mean of their children (children come after parents).
        for i in range(len(nodes) - 1, -1, -1):
            if not leaf[i]:
                cl, cr = count[left[i]], count[right[i]]
                value[i] = (cl * value[left[i]] + cr * value[right[i]]) / max(cl + cr, 1.0)
        out.append({
            "feature": feature.tolist(), "threshold": threshold.tolist(),
            "left": left.tolist(), "right": right.tolist(), "value": value.tolist(),
        })
    return baseline, out


def _fit_gbt(design: Design, snaps: Snapshots, f: _Fold, seed: int, rng: Any) -> dict[str, Any]:
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier

    def fit(X: Any, y: Any, trees: int) -> Any:
        return HistGradientBoostingClassifier(max_iter=trees, early_stopping=False, random_state=seed, **GBT_PARAMS).fit(X, y)

    def at(model: Any, X: Any, trees: int) -> Any:
        """The decision of the model's first ``trees`` trees (fewer fitted: all of them)."""
        dec = np.zeros(len(X))
        for i, dec in enumerate(model.staged_decision_function(X)):
            if i + 1 >= trees:
                break
        return dec

    # Above GBT_MAX_ROWS training snapshots the trees fit a random subset of the training
    # customers (all of each one's snapshots): the fits' time grows with the rows, and a few
    # hundred thousand rows already fix 15-leaf trees; the holdout is measured in full.
    rows = np.arange(f.n_train)
    if f.n_train > GBT_MAX_ROWS:
        ids = np.unique(f.customer[: f.n_train])
        keep = rng.choice(ids, size=max(1, int(len(ids) * GBT_MAX_ROWS / f.n_train)), replace=False)
        rows = np.flatnonzero(np.isin(f.customer[: f.n_train], keep))
    T = design.matrix(snaps, f.order[rows], trees=True)
    y, part = f.y[rows], f.part[rows]
    # Out-of-fold log-loss after every tree: the number of trees with the lowest one is kept,
    # and Platt scaling fits the out-of-fold decisions there. Summed per tree as the stages
    # come (a trees x rows matrix would be GBs at scale). On a small population every fold
    # is held out in turn and a final fit on all training customers serves; above
    # ONE_FOLD_ABOVE rows one fold is plenty, and the model fitted on the others serves,
    # cut at the chosen number of trees (its Platt scaling then fits its own held-out
    # decisions): one fit instead of CALIBRATION_FOLDS + 1.
    one_fold = len(rows) > ONE_FOLD_ABOVE
    folds = {}
    loss = np.zeros(GBT_MAX_TREES)
    for k in range(1 if one_fold else CALIBRATION_FOLDS):
        mine = part == k
        if not _both(y[~mine]) or not mine.any():
            continue
        folds[k] = fit(T[~mine], y[~mine], GBT_MAX_TREES)
        i, dec = -1, np.zeros(int(mine.sum()))
        for i, dec in enumerate(folds[k].staged_decision_function(T[mine])):
            loss[i] += _log_loss_rows(y[mine], 1.0 / (1.0 + np.exp(-dec))).sum()
        loss[i + 1 :] += _log_loss_rows(y[mine], 1.0 / (1.0 + np.exp(-dec))).sum()  # fewer trees than asked: the last stays
    n_trees = int(np.argmin(loss)) + 1 if folds else GBT_MAX_TREES
    seen = np.isin(part, list(folds))
    oof = np.zeros(len(y))
    for k, m in folds.items():
        oof[part == k] = at(m, T[part == k], n_trees)
    platt = _platt(oof[seen], y[seen])
    clf = folds[0] if one_fold and 0 in folds else fit(T, y, n_trees)
    del T
    baseline, trees = _trees(clf, n_trees)
    hold = design.matrix(snaps, f.order[f.n_train :], trees=True)
    decision = at(clf, hold, n_trees) if len(hold) else np.zeros(0)
    return {
        "baseline": baseline, "trees": trees, "platt": platt, "n_trees": len(trees), "rows": int((~seen).sum() if one_fold else len(rows)),
        "p_hold": 1.0 / (1.0 + np.exp(-(platt[0] * decision + platt[1]))),
    }


def train(
    workspace: str,
    goal: str,
    window_days: int,
    actions: Sequence[str],
    labelled: Sequence[Labelled],
    *,
    seed: int = 0,
    min_customers: int = 100,
    min_per_class: int = 10,
    now_ms: int | None = None,
    kinds: Sequence[str] = KINDS,
) -> Model:
    """The snapshots of ``labelled`` (drawn in Python) -> ``fit``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    design = _design(labelled, window_days, actions)
    snaps = _snapshots(labelled, design.events, rng)
    per_customer = [design.level_index(c.attributes) for c in labelled]
    arrays = Snapshots(
        customer=np.array([s.customer for s in snaps], dtype=np.int64),
        counts=np.array([[s.counts[e] for e in design.events] for s in snaps], dtype=np.float64).reshape(len(snaps), len(design.events)),
        days=np.array([s.days for s in snaps], dtype=np.float64),
        levels=np.array([per_customer[s.customer] for s in snaps], dtype=np.int64).reshape(len(snaps), len(design.levels)),
        label=np.array([s.label for s in snaps], dtype=np.int64),
        customer_label=np.array([int(c.reached_at_ms is not None) for c in labelled], dtype=np.int64),
    )
    return fit(workspace, goal, design, arrays, seed=seed, min_customers=min_customers, min_per_class=min_per_class,
               now_ms=now_ms, kinds=kinds)


def fit(
    workspace: str,
    goal: str,
    design: Design,
    snaps: Snapshots,
    *,
    seed: int = 0,
    min_customers: int = 100,
    min_per_class: int = 10,
    now_ms: int | None = None,
    kinds: Sequence[str] = KINDS,
    timings: dict[str, float] | None = None,
) -> Model:
    """Fit each of ``kinds`` (default both) on the snapshots and return the one that serves:
    with both, gbt if its holdout log-loss is lower than the logistic model's (by more than
    CHOICE_SE standard errors), else logistic. The report of the other candidate is kept in
    ``quality``. ``design``'s caps are set here, from the counts."""
    # Loaded first: threadpoolctl limits the BLAS/OpenMP runtimes loaded when it is entered.
    import sklearn.ensemble  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

    # A small fit runs on one BLAS/OpenMP thread: it shares the cores with ClickHouse, the
    # event loop and the stack's other processes, and its many short parallel regions each
    # wait at a barrier for a thread the OS has descheduled. Measured on 2 busy cores: a
    # 200-customer train inside `goalstream up` 32 s with the default threads, 2.3 s with
    # one. A large fit's regions are long: at 200k customers on 2 idle cores the fits took
    # 17.5 s with both threads against 25 s with one, and about the same either way on busy
    # cores, so it keeps them.
    with threadpool_limits(limits=FIT_THREADS if len(snaps.days) <= ONE_FOLD_ABOVE else None):
        return _fit(workspace, goal, design, snaps, seed=seed, min_customers=min_customers, min_per_class=min_per_class,
                    now_ms=now_ms, kinds=kinds, timings=timings)


def _fit(
    workspace: str, goal: str, design: Design, snaps: Snapshots, *, seed: int, min_customers: int, min_per_class: int,
    now_ms: int | None, kinds: Sequence[str], timings: dict[str, float] | None,
) -> Model:
    import time

    import numpy as np  # (sklearn and numpy only train; scoring never imports them)

    n = len(snaps.customer_label)
    n_pos = int(np.count_nonzero(snaps.customer_label))  # (a uint8 array's own sum wraps at 256)
    if n < min_customers or min(n_pos, n - n_pos) < min_per_class or not len(snaps.days):
        return base_rate_model(workspace, goal, n_pos, n, now_ms)
    kinds = tuple(k for k in KINDS if k in kinds)
    if not kinds:
        raise ValueError(f"kinds must name at least one of {KINDS}")

    started = time.perf_counter()
    trained = _now_ms(now_ms)
    rng = np.random.default_rng(seed)
    f = _Fold(snaps, split(snaps.customer_label, rng))
    # Clip counts at a high quantile of what training saw: a linear effect extrapolated to
    # a customer with 50x the usual count would score them near certainty.
    caps = tuple(
        float(max(1, math.ceil(COUNT_CAP_FACTOR * np.quantile(snaps.counts[:, j], COUNT_CAP_QUANTILE))))
        for j in range(len(design.events))
    )
    design = Design(design.events, caps, design.window_days, design.knots, design.levels)

    fits: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        t = time.perf_counter()
        fits[kind] = _fit_logistic(design, snaps, f) if kind == "logistic" else _fit_gbt(design, snaps, f, seed, rng)
        if timings is not None:
            timings[f"fit_{kind}_s"] = time.perf_counter() - t

    y_hold = f.y[f.n_train :]
    held_out, cust_hold = np.unique(f.customer[f.n_train :], return_inverse=True)  # customer -> 0..n_hold-1
    n_hold = len(held_out)
    reports = {k: _quality(k, y_hold, fit["p_hold"], trained, n, n_pos, n_hold) for k, fit in fits.items()}
    kind = kinds[0]
    choice: dict[str, Any] = {"rule": f"gbt if its holdout log-loss is lower by more than {CHOICE_SE:g} standard errors"
                              if CHOICE_SE else "the lower holdout log-loss (a tie: logistic)"}
    if len(fits) == 2 and len(y_hold):
        # Paired over holdout customers (a customer's snapshots are not independent).
        diff = _log_loss_rows(y_hold, fits["logistic"]["p_hold"]) - _log_loss_rows(y_hold, fits["gbt"]["p_hold"])
        per_customer = np.bincount(cust_hold, weights=diff)
        gain = float(diff.mean())
        se = float(per_customer.std(ddof=1) * math.sqrt(len(per_customer)) / len(diff)) if len(per_customer) > 1 else math.inf
        kind = "gbt" if gain > CHOICE_SE * se else "logistic"
        choice.update(log_loss_gain=gain, standard_error=se)
    quality = dict(reports[kind])
    quality["candidates"] = {k: {"log_loss": r["log_loss"], "auc": r["auc"]} for k, r in reports.items()}
    quality["choice"] = choice
    if "gbt" in fits:
        quality["candidates"]["gbt"].update(trees=fits["gbt"]["n_trees"], training_snapshots=fits["gbt"]["rows"])
    if timings is not None:
        timings["fit_s"] = time.perf_counter() - started
    fit = fits[kind]
    common = dict(
        workspace=workspace, goal=goal, kind=kind, trained_at_ms=trained, n_customers=n, n_positive=n_pos,
        base_rate=n_pos / n, auc=quality["auc"], features=design.features(), design=design, platt=fit["platt"], quality=quality,
    )
    if kind == "logistic":
        params = {"design": design.to_dict(), "coef": fit["coef"].tolist(), "intercept": fit["intercept"], "platt": list(fit["platt"]), "seed": seed, "n": n}
        return Model(
            version=_version(trained, params), mean=fit["mean"].tolist(), scale=fit["scale"].tolist(),
            coef=fit["coef"].tolist(), intercept=fit["intercept"], **common,
        )
    params = {"design": design.to_dict(), "trees": fit["trees"], "baseline": fit["baseline"], "platt": list(fit["platt"]), "seed": seed, "n": n}
    return Model(version=_version(trained, params), baseline=fit["baseline"], trees=fit["trees"], **common)
