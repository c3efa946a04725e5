"""trigger.ly decoding without a server: the data parameter, dates, users and events."""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import orjson
import pytest

from ingest_gateway import errors
from ingest_gateway.dialects import triggerly as tg
from schemas import model

SEED_USER = '{"id": "user13@gmail.com", "email": "user13@gmail.com", "name": "Jeff Dean", "age": 31, "gender": "male", "signup_date": "2012-12-24"}'
SEED_USER_B64 = (
    "eyJpZCI6ICJ1c2VyMTNAZ21haWwuY29tIiwgImVtYWlsIjogInVzZXIxM0BnbWFpbC5jb20iLCAibmFtZSI6ICJKZWZmIERlYW4iLCAiYWdlIjog"
    "MzEsICJnZW5kZXIiOiAibWFsZSIsICJzaWdudXBfZGF0ZSI6ICIyMDEyLTEyLTI0In0="
)


def ms(*args, tz=timezone.utc) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp() * 1000)


# -- data ------------------------------------------------------------------------------


def test_seed_data_decodes():
    assert tg.decode_data([SEED_USER_B64]) == orjson.loads(SEED_USER)


# Chosen so that its standard encoding has both '+' and '/' (and padding).
TRICKY = {"k": "\u00fb\u00ff>>>???", "n": 10}
TRICKY_RAW = orjson.dumps(TRICKY)


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(TRICKY_RAW).decode(),
        base64.b64encode(TRICKY_RAW).decode().rstrip("="),
        base64.urlsafe_b64encode(TRICKY_RAW).decode(),
        base64.urlsafe_b64encode(TRICKY_RAW).decode().rstrip("="),
        base64.b64encode(TRICKY_RAW).decode().replace("+", " "),  # '+' sent unescaped, query-decoded to ' '
    ],
    ids=["standard", "standard-unpadded", "urlsafe", "urlsafe-unpadded", "plus-as-space"],
)
def test_data_alphabets_and_padding(encoded):
    standard = base64.b64encode(TRICKY_RAW).decode()
    assert "+" in standard and "/" in standard and standard.endswith("=")
    assert tg.decode_data([encoded]) == TRICKY


def test_line_broken_data_decodes():
    # Ruby's Base64.encode64, which the seed uses, breaks lines every 60 characters.
    obj = {"id": "x" * 200}
    assert tg.decode_data([base64.encodebytes(orjson.dumps(obj)).decode()]) == obj


@pytest.mark.parametrize(
    "values, message",
    [
        ([], "'data' is required"),
        (["   "], "'data' is required"),
        (["a", "b"], "more than once"),
        (["e30*"], "not valid base64"),
        (["e30=e30"], "not valid base64"),
        (["eyJpZ"], "not valid base64"),  # 5 characters: no base64 has that length
        ([base64.b64encode(b"{nope").decode()], "valid UTF-8 JSON"),
        ([base64.b64encode(b"\xff\xfe{}").decode()], "valid UTF-8 JSON"),
        ([base64.b64encode(b"[1, 2]").decode()], "JSON object"),
        ([base64.b64encode(b'"id"').decode()], "JSON object"),
    ],
)
def test_bad_data(values, message):
    with pytest.raises(errors.InvalidRequest) as e:
        tg.decode_data(values)
    assert message in e.value.message
    assert e.value.status == 400 and e.value.param == "data"


def test_data_size_limit():
    at_limit = b'{"k": "' + b"x" * (tg.MAX_DATA_BYTES - 10) + b'"}'
    assert len(at_limit) <= tg.MAX_DATA_BYTES
    assert tg.decode_data([base64.b64encode(at_limit).decode()])["k"].startswith("x")
    over = b'{"k": "' + b"x" * tg.MAX_DATA_BYTES + b'"}'
    with pytest.raises(errors.LimitExceeded):
        tg.decode_data([base64.b64encode(over).decode()])


# -- dates -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("Wed, 04 Jul 2001 12:08:56 -0700", ms(2001, 7, 4, 19, 8, 56)),
        ("2001-07-04T12:08:56.235-0700", ms(2001, 7, 4, 19, 8, 56) + 235),
        ("2001-07-04", ms(2001, 7, 4)),
        ("2011/07/04", ms(2011, 7, 4)),
        # lenient ISO variants
        ("2001-07-04T12:08:56Z", ms(2001, 7, 4, 12, 8, 56)),
        ("2001-07-04T12:08:56.235+07:00", ms(2001, 7, 4, 5, 8, 56) + 235),
        ("2001-07-04T12:08:56", ms(2001, 7, 4, 12, 8, 56)),
        ("2001-07-04 12:08:56.5", ms(2001, 7, 4, 12, 8, 56) + 500),
        ("Wed, 04 Jul 2001 12:08:56 GMT", ms(2001, 7, 4, 12, 8, 56)),
        ("4 Jul 2001 12:08:56 -0700", ms(2001, 7, 4, 19, 8, 56)),  # RFC 2822 allows no weekday
        ("Wed, 04 Jul 2001 12:08:56 -0000", ms(2001, 7, 4, 12, 8, 56)),
        (" 2011/7/4 ", ms(2011, 7, 4)),
    ],
)
def test_dates(value, expected):
    assert tg.parse_date(value) == expected


@pytest.mark.parametrize("value", [None, ""])
def test_absent_date(value):
    assert tg.parse_date(value) is None


@pytest.mark.parametrize(
    "value",
    ["yesterday", "2001-13-01", "2001/02/30", "04/07/2001", "Wed, 04 Foo 2001 12:08:56 -0700", "1969-12-31", "2100-01-01", 994273736, True, {"d": 1}],
)
def test_bad_dates(value):
    with pytest.raises(errors.InvalidRequest) as e:
        tg.parse_date(value)
    assert e.value.param == "date" and e.value.status == 400


# -- records ---------------------------------------------------------------------------


def test_user_record_keeps_types():
    rec = tg.user_record("acme", orjson.loads(SEED_USER), 1_000)
    assert rec.schema == model.CUSTOMER_UPSERT and rec.key == b"acme:user13@gmail.com"
    v = rec.value
    assert v["customer_id"] == "user13@gmail.com" and v["source"] == "triggerly" and v["received_at"] == 1_000
    assert orjson.loads(v["attributes"]) == {
        "email": "user13@gmail.com", "name": "Jeff Dean", "age": 31, "gender": "male", "signup_date": "2012-12-24",
    }


def test_user_numeric_id():
    assert tg.user_record("acme", {"id": 42, "vip": True}, 1).value["customer_id"] == "42"


@pytest.mark.parametrize("obj", [{}, {"id": ""}, {"id": None}, {"id": True}, {"id": ["a"]}, {"id": "x" * 256}])
def test_user_bad_id(obj):
    with pytest.raises(errors.InvalidRequest) as e:
        tg.user_record("acme", obj, 1)
    assert e.value.param == "id"


def test_event_record():
    rec = tg.event_record("acme", {"type": "purchase", "user_id": "user13@gmail.com", "value": 142.12}, 5_000)
    v = rec.value
    assert rec.schema == model.EVENT and rec.key == b"acme:user13@gmail.com"
    assert (v["name"], v["customer_id"], v["anonymous_id"], v["timestamp"]) == ("purchase", "user13@gmail.com", "", 5_000)
    assert orjson.loads(v["properties"]) == {"value": 142.12}


def test_anonymous_event_with_date():
    rec = tg.event_record("acme", {"type": "view", "date": "2011/07/04", "paid": False, "n": 3, "when": "2001-07-04"}, 5_000)
    v = rec.value
    assert v["customer_id"] == "" and rec.key == b"acme:"
    assert v["timestamp"] == ms(2011, 7, 4) and v["received_at"] == 5_000
    assert orjson.loads(v["properties"]) == {"paid": False, "n": 3, "when": "2001-07-04"}


@pytest.mark.parametrize(
    "obj, param",
    [({}, "type"), ({"type": ""}, "type"), ({"type": 3}, "type"), ({"type": "x", "user_id": 1.5}, "user_id"), ({"type": "x", "date": "soon"}, "date")],
)
def test_bad_events(obj, param):
    with pytest.raises(errors.InvalidRequest) as e:
        tg.event_record("acme", obj, 1)
    assert e.value.param == param
