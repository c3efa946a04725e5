"""The Segment dialect's pure decoding: times (ISO parsing, clock-skew arithmetic), each
call type's record, batch rules and limits, and the error body."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from ingest_gateway import errors
from ingest_gateway.dialects.segment import (
    MAX_BATCH_MESSAGES,
    MAX_MESSAGE_BYTES,
    Segment,
    decode_batch,
    decode_message,
    event_time,
    iso_ms,
)
from schemas import model

WS = "acme"


def ms(text: str) -> int:
    return (datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


RECEIVED = ms("2024-05-01T12:00:00+00:00")


def code_of(exc: errors.GatewayError) -> str:
    return orjson.loads(Segment(None).render_error(exc, None).body)["code"]


# -- ISO 8601 ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2012-12-02T00:30:08.276Z", "2012-12-02T00:30:08.276+00:00"),
        ("2012-12-02T00:30:08Z", "2012-12-02T00:30:08+00:00"),
        ("2012-12-02T01:30:08.276+01:00", "2012-12-02T00:30:08.276+00:00"),
        ("2012-12-01T19:30:08.276-0500", "2012-12-02T00:30:08.276+00:00"),
        ("2012-12-02T02:30:08.276+02", "2012-12-02T00:30:08.276+00:00"),
        ("2012-12-02T00:30:08.276123456Z", "2012-12-02T00:30:08.276+00:00"),  # beyond µs ignored
        ("2012-12-02 00:30:08.276", "2012-12-02T00:30:08.276+00:00"),  # no zone: UTC
        ("2012-12-02", "2012-12-02T00:00:00+00:00"),
        ("2015-2-02T00:30:08.276Z", "2015-02-02T00:30:08.276+00:00"),  # as Segment's batch example prints it
        ("2024-05-01T12:00:00.123456+00:00", "2024-05-01T12:00:00.123+00:00"),  # Python isoformat()
    ],
)
def test_iso_ms_parses(text, expected):
    assert iso_ms(text, "timestamp") == ms(expected)


@pytest.mark.parametrize("value", ["yesterday", "2012-13-02T00:00:00Z", "2012-02-30", "12:00", 1354408208, True, "1969-12-31T23:59:59Z", "2100-01-01T00:00:00Z"])
def test_iso_ms_refuses(value):
    with pytest.raises(errors.InvalidRequest) as e:
        iso_ms(value, "timestamp")
    assert "'timestamp'" in e.value.message and code_of(e.value) == "invalid_timestamp"


def test_iso_ms_absent():
    assert iso_ms(None, "timestamp") is None and iso_ms("", "timestamp") is None


# -- event time: receivedAt - (sentAt - timestamp) ------------------------------------


def test_skew_corrected_when_client_clock_is_fast():
    # The client's clock is 1 h ahead; it tracked 5 s before sending.
    msg = {"timestamp": "2024-05-01T13:00:00.000Z", "sentAt": "2024-05-01T13:00:05.000Z"}
    assert event_time(msg, RECEIVED) == RECEIVED - 5000


def test_skew_corrected_when_client_clock_is_slow():
    msg = {"timestamp": "2024-05-01T10:59:00.250Z", "sentAt": "2024-05-01T11:00:00.000Z"}
    assert event_time(msg, RECEIVED) == RECEIVED - 59_750


def test_original_timestamp_used_when_timestamp_absent():
    msg = {"originalTimestamp": "2024-05-01T09:00:00Z", "sentAt": "2024-05-01T09:00:02Z"}
    assert event_time(msg, RECEIVED) == RECEIVED - 2000


def test_timestamp_wins_over_original_timestamp():
    msg = {"timestamp": "2024-05-01T09:00:00Z", "originalTimestamp": "2024-05-01T08:00:00Z", "sentAt": "2024-05-01T09:00:01Z"}
    assert event_time(msg, RECEIVED) == RECEIVED - 1000


def test_batch_sent_at_applies_and_message_sent_at_wins():
    batch_sent = ms("2024-05-01T09:00:10+00:00")
    assert event_time({"timestamp": "2024-05-01T09:00:00Z"}, RECEIVED, batch_sent) == RECEIVED - 10_000
    own = {"timestamp": "2024-05-01T09:00:00Z", "sentAt": "2024-05-01T09:00:03Z"}
    assert event_time(own, RECEIVED, batch_sent) == RECEIVED - 3000


def test_historical_timestamp_without_sent_at_is_taken_as_given():
    assert event_time({"timestamp": "2012-12-02T00:30:08.276Z"}, RECEIVED) == ms("2012-12-02T00:30:08.276+00:00")


def test_no_timestamp_means_received_time():
    assert event_time({"sentAt": "2024-05-01T09:00:03Z"}, RECEIVED) == RECEIVED
    assert event_time({}, RECEIVED) == RECEIVED


def test_correction_outside_range_is_refused():
    with pytest.raises(errors.InvalidRequest) as e:
        event_time({"timestamp": "1971-01-01T00:00:00Z", "sentAt": "2099-01-01T00:00:00Z"}, RECEIVED)
    assert e.value.param == "sentAt"


# -- call types --------------------------------------------------------------------


def test_identify_becomes_customer_upsert_with_typed_traits():
    rec = decode_message(
        WS,
        {
            "userId": 42,
            "anonymousId": "anon-1",
            "messageId": "m-1",
            "traits": {"email": "p@example.com", "age": 26, "vip": True, "score": 1.5, "tags": ["a"], "createdAt": "2020-01-02T03:04:05Z"},
            "context": {"ip": "24.5.68.47"},
        },
        RECEIVED,
        kind="identify",
    )
    assert rec.schema == model.CUSTOMER_UPSERT and rec.key == b"acme:42"
    v = rec.value
    assert v["customer_id"] == "42" and v["message_id"] == "m-1" and v["source"] == "segment"
    assert v["created_at"] == ms("2020-01-02T03:04:05+00:00") and v["received_at"] == RECEIVED
    assert orjson.loads(v["attributes"]) == {
        "email": "p@example.com", "age": 26, "vip": True, "score": 1.5, "tags": ["a"], "createdAt": "2020-01-02T03:04:05Z"
    }


def test_identify_anonymous_only_and_rudder_context_traits():
    rec = decode_message(
        WS, {"anonymousId": "anon-9", "context": {"traits": {"plan": "pro", "email": "a@b.c"}}, "traits": {"plan": "team"}},
        RECEIVED, kind="identify",
    )
    assert rec.value["customer_id"] == "anon-9"
    assert orjson.loads(rec.value["attributes"]) == {"plan": "team", "email": "a@b.c"}
    assert rec.value["created_at"] is None


def test_identify_created_at_in_unix_seconds():
    rec = decode_message(WS, {"userId": "u", "traits": {"createdAt": 1_700_000_000}}, RECEIVED, kind="identify")
    assert rec.value["created_at"] == 1_700_000_000_000


def test_identify_bad_created_at_names_the_trait():
    with pytest.raises(errors.InvalidRequest) as e:
        decode_message(WS, {"userId": "u", "traits": {"createdAt": "last tuesday"}}, RECEIVED, kind="identify")
    assert "traits.createdAt" in e.value.message


def test_track_becomes_event_with_context_and_extras():
    rec = decode_message(
        WS,
        {
            "userId": "019mr8mf4r", "event": "Item Purchased", "messageId": "m-2",
            "properties": {"name": "Mat", "revenue": 14.99},
            "context": {"ip": "24.5.68.47"}, "integrations": {"All": False}, "channel": "server",
            "email": "test@example.org", "timestamp": "2012-12-02T00:30:12.984Z",
        },
        RECEIVED, kind="track",
    )
    v = rec.value
    assert rec.schema == model.EVENT and rec.key == b"acme:019mr8mf4r"
    assert (v["name"], v["customer_id"], v["anonymous_id"], v["message_id"]) == ("Item Purchased", "019mr8mf4r", "", "m-2")
    assert v["timestamp"] == ms("2012-12-02T00:30:12.984+00:00")
    assert orjson.loads(v["properties"]) == {"name": "Mat", "revenue": 14.99, "email": "test@example.org", "context": {"ip": "24.5.68.47"}}


def test_track_anonymous_keys_on_anonymous_id_and_context_does_not_overwrite_a_property():
    rec = decode_message(
        WS, {"anonymousId": "a-1", "event": "E", "properties": {"context": "mine"}, "context": {"ip": "1.2.3.4"}}, RECEIVED, kind="track"
    )
    assert rec.key == b"acme:a-1" and rec.value["customer_id"] == "" and rec.value["anonymous_id"] == "a-1"
    assert orjson.loads(rec.value["properties"]) == {"context": "mine", "segment_context": {"ip": "1.2.3.4"}}


def test_message_id_generated_when_absent():
    a = decode_message(WS, {"userId": "u", "event": "E"}, RECEIVED, kind="track")
    b = decode_message(WS, {"userId": "u", "event": "E"}, RECEIVED, kind="track")
    assert a.message_id and a.message_id != b.message_id


@pytest.mark.parametrize("kind", ["page", "screen"])
def test_page_and_screen(kind):
    rec = decode_message(
        WS, {"userId": "u", "name": "Pricing", "category": "Docs", "properties": {"path": "/pricing"}}, RECEIVED, kind=kind
    )
    assert rec.value["name"] == kind
    assert orjson.loads(rec.value["properties"]) == {"path": "/pricing", "name": "Pricing", "category": "Docs"}


def test_group():
    rec = decode_message(
        WS, {"userId": "u", "groupId": "8e9df332ac", "traits": {"name": "Initech", "employees": 420}}, RECEIVED, kind="group"
    )
    assert rec.value["name"] == "group"
    assert orjson.loads(rec.value["properties"]) == {"groupId": "8e9df332ac", "traits": {"name": "Initech", "employees": 420}}


def test_alias_becomes_merge():
    rec = decode_message(WS, {"previousId": "anon-1", "userId": "u-1", "messageId": "m-3"}, RECEIVED, kind="alias")
    assert rec.schema == model.CUSTOMER_MERGE and rec.key == b"acme:u-1"
    assert {k: rec.value[k] for k in ("customer_id", "merged_id", "kind", "message_id")} == {
        "customer_id": "u-1", "merged_id": "anon-1", "kind": "alias", "message_id": "m-3"
    }


@pytest.mark.parametrize(
    "kind, message, code, field",
    [
        ("track", {"event": "E"}, "no_user_anon_id", "userId"),
        ("identify", {"traits": {}}, "no_user_anon_id", "userId"),
        ("track", {"userId": "u"}, "event_not_defined", "event"),
        ("track", {"userId": "u", "event": 5}, "event_not_string", "event"),
        ("track", {"userId": "u", "event": "E", "properties": []}, "properties_not_object", "properties"),
        ("identify", {"userId": "u", "traits": "x"}, "traits_not_object", "traits"),
        ("page", {"userId": "u", "name": ""}, "name_not_string", "name"),
        ("screen", {"userId": "u", "category": 3}, "category_not_string", "category"),
        ("group", {"userId": "u"}, "group_id_required", "groupId"),
        ("alias", {"userId": "u"}, "previous_id_required", "previousId"),
        ("alias", {"previousId": "p"}, "user_id_required", "userId"),
        ("track", {"userId": "u", "event": "E", "timestamp": "soon"}, "invalid_timestamp", "timestamp"),
        ("track", {"userId": "u", "event": "E", "type": "identify"}, "invalid_type", "type"),
        ("track", {"userId": {"id": 1}, "event": "E"}, "invalid_request", "userId"),
    ],
)
def test_invalid_messages_name_the_field(kind, message, code, field):
    with pytest.raises(errors.InvalidRequest) as e:
        decode_message(WS, message, RECEIVED, kind=kind)
    assert f"'{field}'" in e.value.message and code_of(e.value) == code and e.value.status == 400


# -- batches -----------------------------------------------------------------------


def test_batch_decodes_each_type_with_batch_context_and_sent_at():
    body = {
        "batch": [
            {"type": "identify", "userId": "u", "traits": {"name": "Jake"}},
            {"type": "track", "userId": "u", "event": "Song Played", "timestamp": "2024-05-01T09:00:00Z", "context": {"ip": "9.9.9.9"}},
            {"type": "alias", "userId": "u", "previousId": "a"},
        ],
        "context": {"device": {"type": "phone"}, "ip": "1.1.1.1"},
        "sentAt": "2024-05-01T09:00:04Z",
    }
    recs = decode_batch(WS, body, RECEIVED)
    assert [r.schema for r in recs] == [model.CUSTOMER_UPSERT, model.EVENT, model.CUSTOMER_MERGE]
    assert recs[1].value["timestamp"] == RECEIVED - 4000
    assert orjson.loads(recs[1].value["properties"]) == {"context": {"device": {"type": "phone"}, "ip": "9.9.9.9"}}


@pytest.mark.parametrize(
    "body, text, code",
    [
        ({"batch": []}, "'batch' is empty", "empty_batch"),
        ({}, "'batch' must be an array", "invalid_request"),
        ({"batch": {"type": "track"}}, "'batch' must be an array", "invalid_request"),
        ({"batch": [{"type": "track", "userId": "u", "event": "E"}, 3]}, "batch[1]: must be a JSON object", "invalid_request"),
        ({"batch": [{"type": "track", "userId": "u", "event": "E"}, {"userId": "u"}]}, "batch[1]: 'type' is required", "type_required"),
        ({"batch": [{"type": "fly", "userId": "u"}]}, "batch[0]: 'type' must be one of", "invalid_type"),
        ({"batch": [{"type": "track", "userId": "u", "event": "E"}] * 2 + [{"type": "track", "event": "E"}]}, "batch[2]: 'userId' or 'anonymousId'", "no_user_anon_id"),
        ({"batch": [{"type": "track", "userId": "u", "event": "E"}], "sentAt": "x"}, "'sentAt'", "invalid_timestamp"),
    ],
)
def test_batch_errors_name_the_index(body, text, code):
    with pytest.raises(errors.InvalidRequest) as e:
        decode_batch(WS, body, RECEIVED)
    assert text in e.value.message and code_of(e.value) == code


def _message_of_size(size: int) -> dict:
    msg = {"type": "track", "userId": "u", "event": "E", "properties": {"pad": ""}}
    msg["properties"]["pad"] = "x" * (size - len(orjson.dumps(msg)))
    assert len(orjson.dumps(msg)) == size
    return msg


def test_message_size_limit_is_32_kb():
    assert len(decode_batch(WS, {"batch": [_message_of_size(MAX_MESSAGE_BYTES)]}, RECEIVED)) == 1
    with pytest.raises(errors.LimitExceeded) as e:
        decode_batch(WS, {"batch": [{"type": "track", "userId": "u", "event": "E"}, _message_of_size(MAX_MESSAGE_BYTES + 1)]}, RECEIVED)
    assert e.value.status == 400 and e.value.message.startswith("batch[1]: Exceed payload limit")
    assert code_of(e.value) == "payload_too_large"


def test_message_count_limit():
    small = {"type": "track", "userId": "u", "event": "E"}
    assert len(decode_batch(WS, {"batch": [small] * MAX_BATCH_MESSAGES}, RECEIVED)) == MAX_BATCH_MESSAGES
    with pytest.raises(errors.LimitExceeded) as e:
        decode_batch(WS, {"batch": [small] * (MAX_BATCH_MESSAGES + 1)}, RECEIVED)
    assert str(MAX_BATCH_MESSAGES) in e.value.message


def test_error_body_shape_and_retry_after():
    resp = Segment(None).render_error(errors.Unavailable("retry shortly", retry_after=5), None)
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert orjson.loads(resp.body) == {"success": False, "code": "unavailable", "message": "retry shortly"}
    resp = Segment(None).render_error(errors.Unauthenticated("the write key is not valid"), None)
    assert resp.status == 401 and orjson.loads(resp.body)["code"] == "invalid_write_key"
