from schemas import model
from stream_processors import customers as cust


def upsert(attrs, created=None, received=1_000, cid="123"):
    return model.customer_upsert(
        workspace="acme", customer_id=cid, attributes=attrs, source="traitly", created_at_ms=created, received_at_ms=received
    ).value


def delete(received, cid="123"):
    return model.customer_delete(workspace="acme", customer_id=cid, source="traitly", received_at_ms=received).value


def test_second_upsert_merges_top_level_and_keeps_custom_attributes_as_given():
    s1 = cust.apply(None, model.CUSTOMER_UPSERT, upsert({"name": "John", "plan": "Starter", "location": "SF", "custom_attributes": {"role": "manager"}}, created=500_000))
    s2 = cust.apply(s1, model.CUSTOMER_UPSERT, upsert({"plan": "Pro", "custom_attributes": {"account_type": "admin"}}, received=2_000))
    assert s2.attributes == {"name": "John", "plan": "Pro", "location": "SF", "custom_attributes": {"account_type": "admin"}}
    assert s2.created_at_ms == 500_000  # kept: the update gave no created_at
    assert s2.version > s1.version


def test_new_customer_without_created_at_signs_up_when_received():
    s = cust.apply(None, model.CUSTOMER_UPSERT, upsert({"name": "A"}, received=42_000))
    assert s.created_at_ms == 42_000


def test_delete_then_recreate_starts_fresh_with_higher_version():
    s1 = cust.apply(None, model.CUSTOMER_UPSERT, upsert({"name": "A", "plan": "x"}, received=5_000))
    s2 = cust.apply(s1, model.CUSTOMER_DELETE, delete(6_000))
    assert s2.deleted and s2.row()[-1] == 1
    s3 = cust.apply(s2, model.CUSTOMER_UPSERT, upsert({"name": "B"}, received=7_000))
    assert not s3.deleted and s3.attributes == {"name": "B"}
    assert s1.version < s2.version < s3.version


def test_versions_stay_monotonic_when_receipt_time_goes_backwards():
    s1 = cust.apply(None, model.CUSTOMER_UPSERT, upsert({"name": "A"}, received=9_000))
    s2 = cust.apply(s1, model.CUSTOMER_UPSERT, upsert({"name": "B"}, received=1_000))
    assert s2.version == s1.version + 1


def test_row_round_trips_through_from_row():
    s = cust.apply(None, model.CUSTOMER_UPSERT, upsert({"name": "A", "email": "a@b", "plan": "p", "n": 1}, created=3_000))
    row = dict(zip(cust.COLUMNS, s.row()))
    assert row["name"] == "A" and row["plan"] == "p"
    back = cust.CustomerState.from_row(row)
    assert back.attributes == s.attributes and back.version == s.version and back.created_at_ms == 3_000


def arrays(field, op, items, received=3_000, cid="123"):
    return model.customer_arrays(
        workspace="acme", customer_id=cid, field=field, op=op, items=items, source="retainly", received_at_ms=received
    ).value


def merge_rec(primary, merged, kind="merge", received=9_000):
    return model.customer_merge(
        workspace="acme", customer_id=primary, merged_id=merged, kind=kind, source="customerio", received_at_ms=received
    ).value


def test_array_upsert_replaces_by_id_appends_without_and_creates_a_missing_customer():
    s1 = cust.apply(None, model.CUSTOMER_ARRAYS, arrays("purchases", "upsert", [{"id": 1, "amount": 123}, {"id": 2, "amount": 111}]))
    assert s1.attributes == {"purchases": [{"id": 1, "amount": 123}, {"id": 2, "amount": 111}]}
    assert s1.created_at_ms == 3_000
    s2 = cust.apply(s1, model.CUSTOMER_ARRAYS, arrays("purchases", "upsert", [{"id": "2", "amount": 5}, {"amount": 7}, {"id": 3}], received=4_000))
    # "2" and 2 name the same item (clients send both); the one without an id is appended.
    assert s2.attributes["purchases"] == [{"id": 1, "amount": 123}, {"id": "2", "amount": 5}, {"amount": 7}, {"id": 3}]
    assert s2.version > s1.version


def test_array_delete_by_ids_and_unknown_customer_or_field_is_a_no_op():
    s1 = cust.apply(None, model.CUSTOMER_ARRAYS, arrays("purchases", "upsert", [{"id": 1}, {"id": 2}, {"note": "x"}]))
    s2 = cust.apply(s1, model.CUSTOMER_ARRAYS, arrays("purchases", "delete", [2, 9], received=4_000))
    assert s2.attributes["purchases"] == [{"id": 1}, {"note": "x"}]
    assert cust.apply(None, model.CUSTOMER_ARRAYS, arrays("purchases", "delete", [1])) is None
    assert cust.apply(s2, model.CUSTOMER_ARRAYS, arrays("bookings", "delete", [1])) is None


def test_merge_fills_gaps_from_the_merged_customer_and_deletes_it():
    a = cust.apply(None, model.CUSTOMER_UPSERT, upsert({"name": "A", "plan": "pro"}, created=2_000, cid="a"))
    b = cust.apply(None, model.CUSTOMER_UPSERT, upsert({"name": "B", "email": "b@x.io"}, created=1_000, cid="b"))
    primary, merged = cust.merge(a, b, merge_rec("a", "b"))
    assert primary.customer_id == "a" and not primary.deleted
    assert primary.attributes == {"name": "A", "plan": "pro", "email": "b@x.io"}  # the primary's own values win
    assert primary.created_at_ms == 1_000  # the earlier sign-up
    assert merged is not None and merged.customer_id == "b" and merged.deleted and merged.version > b.version


def test_alias_links_without_deleting_and_creates_the_primary_if_needed():
    anon = cust.apply(None, model.CUSTOMER_UPSERT, upsert({"plan": "free"}, cid="anon-1"))
    primary, merged = cust.merge(None, anon, merge_rec("user-1", "anon-1", kind="alias"))
    assert primary.customer_id == "user-1" and primary.attributes == {"plan": "free"}
    assert merged is None


# -- a record the spool sends again after a crash (goalstream-resent) -------------------


def append(items, received, cid="123"):
    return model.customer_arrays(
        workspace="acme", customer_id=cid, field="devices", op="upsert", items=items, source="retainly", received_at_ms=received
    ).value


def test_a_resent_record_is_known_as_applied_when_it_is_the_last_or_older_than_the_state():
    first, second = append([{"name": "phone"}], 1_000), append([{"name": "tablet"}], 2_000)
    state = cust.apply(cust.apply(None, model.CUSTOMER_ARRAYS, first), model.CUSTOMER_ARRAYS, second)
    assert cust.applied(state, second) and cust.applied(state, first)
    later = append([{"name": "watch"}], 3_000)
    assert not cust.applied(state, later) and not cust.applied(None, first)


class _Msg:
    def __init__(self, offset: int, resent: bool):
        self.topic, self.partition, self.offset, self.key, self.value = "goalstream.customers", 0, offset, b"", b""
        self.headers = [("goalstream-resent", b"1")] if resent else []


class _Warehouse:
    """The customers table as the sink reads and writes it: the latest row per customer."""

    def __init__(self) -> None:
        self.latest: dict[tuple[str, str], dict] = {}

    async def insert(self, table, rows, columns, token=None):
        if table == "customers":
            for row in rows:
                r = dict(zip(columns, row))
                self.latest[(r["workspace"], r["customer_id"])] = r

    async def rows(self, sql, params=None):
        return [r for (ws, cid), r in self.latest.items() if ws == params["ws"] and cid in params["ids"]]


async def test_the_customers_sink_appends_a_resent_item_without_id_once():
    from stream_processors.runtime import Item
    from stream_processors.sinks import CustomersSink

    async def no_scoring(*args):
        pass

    warehouse = _Warehouse()
    records = [append([{"name": "phone"}], 1_000), append([{"name": "tablet"}], 2_000)]
    sink = CustomersSink(warehouse, cache_size=10)
    await sink.write([Item(_Msg(i, False), model.CUSTOMER_ARRAYS, r) for i, r in enumerate(records)])
    # A crash; a new worker (empty cache); the spool sends both again, then a new one arrives.
    sink = CustomersSink(warehouse, cache_size=10)
    again = [Item(_Msg(10 + i, True), model.CUSTOMER_ARRAYS, r) for i, r in enumerate(records)]
    await sink.write(again + [Item(_Msg(12, False), model.CUSTOMER_ARRAYS, append([{"name": "watch"}], 3_000))])
    devices = cust.CustomerState.from_row(warehouse.latest[("acme", "123")]).attributes["devices"]
    assert devices == [{"name": "phone"}, {"name": "tablet"}, {"name": "watch"}]
