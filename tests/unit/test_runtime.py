"""The batch runtime with list-backed sinks, and the sinks with an in-memory warehouse
(stream_processors.runtime, stream_processors.sinks): decode, dead-letter, retry/isolate,
progress, commit after store, dedup tokens. No broker, no ClickHouse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from schemas import codec, model, topics
from schemas.warehouse import WarehouseError
from stream_processors import runtime as rt
from stream_processors.errors import ProcessorError
from stream_processors.retry import Backoff
from stream_processors.runtime import BatchRuntime, Item, ListSink, Progress
from stream_processors.sinks import CustomersSink, DeadLettersSink, EventsSink, batch_token
from stream_processors.storedids import EXISTING_SQL, key_hashes

FAST = Backoff(first=0.001, factor=1.0, cap=0.001, jitter=0.0)


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: Any = ()
    key: bytes | None = b"acme:c1"


@dataclass
class Letters:
    sent: list[tuple[Any, str, str]] = field(default_factory=list)

    async def publish(self, message: Any, reason: str, stage: str) -> None:
        self.sent.append((message, reason, stage))


def event_msg(offset: int, customer: str = "c1", message_id: str | None = None, partition: int = 0) -> Msg:
    rec = model.event(workspace="acme", customer_id=customer, name="opened", properties={"n": offset}, source="traitly")
    if message_id is not None:
        rec.value["message_id"] = message_id
    value, headers = codec.encode(rec.schema, rec.value)
    return Msg(topics.EVENTS, partition, offset, value, list(headers), rec.key)


def make(sink, letters=None, up=True, stage="events-sink", expected=(model.EVENT,), **kw) -> BatchRuntime:
    async def is_up() -> bool:
        return up() if callable(up) else up

    return BatchRuntime(
        stage, expected, sink, letters=Letters() if letters is None else letters, is_up=is_up, progress=Progress(),
        backoff=FAST, record_backoff=FAST, **kw,
    )


def fail_n(n: int, exc: Exception):
    """A ``ListSink.fail`` that raises ``exc`` on the first ``n`` writes."""
    count = [0]

    def fail(batch):
        count[0] += 1
        return exc if count[0] <= n else None

    return fail, count


def refuse(bad: Msg, exc: Exception):
    """A ``ListSink.fail`` that refuses any batch of more than one, and ``bad`` alone; and
    the sizes of the writes it saw."""
    writes: list[int] = []

    def fail(batch):
        writes.append(len(batch))
        return exc if len(batch) > 1 or batch[0].message is bad else None

    return fail, writes


async def test_what_does_not_decode_is_dead_lettered_with_the_stage_and_the_rest_stored():
    sink, letters = ListSink(), Letters()
    run = make(sink, letters)
    good = event_msg(0)
    unknown = Msg(topics.EVENTS, 0, 1, b"\x00not avro", [("goalstream-schema", b"goalstream.Event"), ("goalstream-schema-version", b"99")])
    empty = Msg(topics.EVENTS, 0, 2, None, list(codec.LATEST[model.EVENT].headers))
    upsert = model.customer_upsert(workspace="acme", customer_id="c1", attributes={}, source="traitly")
    wrong = Msg(topics.EVENTS, 1, 0, *codec.encode(upsert.schema, upsert.value))
    await run.process([good, unknown, empty, wrong])
    assert [i.message for i in sink.items] == [good]
    assert sink.items[0].schema == model.EVENT and sink.items[0].record["customer_id"] == "c1"
    reasons = {m.offset if m.partition == 0 else "wrong": (reason, stage) for m, reason, stage in letters.sent}
    assert reasons[1] == ("unknown schema goalstream.Event version 99", "events-sink")
    assert reasons[2] == ("message has no value", "events-sink")
    assert reasons["wrong"] == (f"{model.CUSTOMER_UPSERT} does not belong on {topics.EVENTS}", "events-sink")
    assert run.progress.offsets == {(topics.EVENTS, 0): 2, (topics.EVENTS, 1): 0}


async def test_a_retriable_error_retries_the_whole_batch_until_it_is_stored():
    sink = ListSink()
    sink.fail, count = fail_n(3, WarehouseError("connection refused"))
    letters = Letters()
    batch = [event_msg(i) for i in range(3)]
    await make(sink, letters).process(batch)
    assert count[0] == 4 and len(sink.batches) == 1 and [i.message for i in sink.batches[0]] == batch
    assert letters.sent == []


async def test_a_clickhouse_that_is_down_is_waited_for_and_the_batch_never_split():
    sink = ListSink()
    sink.fail, count = fail_n(rt.ISOLATE_AFTER + 4, WarehouseError("down"))
    letters = Letters()
    await make(sink, letters, up=False).process([event_msg(i) for i in range(3)])
    assert count[0] == rt.ISOLATE_AFTER + 5 and len(sink.batches) == 1 and len(sink.batches[0]) == 3
    assert letters.sent == []


async def test_a_clickhouse_that_answers_but_keeps_refusing_gets_the_batch_record_by_record():
    sink, letters = ListSink(), Letters()
    bad = event_msg(1, customer="bad")
    sink.fail, writes = refuse(bad, WarehouseError("Code: 53. Type mismatch"))
    batch = [event_msg(0), bad, event_msg(2)]
    run = make(sink, letters)
    await run.process(batch)
    assert writes[: rt.ISOLATE_AFTER] == [3] * rt.ISOLATE_AFTER  # the whole batch, ISOLATE_AFTER times
    assert [b[0].message for b in sink.batches] == [batch[0], batch[2]]  # then one by one
    assert writes.count(1) == 2 + rt.REFUSALS
    assert [(m, stage) for m, _, stage in letters.sent] == [(bad, "events-sink")]
    assert letters.sent[0][1] == "ClickHouse refused the record: Code: 53. Type mismatch"
    assert run.progress.offsets == {(topics.EVENTS, 0): 2}


async def test_a_non_retriable_error_isolates_at_once_and_dead_letters_the_record_it_refuses():
    sink, letters = ListSink(), Letters()
    bad = event_msg(1, customer="bad")
    sink.fail, writes = refuse(bad, ProcessorError("cannot be stored"))  # not retriable
    await make(sink, letters).process([event_msg(0), bad, event_msg(2)])
    assert writes == [3, 1, 1, 1]
    assert [m for m, _, _ in letters.sent] == [bad] and len(sink.batches) == 2


async def test_a_record_refused_while_clickhouse_is_down_again_is_not_counted_against_it():
    sink, letters = ListSink(), Letters()
    state = {"up": True, "single": 0}

    def fail(batch):
        if len(batch) > 1:
            return WarehouseError("refused")
        state["single"] += 1
        if state["single"] <= 6:
            state["up"] = state["single"] > 4  # down for the first four single writes
            return WarehouseError("down again")
        return None

    sink.fail = fail
    await make(sink, letters, up=lambda: state["up"]).process([event_msg(0), event_msg(1)])
    # Four failures while down do not count, two while up do (< REFUSALS): the record is stored.
    assert letters.sent == [] and len(sink.items) == 2


async def test_a_bug_in_a_sink_is_not_taken_for_the_records_fault():
    sink, letters = ListSink(), Letters()
    sink.fail = lambda batch: KeyError("bug")
    run = make(sink, letters)
    with pytest.raises(KeyError):
        await run.process([event_msg(0)])
    assert letters.sent == [] and run.progress.offsets == {}


async def test_a_batch_is_committed_only_after_the_sink_stored_it():
    """The source acknowledges a batch when asked for the next one (as faust's take_events does)."""
    log: list[str] = []
    batches = [[event_msg(0), event_msg(1)], [event_msg(2)]]

    class Recording(ListSink):
        async def write(self, batch):
            await super().write(batch)
            log.append(f"store {[i.message.offset for i in batch]}")

    sink = Recording()
    sink.fail, _ = fail_n(2, WarehouseError("down"))

    async def source():
        for b in batches:
            yield b
            log.append(f"commit {[m.offset for m in b]}")

    run = make(sink)
    await run.run(source())
    assert log == ["store [0, 1]", "commit [0, 1]", "store [2]", "commit [2]"]

    # A batch whose store fails for good is never committed.
    log.clear()
    sink.fail = lambda batch: KeyError("bug")
    with pytest.raises(KeyError):
        await run.run(source())
    assert log == []


async def test_the_deadletter_stage_stores_what_does_not_decode_raw_and_never_splits():
    sink = ListSink()
    sink.fail, count = fail_n(rt.ISOLATE_AFTER + 2, WarehouseError("refused"))
    letter = model.dead_letter(reason="r", stage="events-sink", key=b"k", value=b"v", headers={}, source_topic=topics.EVENTS)
    good = Msg(topics.DEADLETTER, 2, 8, *codec.encode(letter.schema, letter.value))
    raw = Msg(topics.DEADLETTER, 2, 9, b"\x00not avro", [])
    run = make(sink, None, stage="deadletters-sink", expected=(model.DEAD_LETTER,), rescue=DeadLettersSink.rescue)
    run.letters = None  # the end of the line
    await run.process([good, raw])
    assert count[0] == rt.ISOLATE_AFTER + 3 and len(sink.batches) == 1
    (g, r) = sink.batches[0]
    assert g.record["id"] == letter.value["id"]
    assert r.record["id"] == "ef38f10e1614520ebebe02539fef6349"  # deterministic: value + partition + offset
    assert r.record["stage"] == "deadletters-sink" and r.record["value"] == b"\x00not avro"
    assert r.record["reason"] == "undecodable dead letter: message has no goalstream-schema / goalstream-schema-version headers"


def test_a_runtime_without_dead_letters_needs_a_rescue():
    with pytest.raises(ValueError):
        BatchRuntime("x", (), ListSink(), letters=None, is_up=None, progress=Progress())


async def test_progress_is_caught_up_at_the_end_offsets():
    p = Progress()
    p.advance([event_msg(4), event_msg(2), event_msg(0, partition=1)])
    assert p.offsets == {(topics.EVENTS, 0): 4, (topics.EVENTS, 1): 0}
    assert p.caught_up({(topics.EVENTS, 0): 5, (topics.EVENTS, 1): 1, (topics.EVENTS, 2): 0})
    assert not p.caught_up({(topics.EVENTS, 0): 6})
    assert await p.wait_caught_up({(topics.EVENTS, 0): 5}, 0.1)
    assert not await p.wait_caught_up({(topics.EVENTS, 0): 6}, 0.1)
    assert repr(p) == repr(p.offsets)


# -- the sinks, with an in-memory warehouse ------------------------------------------


class Warehouse:
    def __init__(self, rows: list[dict] | None = None):
        self.inserts: list[tuple[str, list, tuple, str | None]] = []
        self.log: list[str] = []
        self._rows = rows or []

    async def insert(self, table, rows, columns, token=None, *, column_oriented=False):
        if column_oriented:
            rows = [list(r) for r in zip(*rows)]
        self.inserts.append((table, rows, tuple(columns), token))
        self.log.append(f"insert {table}")

    async def insert_avro(self, table, container, columns, token=None, *, rows=None):
        import fastavro, io

        def ms(v):  # fastavro reads timestamp-millis back as datetimes; the sink's own rows hold int ms
            return round(v.timestamp() * 1000) if hasattr(v, "timestamp") else v

        records = fastavro.reader(io.BytesIO(container))
        self.inserts.append((table, [[ms(r[c]) for c in columns] for r in records], tuple(columns), token))
        self.log.append(f"insert {table} avro")

    async def rows(self, sql, params=None):
        if sql == EXISTING_SQL:  # the events sink's exact check: which of these ids are stored
            self.log.append("rows existing")
            return [{"message_id": m} for w, m in getattr(self, "stored", []) if w == params["ws"] and m in params["ids"]]
        return self._rows

    async def raw(self, sql, fmt, params=None, *, readonly=False):
        # What ClickHouse stored: the events sink's seeds (``stored`` ids, newest first, as
        # JSONCompactEachRow; all their hashes as RowBinary).
        self.log.append(f"raw {fmt}")
        if fmt == "RowBinary":
            return key_hashes(getattr(self, "stored", [])).astype("<u4").tobytes()
        return b"".join(orjson.dumps(list(k)) + b"\n" for k in getattr(self, "stored", [])[: (params or {}).get("n")])


def test_batch_token_is_unchanged():
    msgs = [Msg(topics.EVENTS, 0, 7, b""), Msg(topics.EVENTS, 1, 3, b"")]
    assert batch_token("events", msgs, ["a", "b"]) == "events-4b9085aa79cc15d591b43e13bf172141"


async def test_events_sink_skips_resent_ids_and_stores_with_the_batch_token():
    wh = Warehouse()
    sink = EventsSink(wh, dedup_window=10)
    batch = [Item(m, model.EVENT, codec.decode(m.value, m.headers)[1]) for m in
             (event_msg(0, message_id="m1"), event_msg(1, message_id="m1"), event_msg(2, "c2", message_id="m2"))]
    await sink.write(batch)
    table, rows, columns, token = wh.inserts[0]
    assert table == "events" and [r[0] for r in rows] == ["m1", "m2"]
    assert token == batch_token("events", [i.message for i in batch], ["m1", "m1", "m2"])
    # Seen within the window: not stored again.
    await sink.write(batch[:1])
    assert len(wh.inserts) == 1


async def test_the_events_sink_first_remembers_what_clickhouse_stored_last_and_again_after_an_assignment():
    wh = Warehouse()
    wh.stored = [("acme", "m1")]  # newest first, as the seed query returns them
    sink = EventsSink(wh, dedup_window=10)
    batch = [Item(m, model.EVENT, codec.decode(m.value, m.headers)[1]) for m in
             (event_msg(0, message_id="m1"), event_msg(1, "c2", message_id="m2"))]
    await sink.write(batch)  # m1 was stored before this sink existed (a restart): not again
    assert [r[0] for r in wh.inserts[0][1]] == ["m2"]
    assert wh.log.count("raw JSONCompactEachRow") == 1
    await sink.write([Item(m, model.EVENT, codec.decode(m.value, m.headers)[1]) for m in [event_msg(2, "c3", message_id="m3")]])
    assert wh.log.count("raw JSONCompactEachRow") == 1  # once, not per batch
    # Partitions assigned: another worker may have stored what they resend.
    wh.stored = [("acme", "m4")]
    sink.reseed({"events-0"})
    raw = [event_msg(3, "c4", message_id="m4"), event_msg(4, "c4", message_id="m5")]
    await sink.write_raw([(m, codec.schema_of(m.headers)) for m in raw])
    assert wh.log.count("raw JSONCompactEachRow") == 2 and [r[0] for r in wh.inserts[-1][1]] == ["m5"]
    # With no window and no exact check there is nothing to remember, so nothing is read.
    none = Warehouse()
    await EventsSink(none, dedup_window=0, exact=False).write(batch)
    assert not any(line.startswith("raw") for line in none.log)


async def test_the_events_sink_drops_an_id_stored_long_before_and_keeps_a_filter_false_positive():
    wh = Warehouse()
    # Stored long ago: outside a window of 2, but every stored id is in the exact filter.
    wh.stored = [("acme", f"new{i}") for i in range(5)] + [("acme", "old")]
    sink = EventsSink(wh, dedup_window=2)
    items = lambda *ids: [Item(m, model.EVENT, codec.decode(m.value, m.headers)[1]) for m in  # noqa: E731
                          (event_msg(i, f"c{i}", message_id=mid) for i, mid in enumerate(ids))]
    await sink.write(items("old", "fresh"))
    assert [r[0] for r in wh.inserts[-1][1]] == ["fresh"] and wh.log.count("rows existing") == 1
    # The filter says "perhaps" for an id ClickHouse does not hold (a false positive, forced
    # here): the lookup says no, so it is stored, never dropped.
    sink.stored.add(key_hashes([("acme", "looks-stored")]))
    await sink.write(items("looks-stored"))
    assert [r[0] for r in wh.inserts[-1][1]] == ["looks-stored"] and wh.log.count("rows existing") == 2
    # What this sink stored is in the filter at once: a resend far outside the window is found.
    for i in range(5):
        await sink.write(items(f"pad{i}"))
    wh.stored.append(("acme", "fresh"))
    await sink.write(items("fresh", "other"))
    assert [r[0] for r in wh.inserts[-1][1]] == ["other"]
    # Off: the window alone (and no filter is read).
    off = Warehouse()
    off.stored = [("acme", "x"), ("acme", "y"), ("acme", "old")]  # newest first: old is outside the window
    await EventsSink(off, dedup_window=2, exact=False).write(items("old"))
    assert [r[0] for r in off.inserts[-1][1]] == ["old"] and "raw RowBinary" not in off.log


async def test_the_events_sinks_raw_path_stores_the_same_rows_with_the_same_token():
    msgs = [event_msg(0, message_id="m1"), event_msg(1, message_id="m1"), event_msg(2, "c2", message_id="m2")]
    decoded, raw = Warehouse(), Warehouse()
    await EventsSink(decoded, dedup_window=10).write([Item(m, model.EVENT, codec.decode(m.value, m.headers, logical=False)[1]) for m in msgs])
    sink = EventsSink(raw, dedup_window=10)
    await sink.write_raw([(m, codec.schema_of(m.headers)) for m in msgs])
    (_, want, cols, token), (_, got, cols2, token2) = decoded.inserts[0], raw.inserts[0]
    assert cols == cols2 and token == token2 and want == got and len(got) == 2
    await sink.write_raw([(msgs[0], codec.schema_of(msgs[0].headers))])  # seen: nothing more
    assert len(raw.inserts) == 1


async def test_customers_sink_folds_state_stores_then_caches():
    wh = Warehouse()
    sink = CustomersSink(wh, cache_size=10)
    up = model.customer_upsert(workspace="acme", customer_id="c1", attributes={"plan": "Pro"}, source="traitly", received_at_ms=1000)
    merge = model.customer_merge(workspace="acme", customer_id="c1", merged_id="c0", kind="merge", source="traitly", received_at_ms=2000)
    items = [Item(Msg(topics.CUSTOMERS, 0, 0, b""), up.schema, up.value), Item(Msg(topics.CUSTOMERS, 0, 1, b""), merge.schema, merge.value)]
    await sink.write(items)
    assert [t for t, *_ in wh.inserts] == ["customers", "customer_merges"]  # the customers first
    token = wh.inserts[0][3]
    assert token == batch_token("customers", [i.message for i in items], [i.record["message_id"] for i in items])
    assert wh.inserts[1][3] == token + "-merges"
    assert sink.cache[("acme", "c1")].attributes["plan"] == "Pro"
    sink.clear()
    assert sink.cache == {}


async def test_deadletters_sink_stores_rows_in_column_order_with_a_token_over_their_ids():
    wh = Warehouse()
    msg = Msg(topics.DEADLETTER, 0, 5, b"\x01")
    item = DeadLettersSink.rescue(msg, "bad")
    await DeadLettersSink(wh).write([item])
    table, rows, columns, token = wh.inserts[0]
    assert table == "deadletters" and columns[0] == "id" and rows[0][0] == item.record["id"]
    assert rows[0][1] == "undecodable dead letter: bad" and rows[0][2] == "deadletters-sink"
    assert token == batch_token("deadletters", [msg], [item.record["id"]])


# -- the raw path: undecoded first, decoding only when it fails ------------------------------


class RawListSink(ListSink):
    """A ListSink that also takes raw messages; ``raw_fail`` raises instead, while set."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[list[Any]] = []
        self.raw_fail: Exception | None = None

    async def write_raw(self, batch):
        if self.raw_fail is not None:
            raise self.raw_fail
        self.raw.append([m for m, _ in batch])


async def test_a_raw_sink_gets_the_messages_undecoded_and_the_wrong_ones_are_dead_lettered_first():
    sink, letters = RawListSink(), Letters()
    run = make(sink, letters)
    good = [event_msg(0), event_msg(1)]
    upsert = model.customer_upsert(workspace="acme", customer_id="c1", attributes={}, source="traitly")
    wrong = Msg(topics.EVENTS, 0, 2, *codec.encode(upsert.schema, upsert.value))
    await run.process([*good, wrong])
    assert sink.raw == [good] and sink.batches == []
    assert [(m, stage) for m, _, stage in letters.sent] == [(wrong, "events-sink")]
    assert run.progress.offsets == {(topics.EVENTS, 0): 2}


async def test_a_raw_batch_that_fails_is_decoded_and_what_does_not_decode_is_dead_lettered():
    sink, letters = RawListSink(), Letters()
    sink.raw_fail = WarehouseError("Cannot read all data", retriable=False)
    good = event_msg(0)
    corrupt = Msg(topics.EVENTS, 0, 1, b"\x07\x01", list(codec.LATEST[model.EVENT].headers))
    await make(sink, letters).process([good, corrupt])
    assert [i.message for i in sink.items] == [good]
    assert [m for m, _, _ in letters.sent] == [corrupt]


async def test_the_raw_path_refuses_a_record_it_cannot_read_so_the_batch_is_decoded():
    wh = Warehouse()
    sink = EventsSink(wh, dedup_window=10)
    corrupt = Msg(topics.EVENTS, 0, 1, b"\x07\x01", list(codec.LATEST[model.EVENT].headers))
    with pytest.raises(ProcessorError):
        await sink.write_raw([(event_msg(0), codec.LATEST[model.EVENT]), (corrupt, codec.LATEST[model.EVENT])])
    assert wh.inserts == []


def test_the_leading_strings_of_a_record_and_a_container_clickhouse_can_read():
    import io

    import fastavro

    rec = model.event(workspace="acme", customer_id="c1", name="opened", properties={"é": 1}, source="traitly")
    value, _ = codec.encode(rec.schema, rec.value)
    assert codec.leading_strings(value, 2) == [rec.value["message_id"], "acme"]
    with pytest.raises(codec.SchemaError):
        codec.leading_strings(value[:10], 2)
    for n in (0, 1, 63, 64, 200, 20_000):  # lengths of one, two and three bytes
        long = dict(rec.value, message_id="m" * n, workspace="w" * (n // 2))
        assert codec.leading_strings(codec.encode(rec.schema, long)[0], 2) == ["m" * n, "w" * (n // 2)]
    schema = codec.LATEST[model.EVENT]
    assert codec.leads_with_strings(schema, ("message_id", "workspace"))
    assert not codec.leads_with_strings(schema, ("workspace",))
    read = list(fastavro.reader(io.BytesIO(codec.container(schema, [value, value]))))
    assert len(read) == 2 and read[0]["properties"] == '{"é":1}'


def test_a_schema_is_named_by_headers_alike_as_a_tuple_or_a_list_and_an_unknown_one_every_time():
    headers = tuple(codec.LATEST[model.EVENT].headers)
    assert codec.schema_of(headers) is codec.schema_of(list(headers)) is codec.schema_of(headers) is codec.LATEST[model.EVENT]
    unknown = ((codec.SCHEMA_HEADER, b"goalstream.Nope"), (codec.VERSION_HEADER, b"1"))
    for _ in range(2):
        with pytest.raises(codec.SchemaError):
            codec.schema_of(unknown)
