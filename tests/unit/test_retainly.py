"""The Retainly request rules, as pure functions: every documented limit just under and
just over, the meaning of "1 nesting layer", and the exact locations errors point at."""

from __future__ import annotations

import pytest

from ingest_gateway.dialects import retainly as r

SEED_CUSTOMER_2 = {
    "id": 2,
    "customer_field_string": "value",
    "customer_field_array_with_objects": [
        {
            "object_field_string": "value",
            "object_field_array_with_nested_array": [
                {"nested_array_object_field_string": "value", "nested_array_object_field_boolean": True}
            ],
        },
        {"object_field_string": "value", "object_field_boolean": False},
    ],
}


def customers(*cs):
    return {"customers": list(cs)}


def locs(problems):
    return [(tuple(p["loc"]), p["type"]) for p in problems]


def test_seed_customers_are_valid():
    assert r.check_customers(customers({"id": 1, "a": ["one", "two"]}, SEED_CUSTOMER_2)) == []


@pytest.mark.parametrize(
    "body, expected",
    [
        ([], [(("body",), "model_attributes_type")]),
        ({}, [(("body", "customers"), "missing")]),
        ({"customers": {}}, [(("body", "customers"), "list_type")]),
        ({"customers": []}, [(("body", "customers"), "too_short")]),
        ({"customers": [{"id": 1}], "x": 1}, [(("body", "x"), "extra_forbidden")]),
        (customers(5), [(("body", "customers", 0), "dict_type")]),
        (customers({"name": "a"}), [(("body", "customers", 0, "id"), "missing")]),
        (customers({"id": 1}, {"id": True}), [(("body", "customers", 1, "id"), "value_error")]),
        (customers({"id": 1.5}), [(("body", "customers", 0, "id"), "value_error")]),
        (customers({"id": " "}), [(("body", "customers", 0, "id"), "value_error")]),
    ],
)
def test_customer_envelope_errors(body, expected):
    assert locs(r.check_customers(body)) == expected


def test_count_limit_10000():
    assert r.check_customers(customers(*({"id": i} for i in range(10_000)))) == []
    (p,) = r.check_customers(customers(*({"id": i} for i in range(10_001))))
    assert p == {
        "loc": ["body", "customers"],
        "msg": "List should have at most 10000 items after validation, not 10001",
        "type": "too_long",
    }
    assert r.check_customer_deletes({"customers_ids": list(range(10_000))}) == []
    assert locs(r.check_customer_deletes({"customers_ids": list(range(10_001))})) == [(("body", "customers_ids"), "too_long")]
    rec = {"customer_id": 1, "field": "f", "data": [{"a": 1}]}
    assert r.check_array_upserts({"records": [rec] * 10_000}) == []
    assert locs(r.check_array_upserts({"records": [rec] * 10_001})) == [(("body", "records"), "too_long")]
    drec = {"customer_id": 1, "field": "f", "ids": [1]}
    assert r.check_array_deletes({"records": [drec] * 10_000}) == []
    assert locs(r.check_array_deletes({"records": [drec] * 10_001})) == [(("body", "records"), "too_long")]


def test_field_limit_500_counts_id():
    ok = {"id": 1, **{f"f{i}": i for i in range(499)}}
    assert r.check_customers(customers(ok)) == []
    over = {**ok, "one_more": 1}
    assert locs(r.check_customers(customers(over))) == [(("body", "customers", 0), "value_error")]


def test_array_attribute_limit_15():
    ok = {"id": 1, **{f"a{i}": [i] for i in range(15)}}
    assert r.check_customers(customers(ok)) == []
    (p,) = r.check_customers(customers({**ok, "a15": []}))
    assert p["loc"] == ["body", "customers", 0] and "15 attributes of type array" in p["msg"]


def test_string_limit_1000_anywhere():
    assert r.check_customers(customers({"id": 1, "s": "x" * 1000, "a": [{"b": ["y" * 1000]}]})) == []
    problems = r.check_customers(customers({"id": 1, "s": "x" * 1001, "a": [{"b": ["y" * 1001]}]}))
    assert locs(problems) == [
        (("body", "customers", 0, "s"), "string_too_long"),
        (("body", "customers", 0, "a", 0, "b", 0), "string_too_long"),
    ]


@pytest.mark.parametrize(
    "value, bad_loc",
    [
        ({"k": 1}, ()),  # an associative array as the value
        ([{"k": {"x": 1}}], (0, "k")),  # an object directly inside an object
        ([{"k": [{"x": [1]}]}], (0, "k", 0, "x")),  # a third array level
        ([[[1]]], (0, 0)),  # a third array level, arrays only
        ([{"k": [[1]]}], (0, "k", 0)),  # a third array level under an item
    ],
)
def test_nesting_refused(value, bad_loc):
    (p,) = r.check_customers(customers({"id": 1, "v": value}))
    assert tuple(p["loc"]) == ("body", "customers", 0, "v", *bad_loc) and p["type"] == "value_error"


@pytest.mark.parametrize("value", [[1, "a", None], [[1, 2]], [{"k": [1]}], [{"k": [{"x": 1}]}], None, 1.5])
def test_nesting_accepted(value):
    assert r.check_customers(customers({"id": 1, "v": value})) == []


def test_every_violation_is_listed():
    body = customers({"id": 1, "s": "x" * 1001}, {"v": {"a": 1}}, 7)
    assert locs(r.check_customers(body)) == [
        (("body", "customers", 0, "s"), "string_too_long"),
        (("body", "customers", 1, "id"), "missing"),
        (("body", "customers", 1, "v"), "value_error"),
        (("body", "customers", 2), "dict_type"),
    ]


def test_array_records():
    seed = {
        "records": [
            {"customer_id": 1, "field": "purchases", "data": [{"id": 1, "amount": 123, "products": [{"name": "apple"}]}]},
            {"customer_id": 2, "field": "booking", "data": [{"booking_number": 123}, {"id": 2, "booking_number": 123}]},
        ]
    }
    assert r.check_array_upserts(seed) == []
    bad = {
        "records": [
            {"customer_id": 1, "field": "", "data": [{"id": [1], "p": [{"q": [1]}]}, 3]},
            {"field": 5, "data": {}, "extra": 1},
        ]
    }
    assert locs(r.check_array_upserts(bad)) == [
        (("body", "records", 0, "field"), "string_too_short"),
        (("body", "records", 0, "data", 0, "id"), "value_error"),
        (("body", "records", 0, "data", 0, "p", 0, "q"), "value_error"),
        (("body", "records", 0, "data", 1), "dict_type"),
        (("body", "records", 1, "extra"), "extra_forbidden"),
        (("body", "records", 1, "customer_id"), "missing"),
        (("body", "records", 1, "field"), "string_type"),
        (("body", "records", 1, "data"), "list_type"),
    ]


def test_array_deletes():
    assert r.check_array_deletes({"records": [{"customer_id": "1", "field": "p", "ids": [1, "2"]}]}) == []
    assert locs(r.check_array_deletes({"records": [{"customer_id": "1", "field": "p", "ids": []}]})) == [
        (("body", "records", 0, "ids"), "too_short")
    ]
    assert locs(r.check_array_deletes({"records": [{"customer_id": "1", "field": "p", "ids": [{}]}]})) == [
        (("body", "records", 0, "ids", 0), "value_error")
    ]


def test_event_rules():
    seed = {
        "customer_id": "unique customer id",
        "event": "event",
        "data": {"param1": "value1", "nested_event_array_param": [{"nested_array_param1": "value1"}]},
    }
    assert r.check_event(seed) == {}
    assert r.check_event({"customer_id": 1, "event": "e" * 50, "data": {f"p{i}": i for i in range(50)}}) == {}
    assert r.check_event({"customer_id": 1, "event": "e", "data": []}) == {}  # PHP's empty map
    errs = r.check_event({"customer_id": 1, "event": "e" * 51, "data": {f"p{i}": i for i in range(51)}})
    assert errs == {
        "event": ["The event must not be greater than 50 characters."],
        "data": ["The data must not have more than 50 fields."],
    }
    errs = r.check_event({"event": 5, "data": {"param1": {"a": 1}, "n": [{"x": "y" * 1001}], "s": "z" * 1001}, "when": 1})
    assert errs == {
        "when": ["The when field is not allowed."],
        "customer_id": ["The customer id field is required."],
        "event": ["The event must be a string."],
        "data.param1": ["The data.param1 must not be an associative array."],
        "data.n.0.x": ["The data.n.0.x must not be greater than 1000 characters."],
        "data.s": ["The data.s must not be greater than 1000 characters."],
    }
    assert r.check_event([]) == {"body": ["The request body must be a JSON object."]}


def test_event_strings_deep_do_not_recurse():
    deep: list = ["x" * 1001]
    for _ in range(5000):
        deep = [deep]
    assert list(r.check_event({"customer_id": 1, "event": "e", "data": {"d": deep}})) == ["data.d" + ".0" * 5001]
