import pytest

from schemas import codec, model, topics


def test_event_round_trip_with_writer_schema_in_headers():
    rec = model.event(workspace="acme", customer_id="15", name="Logged in", properties={"n": 1, "ok": True, "x": [1.5]}, source="traitly")
    value, headers = codec.encode(rec.schema, rec.value)
    assert dict(headers) == {"goalstream-schema": b"goalstream.Event", "goalstream-schema-version": b"1"}
    name, decoded = codec.decode(value, headers)
    assert name == "goalstream.Event"
    assert decoded["message_id"] == rec.message_id
    assert decoded["properties"] == '{"n":1,"ok":true,"x":[1.5]}'
    assert int(decoded["timestamp"].timestamp() * 1000) == rec.value["timestamp"]


def test_partition_key_is_workspace_colon_customer():
    assert model.partition_key("acme", "15") == b"acme:15"
    assert model.customer_upsert(workspace="acme", customer_id="15", attributes={}, source="t").key == b"acme:15"
    assert model.event(workspace="acme", customer_id="15", name="x", properties={}, source="t").topic == topics.EVENTS


def test_unknown_schema_and_garbage_are_schema_errors():
    with pytest.raises(codec.SchemaError):
        codec.decode(b"\x00", [("goalstream-schema", b"goalstream.Nope"), ("goalstream-schema-version", b"1")])
    with pytest.raises(codec.SchemaError):
        codec.decode(b"\x00", [])
    with pytest.raises(codec.SchemaError):
        codec.decode(b"\xff\xff\xff", [("goalstream-schema", b"goalstream.Event"), ("goalstream-schema-version", b"1")])


def test_schema_files_are_versioned_and_named():
    assert ("goalstream.Event", 1) in codec.SCHEMAS
    for (name, version), schema in codec.SCHEMAS.items():
        assert (codec.AVRO_DIR / f"{name}.v{version}.avsc").is_file()
