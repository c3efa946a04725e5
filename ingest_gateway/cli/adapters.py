"""The stream processors' scoring, as the HTTP app's ports (``ingest_gateway.ports``).

GET recommended-next-actions goes through ``GoalRecommender``: the customer's goal state
read from ClickHouse now and the goal's current model (the ``ModelStore`` the scorer
uses, in ``goalstream up``), assessed as the scorer assesses it. POST /admin/v1/train goes
through ``ScorerTrainer``: the running processors' scorer trains and rescores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from schemas import model
from schemas.config import Goal, GoalstreamConfig
from schemas.warehouse import Warehouse
from stream_processors.scoring import goals

from .. import errors
from ..ports import Recommendation

if TYPE_CHECKING:  # a gateway alone never loads the processors (faust)
    from stream_processors.app import Processors


class GoalRecommender:
    def __init__(self, warehouse: Warehouse, config: GoalstreamConfig, models: goals.ModelStore | None = None):
        self.warehouse = warehouse
        self.config = config
        self.models = models if models is not None else goals.ModelStore(warehouse)

    async def recommend(self, workspace: str, goal: Goal, customer_id: str) -> Recommendation | None:
        now = model.now_ms()
        states = await goals.load_states(self.warehouse, self.config, workspace, [customer_id], now)
        state = next((x for x in states if x.goal.name == goal.name), None)
        if state is None:
            return None
        a = goals.assess(state, await self.models.get(workspace, goal), now)
        return Recommendation(likelihood=a.likelihood, actions=a.actions, model_kind=a.model_kind, model_version=a.model_version, at_ms=now)


class ScorerTrainer:
    """``goalstream train`` while the stack runs (``workspace``: only that workspace's
    goals, for a workspace's admin token). ``processors`` is asked each time: the stack
    replaces its processors when it recycles the embedded broker."""

    def __init__(self, processors: Callable[[], "Processors | None"]):
        self._processors = processors

    async def __call__(self, goal: str | None, workspace: str | None = None) -> list[dict[str, Any]]:
        processors = self._processors()
        if processors is None:
            raise errors.Unavailable("the processors are not running; retry shortly", retry_after=5)
        return await processors.train(goal, workspace=workspace)
