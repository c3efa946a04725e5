"""The scoring stage (stream_processors.scoring.stage) with a list-backed source and scorer:
customers from the message keys (and merged ids), held until the sinks stored their offsets,
coalesced across batches, scored once, and only then committed. No broker, no ClickHouse."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from schemas import codec, model, topics
from stream_processors.runtime import Progress
from stream_processors.scoring.stage import ScoringStage


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None = b""
    headers: Any = ()


class Source:
    def __init__(self, batches):
        self.batches = batches
        self.commits: list[dict] = []

    async def __aiter__(self):
        for b in self.batches:
            yield b

    async def commit(self, offsets):
        self.commits.append({(tp.topic, tp.partition): o for tp, o in offsets.items()})

    async def start(self):
        pass

    async def stop(self, timeout_s: float = 1.0):
        pass


class Scorer:
    def __init__(self):
        self.calls: list[tuple[dict, str]] = []

    async def score_with_retry(self, touched, trigger, token):
        self.calls.append((touched, trigger))

    def forget(self, touched):
        self.forgotten = touched


def stage(batches, progress, owned=lambda t, p: True):
    return ScoringStage(Source(batches), Scorer(), stored=progress, owned=owned, interval_s=0.01,
                        bootstrap="unused:9092", sink_groups={})


async def test_customers_are_scored_once_after_their_offsets_are_stored_then_committed():
    ev = lambda o, c: Msg(topics.EVENTS, 0, o, f"acme:{c}".encode())  # noqa: E731
    progress = Progress()
    s = stage([[ev(0, "c1"), ev(1, "c2")], [ev(2, "c1"), ev(3, "c3")]], progress)
    await s._read()
    assert s.n_waiting == 4
    assert await s.cycle() == 0.0 and s.scorer.calls == []  # nothing stored yet
    progress.advance([ev(1, "c2")])  # the sink stored the first batch only
    await s.cycle()
    assert s.scorer.calls == [({"acme": {"c1", "c2"}}, "event")]
    assert s.source.commits == [{(topics.EVENTS, 0): 2}]
    progress.advance([ev(3, "c3")])
    await s.cycle()
    assert s.scorer.calls[1] == ({"acme": {"c1", "c3"}}, "event") and s.source.commits[1] == {(topics.EVENTS, 0): 4}
    assert s.n_waiting == 0


async def test_a_customer_change_wins_the_trigger_and_a_merge_touches_the_merged_id():
    merge = model.customer_merge(workspace="acme", customer_id="c1", merged_id="c0", kind="merge", source="traitly")
    value, headers = codec.encode(merge.schema, merge.value)
    progress = Progress()
    batch = [Msg(topics.EVENTS, 1, 0, b"acme:c1"), Msg(topics.CUSTOMERS, 0, 0, merge.key, value, list(headers)),
             Msg(topics.EVENTS, 1, 1, None)]  # no key: nobody to score
    s = stage([batch], progress)
    await s._read()
    progress.advance(batch)
    await s.cycle()
    triggers = {}
    for touched, trigger in s.scorer.calls:
        for cid in touched["acme"]:
            triggers[cid] = trigger
    assert triggers == {"c1": "customer", "c0": "customer"}


async def test_partitions_another_worker_owns_wait_for_that_workers_committed_offsets():
    progress = Progress()
    s = stage([[Msg(topics.EVENTS, 3, 5, b"acme:c9")]], progress, owned=lambda t, p: False)
    await s._read()

    async def refresh():
        s._remote[(topics.EVENTS, 3)] = 6  # the owner committed past offset 5

    s._refresh_remote = refresh
    await s.cycle()
    assert s.scorer.calls == [({"acme": {"c9"}}, "event")]


async def test_reading_pauses_when_too_much_waits_and_resumes_once_scored(monkeypatch):
    from stream_processors.scoring import stage as st

    monkeypatch.setattr(st, "MAX_WAITING", 2)
    progress = Progress()
    msgs = [Msg(topics.EVENTS, 0, i, b"acme:c%d" % i) for i in range(4)]
    s = stage([msgs[:2], msgs[2:]], progress)
    reader = asyncio.create_task(s._read())
    await asyncio.sleep(0.05)
    assert not reader.done() and s.n_waiting == 2  # paused after the first batch
    progress.advance(msgs[:2])
    await s.cycle()
    await asyncio.sleep(0.05)
    assert s.n_waiting == 2 and len(s.scorer.calls) == 1  # the second batch read, paused again
    progress.advance(msgs[2:])
    await s.cycle()
    await asyncio.wait_for(reader, 1)
    assert s.n_waiting == 0 and len(s.scorer.calls) == 2
