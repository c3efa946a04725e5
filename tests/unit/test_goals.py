"""Goal states and what an assessment says, without ClickHouse (pure parts of stream_processors.scoring.goals)."""

from schemas.config import Action, Goal
from stream_processors.scoring import goals, propensity
from tests.sim import population as sim

DAY = goals.DAY_MS
GOAL = Goal(
    workspace="acme", name="30-day Conversion", window_days=30, target_event="purchase",
    actions=[Action(event_name="Invite Teammate", message_plaintext="i"), Action(event_name="Style Widget", message_plaintext="s")],
)


def state(**kw):
    base = dict(workspace="acme", goal=GOAL, customer_id="c1", entered_at_ms=1_000 * DAY, attributes={"plan": "Pro"})
    base.update(kw)
    return goals.GoalState(**base)


def test_status_window_and_days_left():
    s = state()
    assert s.window_end_ms == 1_030 * DAY
    assert s.status(1_010 * DAY) == "active" and s.days_left(1_010 * DAY) == 20
    assert s.status(1_030 * DAY) == "expired" and s.days_left(1_031 * DAY) == 0
    assert state(reached_at_ms=1_005 * DAY).status(1_040 * DAY) == "reached"
    f = s.features(1_045 * DAY)  # days since entry never exceed the window
    assert f.days_since_entry == 30 and f.attributes == {"plan": "Pro"}


def test_base_rate_assessment_keeps_config_order_and_counts():
    s = state(window_counts={"Style Widget": 2}, total_counts={"Style Widget": 5, "Browse": 1})
    a = goals.assess(s, propensity.base_rate_model("acme", GOAL.name, 3, 10), 1_010 * DAY)
    assert a.likelihood == 0.3 and a.model_kind == "base_rate" and a.status == "active"
    assert [x["event_name"] for x in a.actions] == ["Invite Teammate", "Style Widget"]  # no gains: config order
    sw = a.actions[1]
    assert (sw["goal_num_completed"], sw["total_num_completed"], sw["goal_days_left"]) == (2, 5, 20)
    assert sw["message_plaintext"] == "s" and sw["importance"] == 0.0


def test_reached_goal_is_an_outcome_not_a_score():
    a = goals.assess(state(reached_at_ms=1_004 * DAY), propensity.base_rate_model("acme", GOAL.name, 3, 10), 1_010 * DAY)
    assert (a.likelihood, a.status, a.model_kind, a.drivers) == (1.0, "reached", "outcome", [])


def test_trained_assessment_ranks_the_stronger_action_first():
    pop = sim.generate(1500, 10, seed=3, now_ms=2_000 * DAY)
    model = propensity.train("acme", GOAL.name, 30, ["Style Widget", "Invite Teammate"], sim.labelled(pop, 30), now_ms=2_000 * DAY)
    assert model.kind == "logistic"
    s = state(entered_at_ms=2_000 * DAY - 2 * DAY, window_counts={"Style Widget": 1}, attributes={"plan": "Starter"})
    a = goals.assess(s, model, 2_000 * DAY)
    assert a.actions[0]["event_name"] == "Style Widget"  # the larger true effect (beta 0.9 vs 0.45)
    assert abs(sum(x["importance"] for x in a.actions) - 1.0) < 1e-3
    assert 0.0 < a.likelihood < 1.0 and a.drivers and a.model_version == model.version
