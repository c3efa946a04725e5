"""Pure decoding of the Customer.io dialect: the form decoder and the record decoder."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from ingest_gateway import errors
from ingest_gateway.dialects import forms
from ingest_gateway.dialects.customerio import Decoder, check_attributes, check_event_name, check_id
from schemas import model


@pytest.mark.parametrize(
    "raw,value",
    [("23.45", 23.45), ("42", 42), ("-7", -7), ("0", 0), ("0.5", 0.5), ("true", True), ("false", False),
     ("007", "007"), ("+15551234567", "+15551234567"), ("1.50", "1.50"), ("1e3", "1e3"), ("-0", "-0"),
     ("12345678901234567890", "12345678901234567890"), ("0.1234567890123456", "0.1234567890123456"), ("", ""), ("True", "True")],
)
def test_form_values_typed_only_when_canonical(raw, value):
    got = forms.typed(raw)
    assert got == value and type(got) is type(value)


def test_form_nesting_and_lists():
    body = b"name=purchased&data[price]=23.45&data[item][sku]=a%2Fb&data[tags][]=x&data[tags][]=2"
    assert forms.decode(body) == {"name": "purchased", "data": {"price": 23.45, "item": {"sku": "a/b"}, "tags": ["x", 2]}}


@pytest.mark.parametrize("raw", [b"a=1&a=2", b"a=1&a[b]=2", b"a[b]=1&a[]=2", b"a[][b]=1", b"]=1", b"%ff=1", b"a" + b"[x]" * 20 + b"=1"])
def test_form_ambiguities_refused(raw):
    with pytest.raises(forms.FormError):
        forms.decode(raw)


def decoder(resolved: dict[str, str] | None = None) -> Decoder:
    async def resolve(kind: str, value: str) -> str:
        return (resolved or {}).get(value, value)

    return Decoder(workspace="acme", source="customerio", received=1_700_000_000_000, resolve=resolve)


def test_identify_specials():
    recs = decoder().identify("c1", {"email": "a@b.c", "created_at": 1600000000, "_update": True, "anonymous_id": "anon"})
    assert [r.schema for r in recs] == [model.CUSTOMER_UPSERT, model.CUSTOMER_MERGE]
    up, alias = recs
    assert up.value["created_at"] == 1_600_000_000_000
    assert orjson.loads(up.value["attributes"]) == {"email": "a@b.c", "anonymous_id": "anon"}
    assert (alias.value["customer_id"], alias.value["merged_id"], alias.value["kind"]) == ("c1", "anon", "alias")


def test_event_id_is_message_id_and_page_type_kept():
    (rec,) = decoder().event(customer_id="c1", anonymous_id="", name=" /home ", data={"a": 1}, timestamp=1700000001, message_id="ev-1", kind="page")
    assert rec.message_id == "ev-1" and rec.value["name"] == "/home" and rec.value["timestamp"] == 1_700_000_001_000
    assert orjson.loads(rec.value["properties"]) == {"a": 1, "_type": "page"}


@pytest.mark.parametrize(
    "check,ok,over",
    [
        (lambda v: check_id(v, "id"), "x" * 150, "x" * 151),
        (lambda v: check_id(v, "id"), "ü" * 75, "ü" * 76),  # bytes, not characters
        (check_event_name, "e" * 100, "e" * 101),
        (lambda v: check_attributes({v: 1}, "attributes"), "n" * 150, "n" * 151),
        (lambda v: check_attributes({"k": v}, "attributes"), "v" * 1000, "v" * 1001),
        (lambda n: check_attributes({f"k{i}": i for i in range(n)}, "attributes"), 300, 301),
    ],
)
def test_limits_just_under_and_over(check, ok, over):
    check(ok)
    with pytest.raises(errors.LimitExceeded):
        check(over)


def test_v2_batch_operations():
    d = decoder({"b@example.com": "cust-b"})

    async def run():
        out = []
        for op in (
            {"type": "person", "action": "merge", "primary": {"id": "a"}, "secondary": {"email": "b@example.com"}},
            {"type": "person", "action": "add_device", "identifiers": {"id": "a"}, "device": {"token": "t", "platform": "ios"}},
            {"type": "person", "action": "delete_device", "identifiers": {"id": "a"}, "device": {"token": "t"}},
            {"type": "person", "action": "unsuppress", "identifiers": {"id": "a"}},
        ):
            out += await d.v2_operation(op)
        return out

    merge, add, rm, unsup = asyncio.run(run())
    assert (merge.value["customer_id"], merge.value["merged_id"], merge.value["kind"]) == ("a", "cust-b", "merge")
    assert orjson.loads(add.value["items"]) == [{"id": "t", "platform": "ios"}] and add.value["op"] == "upsert"
    assert orjson.loads(rm.value["items"]) == ["t"] and rm.value["op"] == "delete"
    assert orjson.loads(unsup.value["attributes"]) == {"_suppressed": False}


@pytest.mark.parametrize(
    "op,field",
    [
        ({"type": "object", "action": "identify", "identifiers": {"object_type_id": "1", "object_id": "x"}}, "type"),
        ({"type": "person", "action": "add_relationships", "identifiers": {"id": "a"}}, "action"),
        ({"type": "person", "action": "identify", "identifiers": {"cio_id": "x"}}, "identifiers.cio_id"),
        ({"type": "person", "action": "fly", "identifiers": {"id": "a"}}, "action"),
        ({"type": "person", "action": "identify"}, "identifiers"),
    ],
)
def test_v2_refusals_name_the_field(op, field):
    with pytest.raises(errors.InvalidRequest) as info:
        asyncio.run(decoder().v2_operation(op))
    assert info.value.param == field
