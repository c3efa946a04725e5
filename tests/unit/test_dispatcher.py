"""The dispatcher's pure parts: webhook payloads, ids, retry timing."""

import random
from datetime import datetime, timezone

from schemas.config import DEV_CONFIG, parse_config
from stream_processors.webhooks import dispatcher as d


def test_webhook_id_is_stable_ascii_without_dots():
    wid = d.webhook_id("0b7c7e2e-1f7a-4a55-9d2c-3c2b1a0f9e11")
    assert wid == "msg_0b7c7e2e1f7a4a559d2c3c2b1a0f9e11" and "." not in wid


def test_payloads_have_the_seed_shapes():
    ts = datetime(2026, 11, 23, tzinfo=timezone.utc)
    change = {"customer_id": "123456", "goal_name": "30-day Conversion", "likelihood": 0.5, "previous_likelihood": None,
              "model_version": "v", "model_kind": "logistic", "drivers": [], "timestamp": ts}
    p = d.payload("goalstream.GoalPropensityChange", change)
    assert p["object"] == "goal-propensity-change" and p["data"][0]["likelihood"] == 0.5
    assert p["meta"] == {"customer_id": "123456", "goal_name": "30-day Conversion"} and p["timestamp"] == int(ts.timestamp())
    actions = {"customer_id": "123456", "goal_name": "30-day Conversion", "likelihood": 0.5, "timestamp": ts,
               "actions": [{"event_name": "Style Widget", "goal_num_completed": 0, "total_num_completed": 4, "goal_days_left": 14,
                            "importance": 0.4, "message_plaintext": "x", "message_html": "<p>x</p>"}]}
    p = d.payload("goalstream.RecommendedNextActions", actions)
    assert list(p) == ["data", "likelihood", "meta", "timestamp", "object"] and p["object"] == "recommended-next-actions"


def test_retry_after_seconds_and_http_dates():
    assert d.retry_after_seconds("2") == 2.0
    assert d.retry_after_seconds(None) is None and d.retry_after_seconds("soon") is None
    assert d.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now_s=1445412470) == 10.0


def test_next_delay_follows_the_schedule_with_jitter_and_retry_after_as_a_floor():
    rng = random.Random(1)
    schedule = [5, 300, 1800]
    assert all(4.0 <= d.next_delay(schedule, 1, None, rng) <= 6.0 for _ in range(50))
    assert d.next_delay(schedule, 1, 120.0, rng) >= 120.0
    assert 240 <= d.next_delay(schedule, 2, None, rng) <= 360
    assert d.next_delay(schedule, 4, None, rng) is None  # exhausted after the schedule's attempts


def test_defaults_follow_the_spec_example_and_15s_timeout():
    assert DEV_CONFIG.dispatcher.timeout_seconds == 15
    assert sum(DEV_CONFIG.dispatcher.retry_schedule_seconds) / 86400 > 2.9  # about three days
    c = parse_config('[[workspaces]]\nname = "a"\n[[webhooks]]\nworkspace = "a"\nurl = "https://h.example/x"\nsecret = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_dGhlIHByZXZpb3VzIHNlY3JldCBrZXkh"]\n')
    assert len(c.webhooks[0].secrets()) == 2 and c.webhooks[0].endpoint_id.startswith("ep_")
