"""Component states reported by ``GET /healthz``; each part of the stack sets its own.

Some components are also probed on every ``/healthz`` (the warehouse: ``SELECT 1`` on the
normal lane, the one ingestion and the API use): a probe that fails marks the component
"down", one that does not answer within its timeout marks it "stalled", so a warehouse
wedged behind a long query shows as degraded instead of ok.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

Probe = Callable[[], Awaitable[bool]]
OK_STATES = ("up", "running", "embedded", "external")


class Health:
    def __init__(self) -> None:
        self.components: dict[str, str] = {}
        self.details: dict[str, object] = {}  # figures shown beside the states (e.g. the backlog)
        self._probes: dict[str, tuple[Probe, float]] = {}

    def set(self, component: str, state: str) -> None:
        self.components[component] = state

    def detail(self, name: str, value: object) -> None:
        self.details[name] = value

    def add_probe(self, component: str, probe: Probe, timeout_s: float = 1.0) -> None:
        self._probes[component] = (probe, timeout_s)

    async def probe(self) -> None:
        async def one(component: str, probe: Probe, timeout_s: float) -> None:
            if self.components.get(component) in ("stopped", "draining"):
                return
            try:
                ok = await asyncio.wait_for(probe(), timeout_s)
            except asyncio.TimeoutError:
                self.set(component, "stalled")
                return
            except Exception:
                ok = False
            self.set(component, "up" if ok else "down")

        await asyncio.gather(*(one(c, p, t) for c, (p, t) in self._probes.items()))

    def states(self) -> dict[str, str]:
        """Every component's state, as reported."""
        return dict(self.components)

    @property
    def ok(self) -> bool:
        return all(state in OK_STATES for state in self.states().values())

    def report(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "degraded", "components": self.states(), **self.details}
