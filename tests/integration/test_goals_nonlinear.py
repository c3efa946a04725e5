"""Issue 16 end to end through ``goalstream up``: on a non-linear population
(``tests.sim.population.NONLINEAR``: a step, a saturating action, support tickets that
lower the likelihood, an action that matters on one plan only) sent through the public
Traitly API, ``goalstream train`` chooses the gradient-boosted trees, and the likelihoods
served by ``GET /api/v1/recommended-next-actions`` match the truth at least as well as a
same-run plain ``HistGradientBoostingClassifier`` fitted on the visible counts (the
reference of tests/bench/model_quality.py) and better than the logistic model alone. Then a
new customer with many support tickets: their propensity record on ``goalstream.propensity``
reports "Support Ticket" as a negative driver, and the API serves them a lower likelihood
than the same customer without tickets. Figures print with ``pytest -s``."""

from __future__ import annotations

import asyncio
import subprocess
import time

import aiohttp
import numpy as np
import pytest

from stream_processors.scoring import propensity
from tests.bench.model_quality import against_truth, hgb_reference, visible
from tests.conftest import GOALSTREAM, StackProcess, globex_config, wait_for
from tests.integration.test_goals import TOKEN, read_topic, served
from tests.sim import population as sim
from tests.sim import simulate

TRUTH = sim.NONLINEAR
GOAL = TRUTH.goal
GOALS_CONFIG = globex_config() + f'''
[[goals]]
workspace = "acme"
name = "{GOAL}"
window_days = {TRUTH.window_days}
target_event = "{TRUTH.target}"
''' + "".join(
    f'''[[goals.actions]]
event_name = "{a}"
message_plaintext = "Time to {a.lower()}"
message_html = "<p>Time to {a.lower()}</p>"
'''
    for a in TRUTH.actions
)
# Seed 23: not the bench's 1 and 2, nor test_propensity_kinds' 7, nor test_goals' 11.
N_TRAIN, N_SCORE, SEED = 4000, 600, 23
# Served may trail the reference by at most this much (Spearman, MAE): the reference's own
# spread between seeds is larger, but the served model is meant to at least match it.
SLACK = 0.005


@pytest.fixture(scope="module")
def goal_stack(tmp_path_factory):
    # Threshold 0: every score is published, so the newest record of a customer is their
    # current state (the support-ticket customer's score might otherwise move by less than
    # the default 0.05 from their first, event-less score and never be published).
    s = StackProcess(tmp_path_factory.mktemp("goals-nl"), config=GOALS_CONFIG, env={"GOALSTREAM_PROPENSITY_THRESHOLD": "0"}).start()
    yield s
    s.close()


@pytest.fixture(scope="module")
def population(goal_stack):
    pop = sim.generate(N_TRAIN, N_SCORE, SEED, int(time.time() * 1000), TRUTH)
    started = time.perf_counter()
    sent = asyncio.run(simulate.send(goal_stack.url, "tk_live_123", pop))
    n = len(pop.customers)
    wait_for(lambda: goal_stack.sql(f"SELECT count() FROM goal_customers WHERE goal = '{GOAL}'").strip() == str(n), timeout=180)
    print(f"\nsent and stored {sent['customers']} customers, {sent['events']} events in {time.perf_counter() - started:.1f}s")
    return pop


@pytest.fixture(scope="module")
def trained(goal_stack, population):
    out = subprocess.run([str(GOALSTREAM), "train"], cwd=goal_stack.workdir, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    print("\n" + out.stdout.strip())
    return out.stdout.strip().splitlines()[0]


def test_train_chooses_trees_by_holdout_log_loss(trained):
    assert f"acme/{GOAL}: gbt model" in trained and f"training size {N_TRAIN} customers" in trained
    # "holdout log-loss 0.4321 (vs logistic 0.4567)": the trees won on the holdout.
    ll = trained.split("holdout log-loss ")[1]
    gbt_ll = float(ll.split(" ")[0])
    logistic_ll = float(ll.split("(vs logistic ")[1].split(")")[0])
    assert gbt_ll < logistic_ll


def test_served_matches_the_reference_and_beats_logistic(goal_stack, population, trained):
    scoring = population.cohort("score")
    answers = asyncio.run(served(goal_stack.url, [c.customer_id for c in scoring], GOAL))
    now = int(time.time() * 1000)
    assert all(a["model"].startswith("gbt ") for a in answers.values()), {a["model"] for a in answers.values()}
    p_true = np.array([c.p_true for c in scoring])
    p_served = np.array([answers[c.customer_id]["body"]["likelihood"] for c in scoring])

    # Same run, same customers: the plain reference on the visible counts, and the logistic
    # model alone (the model before model kinds) trained in process on the same cohort.
    reference = hgb_reference(population, SEED)
    p_ref = reference.predict_proba([visible(c, TRUTH, now) for c in scoring])[:, 1]
    labelled = sim.labelled(population, TRUTH.window_days)
    logistic = propensity.train("acme", GOAL, TRUTH.window_days, list(TRUTH.actions), labelled, seed=SEED, now_ms=now, kinds=("logistic",))
    p_log = np.array([logistic.likelihood(sim.features_now(c, now, window_days=TRUTH.window_days, target=TRUTH.target)) for c in scoring])

    rows = {label: against_truth(p, p_true) for label, p in (
        ("served (gbt, API)", p_served), ("HGB reference", p_ref), ("logistic only", p_log))}
    print(f"\n{len(scoring)} scoring customers, seed {SEED}: served vs truth")
    for label, (rho, mae) in rows.items():
        print(f"  {label:<18} Spearman {rho:.4f}  MAE {mae:.4f}")
    (s_rho, s_mae), (r_rho, r_mae), (l_rho, l_mae) = rows.values()
    assert s_rho >= r_rho - SLACK and s_mae <= r_mae + SLACK
    assert s_rho > l_rho and s_mae < l_mae


async def _post(url: str, path: str, body: list[dict]) -> None:
    async with aiohttp.ClientSession(headers=TOKEN) as s:
        async with s.post(f"{url}{path}", json=body) as r:
            assert r.status == 200, await r.text()


def test_many_support_tickets_is_a_negative_driver(goal_stack, population, trained):
    """Two new Solo customers who signed up 2.5 days ago, did the same (one integration, two
    uploads, three browses), one of them also raised six support tickets."""
    now_s = time.time()
    entered = now_s - 2.5 * 86400
    base = [("Connect Integration", 1), ("Upload Data", 2), ("Browse", 3)]
    people = {"nl-upset": base + [("Support Ticket", 6)], "nl-calm": base}
    customers = [
        {"customer_id": cid, "name": cid, "email": f"{cid}@sim.example.com", "plan": TRUTH.other_plan, "created_at": entered,
         "message_id": f"{cid}-profile"}
        for cid in people
    ]
    asyncio.run(_post(goal_stack.url, "/api/v1/customer", customers))
    # Events in the customer's first 2 days, as the simulated customers' are; one request
    # per customer, so they reach the scorer together.
    for cid, todo in people.items():
        names = [n for n, k in todo for _ in range(k)]
        events = [
            {"customer_id": cid, "name": n, "created_at": entered + 3600 + i * (40 * 3600 / len(names)), "message_id": f"{cid}-e{i}"}
            for i, n in enumerate(names)
        ]
        asyncio.run(_post(goal_stack.url, "/api/v1/event", events))
    expect = {cid: sum(k for n, k in todo if n in TRUTH.actions) for cid, todo in people.items()}

    def api() -> dict[str, dict] | None:
        try:
            got = asyncio.run(served(goal_stack.url, list(people), GOAL))
        except AssertionError:  # 404 until the customer rows are stored
            return None
        done = all(sum(a["goal_num_completed"] for a in got[cid]["body"]["data"]) == expect[cid] for cid in people)
        return got if done else None

    # Stored: the API counts every posted action (it reads ClickHouse now).
    answers = wait_for(api, timeout=60, interval=0.5)

    def scored() -> dict[str, dict] | None:
        # The newest gbt record of each customer, once it is the state the API serves
        # (the scorer may have published an earlier one, e.g. before the events were in).
        latest: dict[str, dict] = {}
        for r in read_topic(goal_stack, "goalstream.propensity"):
            if r["customer_id"] in people and r["model_kind"] == "gbt":
                latest[r["customer_id"]] = r
        fresh = all(cid in latest and abs(latest[cid]["likelihood"] - answers[cid]["body"]["likelihood"]) < 1e-3 for cid in people)
        return latest if fresh else None

    records = wait_for(scored, timeout=60, interval=1.0)
    upset, calm = records["nl-upset"], records["nl-calm"]
    like = {cid: answers[cid]["body"]["likelihood"] for cid in people}
    truth = {cid: TRUTH.p(TRUTH.other_plan, dict(todo)) for cid, todo in people.items()}
    print(
        f"\nsupport-ticket customer: served {like['nl-upset']:.3f} (true {truth['nl-upset']:.3f}), drivers {upset['drivers']}"
        f"\nsame without tickets:    served {like['nl-calm']:.3f} (true {truth['nl-calm']:.3f}), drivers {calm['drivers']}"
    )
    ticket = next((d for d in upset["drivers"] if d["feature"] == "Support Ticket"), None)
    assert ticket is not None, upset["drivers"]
    assert ticket["contribution"] < 0 and float(ticket["value"]) == 6.0
    assert all(d["feature"] != "Support Ticket" or d["contribution"] >= 0 for d in calm["drivers"])
    assert like["nl-upset"] < like["nl-calm"] - 0.1
