"""The embedded stack's durability pieces without a broker: the spooled sink (spool -> relay ->
producer, in order, sent again after a reconnect or a restart), the ledger (release only what
is stored, and what it led to), the one bounded stop, and admission (503 in the dialect's
shape, with Retry-After)."""

from __future__ import annotations

import asyncio
import base64

import pytest
from aiohttp.test_utils import TestClient, TestServer

from ingest_gateway import errors
from ingest_gateway.app import create_app
from ingest_gateway.cli.ledger import Ledger, lag
from ingest_gateway.durable import SpooledSink
from schemas import model, topics
from schemas.config import parse_config
from schemas.kafka import KafkaUnavailable, RecordTooLarge
from schemas.settings import GatewaySettings
from schemas.stopping import bounded
from stream_processors.runtime import Progress
from tests.conftest import globex_config
from tests.memory import MemoryProducer


class FakeProducer:
    """``RecordProducer.send_encoded`` as the relay uses it: one log per topic (partition 0)."""

    def __init__(self, log: list, fail: list | None = None, too_large: bytes | None = None):
        self.log, self.fail, self.too_large = log, fail if fail is not None else [], too_large
        self.acked: dict[tuple[str, int], int] = {}
        self.headers: list[tuple] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send_encoded(self, entries, batched=False):
        if self.fail:
            raise self.fail.pop(0)
        if self.too_large is not None and any(v == self.too_large for _, _, v, _ in entries):
            raise RecordTooLarge("too large for the broker")
        top = {}
        for topic, key, value, headers in entries:
            self.log.append((topic, key, value))
            self.headers.append(tuple(headers))
            off = sum(1 for t, _, _ in self.log if t == topic) - 1
            top[(topic, 0)] = off
            self.acked[(topic, 0)] = off
        return top

    async def publish(self, records):
        return await self.send_encoded([(r.topic, r.key, b"dead-letter", ()) for r in records])


SEGMENT_AUTH = {"Authorization": "Basic " + base64.b64encode(b"wk_1:").decode()}


def event(i: int) -> model.Record:
    return model.event(workspace="acme", customer_id=f"c{i}", name="e", properties={"i": i}, source="test")


async def wait(cond, timeout=5.0):
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met"
        await asyncio.sleep(0.01)


async def test_spooled_records_reach_the_broker_in_acceptance_order_and_leave_marks(tmp_path):
    log: list = []
    sink = SpooledSink(tmp_path / "spool", lambda: FakeProducer(log))
    await sink.start()
    await asyncio.gather(*(sink.publish([event(i), event(i + 1000)]) for i in range(50)))
    await sink.flush()
    assert len(log) == 100
    # Each call's records stay together and in call order (seq order = spool order).
    seqs = [e for e in range(1, 101)]
    assert sink.sent_seq == seqs[-1] and sink.marks[-1].seq == 100
    assert sum(1 for _ in sink.marks) >= 1
    await sink.stop()


async def test_what_was_not_released_is_sent_again_after_a_reconnect_and_a_restart(tmp_path):
    first: list = []
    sink = SpooledSink(tmp_path / "spool", lambda: FakeProducer(first))
    await sink.start()
    for i in range(10):
        await sink.publish([event(i)])
    await sink.flush()
    await sink.spool.release(4)  # the ledger found 1..4 stored
    second: list = []
    producers: list[FakeProducer] = []
    sink.make_producer = lambda: producers.append(FakeProducer(second)) or producers[-1]
    await sink.reconnect()
    await sink.flush()
    assert [v for _, _, v in second] == [v for _, _, v in first[4:]]  # 5..10, in order
    # Sent again, and said so (the customers sink appends an item without id only once).
    assert all(("goalstream-resent", b"1") in h for h in producers[0].headers)
    await sink.publish([event(99)])
    await sink.flush()
    assert ("goalstream-resent", b"1") not in producers[0].headers[-1]  # a new record is not
    assert not sink.marks or sink.marks[0].seq >= 5
    await sink.stop()
    # A restart on the same directory: the spool hands back what was not released.
    third: list = []
    again = SpooledSink(tmp_path / "spool", lambda: FakeProducer(third))
    await again.start()
    await again.flush()
    assert again.recovered == 7 and [v for _, _, v in third] == [v for _, _, v in first[4:] + second[-1:]]
    await again.stop()


async def test_a_broker_that_does_not_acknowledge_is_retried_in_order(tmp_path, monkeypatch):
    import ingest_gateway.durable as durable

    monkeypatch.setattr(durable, "RETRY_S", 0.01)
    log: list = []
    sink = SpooledSink(tmp_path / "spool", lambda: FakeProducer(log, fail=[KafkaUnavailable("down"), KafkaUnavailable("down")]))
    await sink.start()
    for i in range(5):
        await sink.publish([event(i)])  # durable: returns although the broker refuses
    await wait(lambda: len(log) == 5)
    assert [v for _, _, v in log] == sorted((v for _, _, v in log), key=[v for _, _, v in log].index)
    assert sink.failing is None
    await sink.stop()


async def test_a_record_the_broker_refuses_as_too_large_is_dead_lettered_not_retried_forever(tmp_path):
    log: list = []
    big = event(7)
    sink = SpooledSink(tmp_path / "spool", lambda: FakeProducer(log, too_large=None))
    await sink.start()
    # Find the encoded value of the big record as the relay will see it.
    await sink.publish([big])
    await sink.flush()
    value = log[-1][2]
    log.clear()
    sink.make_producer = lambda: FakeProducer(log, too_large=value)
    await sink.publish([event(1), big, event(2)])
    await sink.reconnect()  # the same spool: big now refused by the "broker"
    await sink.flush()
    assert [t for t, _, _ in log].count(topics.DEADLETTER) >= 1
    assert any(t == topics.EVENTS for t, _, _ in log)
    await sink.stop()


async def test_a_spool_that_cannot_write_answers_unavailable(tmp_path, monkeypatch):
    sink = SpooledSink(tmp_path / "spool", lambda: FakeProducer([]))
    await sink.start()

    async def broken(items):
        raise OSError("disk full")

    monkeypatch.setattr(sink.spool, "append", broken)
    with pytest.raises(KafkaUnavailable):
        await sink.publish([event(1)])
    await sink.stop()


class Part:
    """The processors or dispatcher as the ledger sees them: progress and their producer's acks."""

    def __init__(self) -> None:
        self.progress = Progress()
        self.scoring = Progress()  # the processors' scoring stage
        self.producer = FakeProducer([])

    def caught_up(self, ends):
        return self.progress.caught_up(ends)

    def scored(self, ends):
        return self.scoring.caught_up(ends)

    @property
    def published(self):
        return self.producer.acked


class Msg:
    def __init__(self, topic, partition, offset):
        self.topic, self.partition, self.offset = topic, partition, offset


async def test_the_ledger_releases_only_what_is_stored_and_what_it_led_to(tmp_path):
    log: list = []
    sink = SpooledSink(tmp_path / "spool", lambda: FakeProducer(log))
    await sink.start()
    processors, dispatcher = Part(), Part()
    ledger = Ledger(sink, lambda: processors, lambda: dispatcher)
    for i in range(3):
        await sink.publish([event(i)])
    await sink.flush()
    assert ledger.step() is None and ledger.backlog == 3  # nothing stored yet
    # Stored up to offset 1 (two records), not scored yet.
    processors.progress.advance([Msg(topics.EVENTS, 0, 1)])
    assert ledger.step() is None and ledger.backlog <= 1  # stored, so out of the backlog
    # Scored: the scoring stage published a propensity change for them.
    processors.producer.acked[(topics.PROPENSITY, 0)] = 0
    processors.scoring.advance([Msg(topics.EVENTS, 0, 1)])
    assert ledger.step() is None  # scored, but the dispatcher has not stored its delivery
    dispatcher.progress.advance([Msg(topics.PROPENSITY, 0, 0)])
    released = ledger.step()
    assert released is not None and released <= 2
    processors.progress.advance([Msg(topics.EVENTS, 0, 2)])
    processors.scoring.advance([Msg(topics.EVENTS, 0, 2)])
    assert ledger.step() == 3 and ledger.backlog == 0
    await sink.spool.release(3)
    assert ledger.settled
    await sink.stop()


def test_lag_counts_acknowledged_records_not_yet_handled():
    progress = Progress()
    progress.advance([Msg(topics.EVENTS, 0, 9), Msg(topics.CUSTOMERS, 1, 4)])
    acked = {(topics.EVENTS, 0): 19, (topics.CUSTOMERS, 1): 4, (topics.PROPENSITY, 0): 100}
    assert lag(acked, progress) == 10  # propensity is not the gateway's
    assert lag(acked, None) == 20 + 5


async def test_a_stop_that_raises_cancelled_from_inside_is_a_failed_stop_not_our_cancellation():
    async def aiokafka_like() -> None:
        raise asyncio.CancelledError  # what consumer.stop() does when its tasks were cancelled under it

    assert await bounded("the consumer", aiokafka_like, 1.0) is False
    # and the caller carries on: this line runs
    async def hangs() -> None:
        await asyncio.sleep(60)

    t0 = asyncio.get_running_loop().time()
    assert await bounded("hangs", hangs, 0.05) is False
    assert asyncio.get_running_loop().time() - t0 < 1


async def test_admission_refuses_in_the_dialects_shape_with_retry_after():
    refusal: list = [errors.Unavailable("the pipeline's broker is restarting; retry shortly", retry_after=2)]
    producer = MemoryProducer()
    app = create_app(GatewaySettings(), parse_config(globex_config()), producer=producer,
                     admission=lambda: refusal[0] if refusal else None)
    async with TestClient(TestServer(app)) as client:
        r = await client.post("/v1/track", json={"userId": "u", "event": "e"}, headers=SEGMENT_AUTH)
        assert r.status == 503 and r.headers["Retry-After"] == "2"
        assert "restarting" in (await r.text())
        refusal.clear()
        r = await client.post("/v1/track", json={"userId": "u", "event": "e"}, headers=SEGMENT_AUTH)
        assert r.status == 200
