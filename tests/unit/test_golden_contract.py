"""The golden fixtures' contract lane: every fixture that reads nothing from ClickHouse,
replayed through ``create_app()`` with the in-memory producer (tests/memory.py: the real
Avro codec, size check and partitioner). No broker, no chDB: the whole lane runs in
seconds. The runner and the fixture format: tests/golden.py; the fixtures that read
ClickHouse run in tests/integration/test_golden.py.
"""

from __future__ import annotations

import pytest

from ingest_gateway.app import create_app
from schemas.config import parse_config
from schemas.settings import GatewaySettings
from tests import golden
from tests.conftest import globex_config
from tests.memory import MemoryProducer

CASES = golden.lane("contract")


class NoClickHouse:
    """The warehouse of a gateway that must not read it: open, and any use of it is
    remembered (and fails the request), so a fixture that reads ClickHouse says so."""

    is_open = True

    def __init__(self):
        self.used: list[str] = []

    def __getattr__(self, name: str):
        self.used.append(name)
        raise AssertionError(f"the contract lane has no ClickHouse (warehouse.{name} was used)")


class MemoryLog:
    def __init__(self, producer: MemoryProducer):
        self.producer = producer

    async def mark(self) -> dict[tuple[str, int], int]:
        return self.producer.since()

    async def after(self, mark: dict[tuple[str, int], int]) -> list[golden.Message]:
        return [(m.topic, m.key, m.value, m.headers) for m in self.producer.after(mark)]


@pytest.fixture(scope="module")
async def gateway():
    producer, warehouse = MemoryProducer(), NoClickHouse()
    settings = GatewaySettings(kafka="127.0.0.1:9", clickhouse="chdb://unused")
    c = await golden.serve(create_app(settings, parse_config(globex_config()), warehouse=warehouse, producer=producer))
    yield c, MemoryLog(producer), warehouse
    await c.close()


@pytest.mark.parametrize("fixture", CASES, ids=[golden.case_id(c) for c in CASES])
async def test_golden(fixture, gateway):
    client, log, warehouse = gateway

    async def reads_nothing() -> None:
        used, warehouse.used[:] = list(warehouse.used), []
        assert not used, (f"{golden.case_id(fixture)} reads ClickHouse ({', '.join(used)}): "
                          "list it in tests/golden.py READS_CLICKHOUSE, it runs in the integration lane")

    await golden.replay(fixture, client, log, after_response=reads_nothing)


def test_lanes_cover_every_fixture_once():
    contract, integration = set(golden.lane("contract")), set(golden.lane("integration"))
    assert contract | integration == set(golden.CASES) and not contract & integration
    assert {golden.case_id(c) for c in integration} == golden.READS_CLICKHOUSE, "a READS_CLICKHOUSE name has no fixture"
