"""Component states reported by ``GET /healthz``; each part of the stack sets its own."""

from __future__ import annotations


class Health:
    def __init__(self) -> None:
        self.components: dict[str, str] = {}

    def set(self, component: str, state: str) -> None:
        self.components[component] = state

    @property
    def ok(self) -> bool:
        return all(state in ("up", "running", "embedded", "external") for state in self.components.values())

    def report(self) -> dict[str, object]:
        return {"status": "ok" if self.ok else "degraded", "components": dict(self.components)}
