"""GET /admin/v1/models against real chDB: models trained on a simulated population
(``tests.sim.population``) and stored as the scorer stores them (``processor.store_model``)
come back with their holdout quality report; the scoping of admin tokens, ``?goal=``, a goal
never trained (``model: null``), a base_rate model and a model without a report (the reduced
report, equal to ``propensity.Model.report``'s), the newest row serving, and the goals
page's JSON carrying the same report."""

from __future__ import annotations

import dataclasses
import functools
import json
import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway.app import create_app
from schemas import model as schemas_model
from schemas.config import parse_config
from schemas.settings import GatewaySettings
from stream_processors.scoring import processor
from stream_processors.scoring import propensity as pr
from tests.memory import MemoryProducer
from tests.sim import population

NOW = 1_750_000_000_000
RUN = uuid.uuid4().hex[:8]  # the session's warehouse is shared: workspaces of this module only
WS_A, WS_B = f"models-a-{RUN}", f"models-b-{RUN}"
OPERATOR = "op-models-token"


def config():
    goals = "".join(f'\n[[goals]]\nworkspace = "{ws}"\nname = "{g}"\nwindow_days = 30\ntarget_event = "purchase"\n'
                    for ws, g in ((WS_A, "trained"), (WS_A, "base"), (WS_A, "untrained"), (WS_A, "old-format"), (WS_B, "trained")))
    return parse_config(f'''
[[workspaces]]
name = "{WS_A}"
admin_token = "adm_a_{RUN}"

[[workspaces]]
name = "{WS_B}"
admin_token = "adm_b_{RUN}"
''' + goals)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@functools.cache
def trained() -> pr.Model:
    pop = population.generate(400, 0, seed=3, now_ms=NOW)
    return pr.train(WS_A, "trained", 30, list(pop.truth.actions), population.labelled(pop, 30), seed=3, now_ms=NOW)


@pytest.fixture(scope="module")
async def client(warehouse):
    m = trained()
    assert m.kind in pr.KINDS and m.quality is not None
    older = pr.base_rate_model(WS_A, "trained", 1, 10, now_ms=NOW - 86_400_000)
    base = pr.base_rate_model(WS_A, "base", 4, 40, now_ms=NOW)
    for model in (older, m, base, dataclasses.replace(m, workspace=WS_B, quality=None)):
        await processor.store_model(warehouse, model)
    # A model stored before the report was kept: FORMAT 1 JSON, no "quality" key at all.
    old = dataclasses.replace(m, goal="old-format", quality=None)
    d = {**json.loads(old.to_json()), "format": 1}
    del d["quality"]
    assert pr.Model.from_json(json.dumps(d)).quality is None
    row = [old.workspace, old.goal, old.version, old.kind, schemas_model.from_ms(old.trained_at_ms), old.n_customers,
           old.n_positive, old.base_rate, old.auc, json.dumps(d)]
    await warehouse.insert("propensity_models", [row], processor.MODEL_COLUMNS, None)
    app = create_app(GatewaySettings(), config(), warehouse=warehouse, producer=MemoryProducer(), local_token=OPERATOR)
    async with TestClient(TestServer(app)) as c:
        yield c


async def models(client, token: str, query: str = "") -> list[dict]:
    r = await client.get(f"/admin/v1/models{query}", headers=bearer(token))
    assert r.status == 200, await r.text()
    body = await r.json()
    assert body["object"] == "models"
    return body["data"]


async def test_a_trained_model_comes_with_its_holdout_report(client):
    m = trained()
    data = await models(client, f"adm_a_{RUN}", "?goal=trained")
    assert [(d["workspace"], d["goal"]) for d in data] == [(WS_A, "trained")]
    got = data[0]["model"]
    assert got["version"] == m.version and got["kind"] == m.kind  # the newest row serves, not the older base_rate
    assert (got["n_customers"], got["n_positive"]) == (m.n_customers, m.n_positive) == (400, m.n_positive)
    assert got["base_rate"] == pytest.approx(m.base_rate) and got["auc"] == pytest.approx(m.auc)
    assert got["trained_at"].startswith("2025-06-15")
    q = got["quality"]
    assert q == m.quality  # exactly the stored report
    assert q["kind"] == m.kind and 0.6 < q["auc"] < 1.0 and 0 < q["log_loss"] < 1 and q["lift_top_decile"] > 1
    assert len(q["calibration"]) == 10 and sum(b["count"] for b in q["calibration"]) == q["n_holdout_snapshots"] > 0
    assert q["calibration"][0]["bin"] == [0.0, 0.1]
    assert set(q["candidates"]) == {"logistic", "gbt"} and "rule" in q["choice"]
    assert q["n_holdout_customers"] == pytest.approx(0.2 * 400, abs=2)


async def test_scoping_and_the_goal_filter(client):
    assert (await client.get("/admin/v1/models")).status == 401
    assert (await client.get("/admin/v1/models", headers=bearer("wrong"))).status == 401
    mine = await models(client, f"adm_a_{RUN}")
    assert [d["goal"] for d in mine] == ["trained", "base", "untrained", "old-format"]
    assert {d["workspace"] for d in mine} == {WS_A}
    theirs = await models(client, f"adm_b_{RUN}")
    assert [(d["workspace"], d["goal"]) for d in theirs] == [(WS_B, "trained")]
    assert theirs[0]["model"]["quality"]["calibration"] == []  # B's own (report-less) model, not A's
    # Another workspace's goal name is not theirs to see; an unknown name: nothing (as /admin/v1/goals).
    assert await models(client, f"adm_b_{RUN}", "?goal=base") == []
    assert await models(client, f"adm_a_{RUN}", "?goal=no-such-goal") == []
    assert await models(client, f"adm_a_{RUN}", "?goal=%FF%00%27%20OR%201=1") == []  # never reaches SQL as text
    everyone = await models(client, OPERATOR, "?goal=trained")
    assert [d["workspace"] for d in everyone] == [WS_A, WS_B]


async def test_untrained_base_rate_and_report_less_models(client):
    by_goal = {d["goal"]: d["model"] for d in await models(client, f"adm_a_{RUN}")}
    assert by_goal["untrained"] is None
    base = by_goal["base"]
    assert base["kind"] == "base_rate" and base["auc"] is None and base["base_rate"] == pytest.approx(0.1)
    # The reduced report, as Model.report() builds it for a model without one.
    assert base["quality"] == pr.base_rate_model(WS_A, "base", 4, 40, now_ms=NOW).report()
    assert base["quality"]["calibration"] == [] and base["quality"]["log_loss"] is None
    old = by_goal["old-format"]
    assert old["kind"] == trained().kind
    assert old["quality"] == dataclasses.replace(trained(), goal="old-format", quality=None).report()


async def test_the_goals_page_json_carries_the_same_report(client):
    r = await client.get("/admin/v1/goals?goal=trained", headers=bearer(f"adm_a_{RUN}"))
    assert r.status == 200
    (g,) = (await r.json())["data"]
    assert g["model"] == (await models(client, f"adm_a_{RUN}", "?goal=trained"))[0]["model"]
    assert len(g["model"]["quality"]["calibration"]) == 10
