"""Notification building, body maps and GET encoding (pure, no database)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import MappingError, ValidationError
from relay.webhook.body import (
    BodyMap,
    build_notification,
    compile_body_map_cached,
    default_name,
    dumps,
    encode_query,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(), json_values, max_size=6)


# --- names and the default notification ------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "name"),
    [
        ("order.created", "ORDER.CREATED"),
        ("order.out_for_delivery", "ORDER.OUT_FOR_DELIVERY"),
        ("test.validation_fail", "TEST.VALIDATION_FAIL"),
    ],
)
def test_default_name_upper_cases(event_type: str, name: str) -> None:
    assert default_name(event_type) == name


def test_notification_default_shape() -> None:
    n = build_notification("order.created", "v1", {"orderId": "o-1", "total": 12.5}, {})
    assert n == {"eventType": "ORDER.CREATED", "version": "v1", "orderId": "o-1", "total": 12.5}
    assert list(n)[:2] == ["eventType", "version"]


def test_notification_uses_subscription_name_override() -> None:
    names = {"order.created": "OrderCreated"}
    assert build_notification("order.created", "v2", {}, names) == {
        "eventType": "OrderCreated",
        "version": "v2",
    }
    # An override for another type does not apply.
    assert build_notification("order.received", "v1", {}, names)["eventType"] == "ORDER.RECEIVED"


def test_relay_fields_win_over_payload() -> None:
    payload = {"eventType": "spoofed", "version": "v9", "x": 1}
    n = build_notification("order.created", "v1", payload, {})
    assert n == {"eventType": "ORDER.CREATED", "version": "v1", "x": 1}
    assert payload["eventType"] == "spoofed"  # the input is not modified


# --- body maps -------------------------------------------------------------------------------

NOTIFICATION: dict[str, Any] = {
    "eventType": "ORDER.CREATED",
    "version": "v1",
    "userId": "u-7",
    "productCode": "SKU-1",
    "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 3}],
    "single": [{"sku": "only"}],
    "address": {"city": "Leeds", "zip": None},
}


def test_contract_example() -> None:
    bm = BodyMap.compile({"type": "$.eventType", "customer.id": "$.userId", "sku": "$.productCode"})
    assert bm.apply(NOTIFICATION) == {
        "type": "ORDER.CREATED",
        "customer": {"id": "u-7"},
        "sku": "SKU-1",
    }


def test_no_match_omits_property_and_empty_parents() -> None:
    bm = BodyMap.compile({"a": "$.missing", "deep.x": "$.nope", "t": "$.eventType"})
    assert bm.apply(NOTIFICATION) == {"t": "ORDER.CREATED"}


def test_several_matches_give_a_list_one_match_a_value() -> None:
    bm = BodyMap.compile({"skus": "$.items[*].sku", "one": "$.single[*].sku"})
    assert bm.apply(NOTIFICATION) == {"skus": ["a", "b"], "one": "only"}


def test_null_and_object_values_are_kept() -> None:
    bm = BodyMap.compile({"zip": "$.address.zip", "addr": "$.address"})
    assert bm.apply(NOTIFICATION) == {"zip": None, "addr": {"city": "Leeds", "zip": None}}


def test_nested_output_names_share_parents() -> None:
    bm = BodyMap.compile({"c.id": "$.userId", "c.city": "$.address.city", "c.d.e": "$.version"})
    assert bm.apply(NOTIFICATION) == {"c": {"id": "u-7", "city": "Leeds", "d": {"e": "v1"}}}


def test_ext_filter_paths() -> None:
    bm = BodyMap.compile({"big": "$.items[?(@.qty > 2)].sku"})
    assert bm.apply(NOTIFICATION) == {"big": "b"}


def test_empty_map_gives_empty_body() -> None:
    assert BodyMap.compile({}).apply(NOTIFICATION) == {}


@pytest.mark.parametrize(
    ("mapping", "fragment"),
    [
        (["$.a"], "JSON object"),
        ("$.a", "JSON object"),
        ({"a": 1}, "must be a string"),
        ({"a": None}, "must be a string"),
        ({"a": "$["}, "not valid JSONPath"),
        ({"a": ""}, "not valid JSONPath"),
        ({"a": "$.a b"}, "not valid JSONPath"),
        ({"": "$.a"}, "empty"),
        ({"a..b": "$.a"}, "empty segment"),
        ({".a": "$.a"}, "empty segment"),
        ({"a.": "$.a"}, "empty segment"),
        ({"a": "$.a", "a.b": "$.b"}, "conflict"),
        ({"x.y.z": "$.a", "x.y": "$.b"}, "conflict"),
        ({1: "$.a"}, "not a string"),
    ],
)
def test_compile_refuses_bad_maps(mapping: Any, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        BodyMap.compile(mapping)
    assert info.value.field == "body_map"
    assert fragment in info.value.message


def test_apply_wraps_evaluation_errors() -> None:
    class Exploding(dict[str, Any]):
        def get(self, key: str, default: Any = None) -> Any:
            raise RuntimeError("boom")

    bm = BodyMap.compile({"a": "$.a"})
    with pytest.raises(MappingError, match="boom"):
        bm.apply(Exploding(a=1))


def test_compile_cached_returns_same_object_and_validates() -> None:
    text = json.dumps({"type": "$.eventType"})
    first = compile_body_map_cached(text)
    assert compile_body_map_cached(text) is first
    assert first == BodyMap.compile({"type": "$.eventType"})
    assert first.source == {"type": "$.eventType"}
    with pytest.raises(ValidationError, match="not valid JSON"):
        compile_body_map_cached("{nope")
    with pytest.raises(ValidationError, match="JSON object"):
        compile_body_map_cached("[1]")


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=12) | st.integers(), max_size=4))
def test_compile_only_ever_raises_validation_error(mapping: dict[str, Any]) -> None:
    try:
        bm = BodyMap.compile(mapping)
    except ValidationError:
        return
    bm.apply(NOTIFICATION)  # a valid map applies to a real notification without error


jsonpathish = st.text("$.[]*?@()'\"ab01-<>=!,:`+ ", max_size=16)


@given(st.dictionaries(st.text("ab.", max_size=4), jsonpathish, max_size=4))
def test_jsonpath_like_input_raises_only_relay_errors(mapping: dict[str, str]) -> None:
    try:
        bm = BodyMap.compile(mapping)
    except ValidationError:
        return
    with contextlib.suppress(MappingError):
        bm.apply({"a": [1, "x", {"b": None}], "b": {"a": 2.5}})


plain_keys = st.text("abcdefghijklmnopqrstuvwxyzABC_0123456789", min_size=1, max_size=8)


@given(st.dictionaries(plain_keys, json_values, max_size=6))
def test_renaming_map_round_trips_values(payload: dict[str, Any]) -> None:
    # Renaming every top-level key gives each value back unchanged (a list matches as one
    # value, not element-wise). Bracketed paths, because `$.where` is a jsonpath keyword.
    keys = list(payload)
    bm = BodyMap.compile({f"out{i}": f"$['{k}']" for i, k in enumerate(keys)})
    assert bm.apply(payload) == {f"out{i}": payload[k] for i, k in enumerate(keys)}


# --- encoding --------------------------------------------------------------------------------


def test_encode_query_scalars_and_containers() -> None:
    body = {
        "s": "text with spaces",
        "i": 1,
        "f": 1.5,
        "t": True,
        "n": None,
        "o": {"a": [1, "x"]},
        "l": [1, 2],
        "u": "é",
    }
    assert encode_query(body) == [
        ("s", "text with spaces"),
        ("i", "1"),
        ("f", "1.5"),
        ("t", "true"),
        ("n", "null"),
        ("o", '{"a":[1,"x"]}'),
        ("l", "[1,2]"),
        ("u", "é"),
    ]


@given(json_objects)
def test_encode_query_always_returns_strings(body: dict[str, Any]) -> None:
    pairs = encode_query(body)
    assert [k for k, _ in pairs] == list(body)
    for (_, text), value in zip(pairs, body.values(), strict=True):
        assert isinstance(text, str)
        if not isinstance(value, str):
            assert json.loads(text) == value


def test_dumps_is_compact_and_keeps_unicode() -> None:
    assert dumps({"a": [1, {"b": "é"}]}) == '{"a":[1,{"b":"é"}]}'
    with pytest.raises(ValueError):
        dumps({"x": float("nan")})
