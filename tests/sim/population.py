"""A population of customers whose probability of reaching the goal is known exactly.

Flow: ``Truth`` (the ground-truth parameters) -> ``generate`` -> ``Population`` of
``Customer``s (sign-up, plan, events before ``now``, ``p_true``) -> either
``labelled`` (the training cohort as ``propensity.Labelled``, to train in memory) and
``features_now`` (what a live scorer sees), or ``tests.sim.simulate`` (the same customers
through the public API). Pure: no I/O, deterministic for a seed.

Ground truth: each customer does each event a Poisson number of times at uniform times in
their first ``active_days``; p_true = sigmoid(intercept + beta_plan*[plan] + sum effect_e(n_e)
+ sum pair_beta_e*[n_e >= 1 and n_with_e >= 1]), where effect_e(n) = (beta_e +
plan_beta_e*[plan]) * min(n, saturate_at_e), or with a threshold k_e the step
(beta_e + plan_beta_e*[plan]) * [n >= k_e]: linear by default (``Truth()``), non-linear in
``NONLINEAR`` (saturating effects, a negative action, an action that matters only on one
plan) and in ``NONLINEAR_2`` (a threshold, an interaction of two events, a negative step,
an action that matters only off the plan);
with probability p_true they do the target at entry + U(convert_from_days, window_days).
The training cohort signed up long enough ago that the window is over (outcome known); the
scoring cohort has done all its events but cannot have converted yet, so p_true is exactly
their probability of converting in the rest of the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from stream_processors.scoring import propensity

DAY_MS = 86_400_000


@dataclass(frozen=True)
class EventTruth:
    name: str
    beta: float  # effect of one occurrence on the log-odds of converting
    mean_count: float  # Poisson mean of occurrences
    saturate_at: int | None = None  # occurrences beyond this add nothing
    plan_beta: float = 0.0  # added to beta for customers on Truth.plan (an interaction)
    # A step: the event adds beta (+ plan_beta) once, when done at least this many times,
    # and nothing below it (so it cannot also saturate).
    threshold: int | None = None
    # An interaction of two events: pair_beta more log-odds when this event and with_event
    # both occur at least once (on top of each one's own effect).
    with_event: str | None = None
    pair_beta: float = 0.0

    def __post_init__(self) -> None:
        if self.threshold is not None and (self.threshold < 1 or self.saturate_at is not None):
            raise ValueError("threshold must be >= 1, and a step cannot also saturate")
        if self.pair_beta and self.with_event is None:
            raise ValueError("pair_beta needs with_event")

    def effect(self, n: int, on_plan: bool) -> float:
        if self.threshold is not None:
            k = 1 if n >= self.threshold else 0
        else:
            k = n if self.saturate_at is None else min(n, self.saturate_at)
        return (self.beta + (self.plan_beta if on_plan else 0.0)) * k


@dataclass(frozen=True)
class Truth:
    goal: str = "30-day Conversion"
    window_days: int = 30
    target: str = "purchase"
    events: tuple[EventTruth, ...] = (
        EventTruth("Style Widget", 0.9, 1.2),
        EventTruth("Invite Teammate", 0.45, 1.0),
        EventTruth("Browse", 0.0, 3.0),
    )
    actions: tuple[str, ...] = ("Style Widget", "Invite Teammate")
    plan: str = "Pro"
    plan_share: float = 0.3
    plan_beta: float = 0.8
    other_plan: str = "Starter"
    intercept: float = -2.2
    active_days: float = 2.0  # events happen in [entry, entry + active_days)
    convert_from_days: float = 3.0  # the target happens in [entry + this, entry + window)
    train_entry_days: tuple[float, float] = (31.0, 90.0)  # entry = now - U(a, b) days
    score_entry_days: tuple[float, float] = (2.1, 2.9)

    def logit(self, plan: str, counts: dict[str, int]) -> float:
        on = plan == self.plan
        z = self.intercept + (self.plan_beta if on else 0.0)
        z += sum(e.effect(counts.get(e.name, 0), on) for e in self.events)
        # Pairs: each event that names a partner adds pair_beta when both were done.
        return z + sum(
            e.pair_beta for e in self.events if e.with_event is not None and counts.get(e.name, 0) >= 1 and counts.get(e.with_event, 0) >= 1
        )

    def p(self, plan: str, counts: dict[str, int]) -> float:
        return 1.0 / (1.0 + math.exp(-self.logit(plan, counts)))

    def gains(self, plan: str, counts: dict[str, int]) -> dict[str, float]:
        """True gain in p of one more occurrence of each action."""
        now = self.p(plan, counts)
        return {a: self.p(plan, {**counts, a: counts.get(a, 0) + 1}) - now for a in self.actions}


# A non-linear truth: the first integration connected is a step (more add nothing), uploads
# help up to the third, support tickets lower the likelihood, and inviting a teammate
# matters on the Team plan only.
NONLINEAR = Truth(
    goal="30-day Activation",
    events=(
        EventTruth("Connect Integration", 2.0, 1.0, saturate_at=1),
        EventTruth("Upload Data", 0.7, 2.5, saturate_at=2),
        EventTruth("Invite Teammate", 0.0, 1.2, plan_beta=1.0),
        EventTruth("Support Ticket", -0.8, 0.8),
        EventTruth("Browse", 0.0, 3.0),
    ),
    actions=("Connect Integration", "Upload Data", "Invite Teammate"),
    plan="Team",
    plan_share=0.35,
    plan_beta=0.0,
    other_plan="Solo",
    intercept=-2.6,
)


# A second non-linear truth, with shapes NONLINEAR lacks: dashboards matter only from the
# third one on (a threshold), a payment method helps more together with a dashboard (an
# interaction of two events), one cancel request is a negative step (more add nothing), and
# exporting a report helps on the Free plan only (the plan cancels it on Business, which
# itself converts more).
NONLINEAR_2 = Truth(
    goal="30-day Upgrade",
    events=(
        EventTruth("Create Dashboard", 1.6, 2.0, threshold=3),
        EventTruth("Add Payment Method", 0.5, 0.6, saturate_at=1, with_event="Create Dashboard", pair_beta=1.3),
        EventTruth("Cancel Request", -1.8, 0.35, saturate_at=1),
        EventTruth("Export Report", 0.6, 1.0, saturate_at=2, plan_beta=-0.6),
        EventTruth("View Docs", 0.0, 2.5),
    ),
    actions=("Create Dashboard", "Add Payment Method", "Export Report"),
    plan="Business",
    plan_share=0.4,
    plan_beta=0.7,
    other_plan="Free",
    intercept=-2.3,
)


@dataclass(frozen=True)
class Customer:
    customer_id: str
    cohort: str  # "train" or "score"
    plan: str
    entered_at_ms: int
    events: tuple[tuple[str, int], ...]  # (name, ts_ms), sorted by time, only before now
    p_true: float
    counts: dict[str, int] = field(default_factory=dict)  # occurrences of each simulated event


@dataclass(frozen=True)
class Population:
    truth: Truth
    now_ms: int
    seed: int
    customers: tuple[Customer, ...]

    def cohort(self, name: str) -> list[Customer]:
        return [c for c in self.customers if c.cohort == name]


def generate(n_train: int, n_score: int, seed: int, now_ms: int, params: Truth | None = None) -> Population:
    truth = params or Truth()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_train + n_score):
        cohort = "train" if i < n_train else "score"
        lo, hi = truth.train_entry_days if cohort == "train" else truth.score_entry_days
        entered = now_ms - int(rng.uniform(lo, hi) * DAY_MS)
        plan = truth.plan if rng.random() < truth.plan_share else truth.other_plan
        counts = {e.name: int(rng.poisson(e.mean_count)) for e in truth.events}
        events = [
            (e.name, entered + int(rng.uniform(0, truth.active_days) * DAY_MS)) for e in truth.events for _ in range(counts[e.name])
        ]
        p = truth.p(plan, counts)
        if rng.random() < p:
            events.append((truth.target, entered + int(rng.uniform(truth.convert_from_days, truth.window_days) * DAY_MS)))
        events = sorted((ev for ev in events if ev[1] < now_ms), key=lambda ev: (ev[1], ev[0]))
        out.append(Customer(f"sim{seed}-{i:06d}", cohort, plan, entered, tuple(events), p, counts))
    return Population(truth, now_ms, seed, tuple(out))


def labelled(population: Population, window_days: int) -> list[propensity.Labelled]:
    """The training cohort as the trainer sees it: events inside each window, target apart."""
    target = population.truth.target
    out = []
    for c in population.cohort("train"):
        end = c.entered_at_ms + window_days * DAY_MS
        inside = [(n, ts) for n, ts in c.events if c.entered_at_ms <= ts < end]
        reached = min((ts for n, ts in inside if n == target), default=None)
        events: dict[str, list[int]] = {}
        for n, ts in inside:
            if n != target:
                events.setdefault(n, []).append(ts)
        out.append(propensity.Labelled(c.customer_id, c.entered_at_ms, end, reached, {"plan": c.plan}, events))
    return out


def features_now(customer: Customer, now_ms: int, *, window_days: int = 30, target: str = "purchase") -> propensity.Features:
    """What a live scorer sees at now_ms: counts of events so far inside the window."""
    end = customer.entered_at_ms + window_days * DAY_MS
    counts: dict[str, int] = {}
    for n, ts in customer.events:
        if n != target and customer.entered_at_ms <= ts < min(now_ms, end):
            counts[n] = counts.get(n, 0) + 1
    days = (now_ms - customer.entered_at_ms) / DAY_MS
    return propensity.Features(counts=counts, days_since_entry=days, attributes={"plan": customer.plan})
