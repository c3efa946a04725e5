"""Forgetting a person, in-process on real chDB: the regulator empties every table of the
person's ids and nothing else, and the sinks drop what was in flight at the request (and,
suppressed, everything later) whichever path they store by."""

from __future__ import annotations

import uuid

from schemas import codec, model, topics
from schemas.regulations import Forgotten
from stream_processors.forget import Regulator
from stream_processors.runtime import Item
from stream_processors.sinks import CustomersSink, DeadLettersSink, EventsSink
from tests.integration.test_event_dedup import Msg

T = model.now_ms()


def as_msg(rec: model.Record, offset: int) -> Msg:
    value, headers = codec.encode(rec.schema, rec.value)
    return Msg(rec.topic, 0, offset, value, list(headers), rec.key)


def event(ws: str, who: str, received: int, *, anonymous: str = "", name: str = "opened") -> model.Record:
    return model.event(workspace=ws, customer_id=who, anonymous_id=anonymous, name=name, properties={}, source="segment",
                       timestamp_ms=received, received_at_ms=received)


def forgotten(ws: str, ids: list[str], *, suppress: bool, requested: int = T, state: str = "completed") -> Forgotten:
    f = Forgotten()
    f.update([{"id": "r1", "workspace": ws, "customer_id": ids[0], "ids": ids, "suppress": suppress,
               "requested_ms": requested, "state": state}])
    f.loaded = True
    return f


async def names(warehouse, ws: str) -> list[tuple[str, str]]:
    rows = await warehouse.rows("SELECT person_id, name FROM events WHERE workspace = {ws:String} ORDER BY person_id, name", {"ws": ws})
    return [(r["person_id"], r["name"]) for r in rows]


async def test_the_events_sink_drops_what_was_in_flight_and_keeps_what_came_after(warehouse):
    ws = f"fg-{uuid.uuid4().hex[:8]}"
    f = forgotten(ws, ["gone", "gone-anon"], suppress=False)
    sink = EventsSink(warehouse, dedup_window=100, forgotten=f)
    batch = [
        event(ws, "gone", T - 5000, name="before"),  # accepted before the request, stored after it: dropped
        event(ws, "", T - 5000, anonymous="gone-anon", name="anon-before"),
        event(ws, "gone", T + 5000, name="after"),  # a new event after a plain forget: kept
        event(ws, "other", T - 5000, anonymous="gone-anon", name="others"),  # another customer's, same device: kept
    ]
    await sink.write_raw([(m, codec.schema_of(m.headers)) for m in (as_msg(r, i) for i, r in enumerate(batch))])
    # The decoding path: the same rule.
    await sink.write([Item(as_msg(r, 10), model.EVENT, codec.decode(as_msg(r, 10).value, as_msg(r, 10).headers, logical=False)[1])
                      for r in [event(ws, "gone", T - 1, name="decoded-before")]])
    assert await names(warehouse, ws) == [("gone", "after"), ("other", "others")]


async def test_a_suppressed_person_is_never_stored_by_any_sink(warehouse):
    ws = f"fg-{uuid.uuid4().hex[:8]}"
    f = forgotten(ws, ["sup"], suppress=True)
    events = EventsSink(warehouse, dedup_window=100, forgotten=f)
    late = [event(ws, "sup", T + 60_000, name="later"), event(ws, "kept", T + 60_000, name="kept")]
    await events.write_raw([(m, codec.schema_of(m.headers)) for m in (as_msg(r, i) for i, r in enumerate(late))])
    assert await names(warehouse, ws) == [("kept", "kept")]

    customers = CustomersSink(warehouse, cache_size=100, forgotten=f)
    recs = [
        model.customer_upsert(workspace=ws, customer_id="sup", attributes={"email": "s@x"}, source="traitly", received_at_ms=T + 1),
        model.customer_merge(workspace=ws, customer_id="kept", merged_id="sup", kind="alias", source="segment", received_at_ms=T + 1),
        model.customer_upsert(workspace=ws, customer_id="kept", attributes={"email": "k@x"}, source="traitly", received_at_ms=T + 1),
    ]
    items = [Item(as_msg(r, i), r.schema, codec.decode(as_msg(r, i).value, as_msg(r, i).headers)[1]) for i, r in enumerate(recs)]
    await customers.write(items)
    rows = await warehouse.rows("SELECT customer_id FROM customers WHERE workspace = {ws:String}", {"ws": ws})
    assert [r["customer_id"] for r in rows] == ["kept"]
    merges = await warehouse.rows("SELECT count() AS n FROM customer_merges WHERE workspace = {ws:String}", {"ws": ws})
    assert merges[0]["n"] == 0

    letters = DeadLettersSink(warehouse, forgotten=f)
    bad = [model.dead_letter(reason="bad", stage="events-sink", key=model.partition_key(ws, who), value=b"\x00",
                             headers={}, source_topic=topics.EVENTS) for who in ("sup", "kept")]
    items = [Item(as_msg(r, i), r.schema, codec.decode(as_msg(r, i).value, as_msg(r, i).headers, logical=False)[1])
             for i, r in enumerate(bad)]
    await letters.write(items)
    rows = await warehouse.rows("SELECT key FROM deadletters WHERE key LIKE {p:String}", {"p": f"{ws}:%"})
    assert [r["key"] for r in rows] == [f"{ws}:kept"]


async def test_the_cache_of_a_forgotten_customer_is_dropped(warehouse):
    ws = f"fg-{uuid.uuid4().hex[:8]}"
    f = Forgotten()
    customers = CustomersSink(warehouse, cache_size=100, forgotten=f)
    rec = model.customer_upsert(workspace=ws, customer_id="c", attributes={"email": "old@x"}, source="traitly")
    await customers.write([Item(as_msg(rec, 0), rec.schema, codec.decode(as_msg(rec, 0).value, as_msg(rec, 0).headers)[1])])
    assert (ws, "c") in customers.cache
    f.update([{"id": "r", "workspace": ws, "customer_id": "c", "ids": ["c"], "suppress": False, "requested_ms": model.now_ms(),
               "state": "running"}])
    assert (ws, "c") not in customers.cache  # a later upsert must not bring the old email back


async def test_the_regulator_empties_every_table_of_the_person_and_nothing_else(warehouse):
    ws, other_ws = f"fg-{uuid.uuid4().hex[:8]}", f"fg-{uuid.uuid4().hex[:8]}"
    w = warehouse
    ev = "INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source) "
    for wsn in (ws, other_ws):
        await w.command(ev + "SELECT generateUUIDv4(), {ws:String}, if(number % 5 = 0, 'p', concat('c', toString(number % 7))), "
                        "if(number % 3 = 0, 'p-anon', ''), 'opened', now64(3), now64(3), '{}', 'segment' FROM numbers(500)", {"ws": wsn})
    await w.command(ev + "VALUES (generateUUIDv4(), {ws:String}, '', 'p-anon', 'anon', now64(3), now64(3), '{}', 'segment'), "
                    "(generateUUIDv4(), {ws:String}, 'p-old', '', 'old', now64(3), now64(3), '{}', 'segment')", {"ws": ws})
    await w.command("INSERT INTO customer_merges (workspace, customer_id, merged_id, kind, source, message_id, merged_at) VALUES "
                    "({ws:String}, 'p', 'p-old', 'merge', 'customerio', 'm1', now64(3))", {"ws": ws})
    for who in ("p", "p-old", "c1"):
        await w.command("INSERT INTO customers (workspace, customer_id, created_at, updated_at, attributes, version) "
                        "VALUES ({ws:String}, {c:String}, now64(3), now64(3), '{}', 1)", {"ws": ws, "c": who})
        await w.command("INSERT INTO goal_status (workspace, goal, customer_id, status, entered_at, window_end, updated_at, version) "
                        "VALUES ({ws:String}, 'g', {c:String}, 'active', now64(3), now64(3), now64(3), 1)", {"ws": ws, "c": who})
        await w.command("INSERT INTO propensity_scores (workspace, goal, customer_id, scored_at, likelihood) "
                        "VALUES ({ws:String}, 'g', {c:String}, now64(3), 0.5)", {"ws": ws, "c": who})
        await w.command("INSERT INTO webhook_deliveries (delivery_id, workspace, customer_id, status, version) "
                        "VALUES ({d:String}, {ws:String}, {c:String}, 'delivered', 1)", {"ws": ws, "c": who, "d": f"{ws}-{who}"})
        await w.command("INSERT INTO webhook_attempts (delivery_id, workspace, attempt, attempted_at, outcome) "
                        "VALUES ({d:String}, {ws:String}, 1, now64(3), 'delivered')", {"ws": ws, "d": f"{ws}-{who}"})
        await w.command("INSERT INTO deadletters (id, reason, stage, key, value, failed_at) "
                        "VALUES (generateUUIDv4(), 'bad', 'events-sink', {k:String}, 'x', now64(3))", {"k": f"{ws}:{who}"})

    async def counts(ids: list[str]) -> dict[str, int]:
        p = {"ws": ws, "ids": ids}
        one = "workspace = {ws:String} AND customer_id IN {ids:Array(String)}"
        queries = {
            "events": "SELECT count() AS n FROM events WHERE workspace = {ws:String} AND person_id IN {ids:Array(String)}",
            "customers": f"SELECT count() AS n FROM customers WHERE {one}",
            "customer_merges": "SELECT count() AS n FROM customer_merges WHERE workspace = {ws:String} "
                               "AND (customer_id IN {ids:Array(String)} OR merged_id IN {ids:Array(String)})",
            "goal_status": f"SELECT count() AS n FROM goal_status WHERE {one}",
            "propensity_scores": f"SELECT count() AS n FROM propensity_scores WHERE {one}",
            "webhook_deliveries": f"SELECT count() AS n FROM webhook_deliveries WHERE {one}",
            "webhook_attempts": "SELECT count() AS n FROM webhook_attempts WHERE delivery_id IN "
                                "(SELECT delivery_id FROM webhook_deliveries WHERE " + one + ")",
            "deadletters": "SELECT count() AS n FROM deadletters WHERE key IN arrayMap(i -> concat({ws:String}, ':', i), {ids:Array(String)})",
        }
        return {t: int((await w.rows(q, p))[0]["n"]) for t, q in queries.items()}

    async def everyone_else() -> tuple:
        rows = await w.rows("SELECT workspace, person_id, count() AS n FROM events WHERE workspace IN {w:Array(String)} "
                            "AND person_id NOT IN ('p', 'p-old', 'p-anon') GROUP BY 1, 2 ORDER BY 1, 2", {"w": [ws, other_ws]})
        other = await w.rows("SELECT count() AS n FROM events WHERE workspace = {ws:String}", {"ws": other_ws})
        return [tuple(r.values()) for r in rows], other[0]["n"], await counts(["c1"])

    before_p = await counts(["p", "p-old", "p-anon"])
    assert all(n > 0 for t, n in before_p.items() if t != "webhook_attempts")  # attempts count by delivery, below
    before_others = await everyone_else()
    daily = "SELECT sum(events) AS n FROM events_daily WHERE workspace = {ws:String}"
    reg = Regulator(w, Forgotten(), settle_s=0.0)
    made = await reg.request(ws, "p-old", suppress=False, requested_by="test")  # an id merged into p: p is forgotten
    done = await reg.wait(made["id"], 60)
    assert done["state"] == "completed", done
    assert sorted(done["ids"]) == ["p", "p-anon", "p-old"]
    assert await counts(["p", "p-old", "p-anon"]) == {t: 0 for t in before_p}
    assert await everyone_else() == before_others
    assert done["removed"]["events"] == before_p["events"]
    total = await w.rows("SELECT count() AS n FROM events WHERE workspace = {ws:String}", {"ws": ws})
    assert (await w.rows(daily, {"ws": ws}))[0]["n"] == total[0]["n"]  # the rollup rebuilt without them
    listed = await reg.list(ws)
    assert [r["id"] for r in listed] == [made["id"]] and listed[0]["requested_by"] == "test"


async def test_a_plain_forget_sweeps_what_came_before_the_request_only(warehouse):
    ws = f"fg-{uuid.uuid4().hex[:8]}"
    ev = ("INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source) "
          "VALUES (generateUUIDv4(), {ws:String}, 'p', '', {n:String}, now64(3), now64(3) + toIntervalSecond({d:Int32}), '{}', 't')")
    await warehouse.command(ev, {"ws": ws, "n": "before", "d": -60})
    await warehouse.command(ev, {"ws": ws, "n": "after", "d": 3600})  # sent again after the request: theirs anew
    reg = Regulator(warehouse, Forgotten(), settle_s=0.0)
    done = await reg.wait((await reg.request(ws, "p", suppress=False, requested_by="test"))["id"], 60)
    assert done["state"] == "completed" and done["removed"]["events"] == 1
    assert await names(warehouse, ws) == [("p", "after")]
    daily = await warehouse.rows("SELECT name, sum(events) AS n FROM events_daily WHERE workspace = {ws:String} GROUP BY name",
                                 {"ws": ws})
    assert [(r["name"], r["n"]) for r in daily] == [("after", 1)]


async def test_a_suppressed_person_stored_by_a_part_not_yet_told_is_swept_too(warehouse):
    import asyncio

    ws = f"fg-{uuid.uuid4().hex[:8]}"
    ev = ("INSERT INTO events (message_id, workspace, customer_id, anonymous_id, name, timestamp, received_at, properties, source) "
          "VALUES (generateUUIDv4(), {ws:String}, 's', '', 'late', now64(3), now64(3), '{}', 't')")
    reg = Regulator(warehouse, Forgotten(), settle_s=1.0)
    made = await reg.request(ws, "s", suppress=True, requested_by="test")
    await asyncio.sleep(0.3)
    await warehouse.command(ev, {"ws": ws})  # received after the request, by a part a refresh behind
    done = await reg.wait(made["id"], 60)
    assert done["state"] == "completed" and done["removed"]["events"] == 1
    assert await names(warehouse, ws) == []
