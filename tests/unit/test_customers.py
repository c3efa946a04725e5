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
