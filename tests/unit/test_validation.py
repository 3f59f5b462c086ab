"""Subscription input validation: every refusal names its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.admin import validation as v
from relay.errors import ValidationError
from relay.masking import mask_url


def field_of(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    assert str(exc.value).startswith(exc.value.field + ": ")
    return exc.value.field


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com",
        "https://example.com:8443/hooks/x?y=1#frag",
        "HTTPS://EXAMPLE.COM/",
        "https://user:pw@example.com/",
        "http://127.0.0.1:9000/",
        "http://[::1]:8080/x",
    ],
)
def test_valid_urls(url: str) -> None:
    assert v.validate_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/",
        "example.com/hook",
        "http://",
        "http:///path",
        "https://exa mple.com/",
        "https://example.com/\r\nX-Evil: 1",
        "https://example.com/\x00",
        "https://example.com:99999/",
        "https://example.com:port/",
        "https://example.com/" + "a" * 2048,
        "javascript:alert(1)",
    ],
)
def test_invalid_urls(url: str) -> None:
    with pytest.raises(ValidationError) as exc:
        v.validate_url(url)
    assert field_of(exc) == "url"


def test_mask_url_credentials() -> None:
    assert mask_url("https://u:pw@h.com/x?a=1", hide_user=True) == "https://u:***@h.com/x?a=1"
    assert mask_url("https://token@h.com/x", hide_user=True) == "https://***@h.com/x"
    assert mask_url("https://h.com/x", hide_user=True) == "https://h.com/x"
    # only the authority is read: an "@" in the path is not a credential
    assert mask_url("https://h.com:8443/x@y", hide_user=True) == "https://h.com:8443/x@y"


def test_mask_database_urls_and_conninfo() -> None:
    assert mask_url("postgresql://u:p@ss/w@h/db") == "postgresql://u:***@h/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert (
        mask_url("postgresql://h/db?user=u&password=pw") == "postgresql://h/db?user=u&password=***"
    )
    assert mask_url("host=h password='a b' dbname=x") == "host=h password=*** dbname=x"


@pytest.mark.parametrize(("raw", "want"), [("get", "GET"), ("POST", "POST"), (" Post ", "POST")])
def test_method_normalized(raw: str, want: str) -> None:
    assert v.validate_method(raw) == want


@pytest.mark.parametrize("raw", ["PUT", "", "DELETE", "G ET"])
def test_method_refused(raw: str) -> None:
    with pytest.raises(ValidationError) as exc:
        v.validate_method(raw)
    assert field_of(exc) == "method"


def test_parse_header() -> None:
    assert v.parse_header("Authorization: Bearer abc") == ("Authorization", "Bearer abc")
    assert v.parse_header("X-Empty:") == ("X-Empty", "")
    assert v.parse_header("X-Colon: a:b:c") == ("X-Colon", "a:b:c")


@pytest.mark.parametrize(
    "raw",
    [
        "NoColon",
        ": value",
        "Bad Name: x",
        "Bad(Name): x",
        "X-Inject: a\r\nX-Evil: 1",
        "X-Inject: a\nb",
        "X-Nul: a\x00b",
        "X-Utf8: caf\u00e9",
        "X-Ctl: a\x07b",
        "webhook-id: forged",
        "Webhook-Signature: v1,forged",
        "WEBHOOK-ANYTHING: x",
        "Content-Type: text/plain",
        "content-length: 5",
        "Host: evil.example",
        "Transfer-Encoding: chunked",
        "Connection: close",
        "User-Agent: me",
        "X-Long: " + "a" * 9000,
    ],
)
def test_header_refused(raw: str) -> None:
    with pytest.raises(ValidationError) as exc:
        v.parse_header(raw)
    assert field_of(exc) == "header"


def test_headers_last_wins_case_insensitively() -> None:
    assert v.validate_headers({"X-A": "1", "x-a": "2", "X-B": "3"}) == {"x-a": "2", "X-B": "3"}


def test_event_globs() -> None:
    assert v.validate_event_globs(["order.*", "*", "test.?rocessed", "order.*"]) == [
        "order.*",
        "*",
        "test.?rocessed",
    ]
    assert v.glob_matches("order.*", "order.created")
    assert not v.glob_matches("order.*", "test.processed")
    assert v.glob_matches("*", "anything.at_all")
    assert v.glob_matches("test.?rocessed", "test.processed")
    # '_' and '.' are literal, as in relay.glob_match (LIKE with them escaped)
    assert not v.glob_matches("order_created", "orderxcreated")
    assert not v.glob_matches("order.created", "orderxcreated")


@pytest.mark.parametrize(
    "raw", ["", "Order.Created", "order", "order created", "order.*;drop", "x" * 201]
)
def test_event_glob_refused(raw: str) -> None:
    with pytest.raises(ValidationError) as exc:
        v.validate_event_glob(raw)
    assert field_of(exc) == "event"


def test_event_name() -> None:
    assert v.parse_event_name("order.created=OrderCreated") == ("order.created", "OrderCreated")
    assert v.parse_event_name("order.created=a=b") == ("order.created", "a=b")


@pytest.mark.parametrize(
    "raw",
    [
        "order.created",
        "order.created=",
        "order.created=  ",
        "BAD=x",
        "order.created=" + "n" * 201,
        "order.created=a\nb",
    ],
)
def test_event_name_refused(raw: str) -> None:
    with pytest.raises(ValidationError) as exc:
        v.parse_event_name(raw)
    assert field_of(exc) == "event_name"


def test_body_map() -> None:
    mapping = {"type": "$.eventType", "customer.id": "$.userId"}
    assert v.parse_body_map('{"type": "$.eventType", "customer.id": "$.userId"}') == mapping
    assert v.parse_body_map(mapping) == mapping


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1, 2]",
        '"text"',
        "null",
        '{"a": "$[[["}',
        '{"a": 5}',
        '{"": "$.x"}',
        '{"a": "$.x", "a.b": "$.y"}',
    ],
)
def test_body_map_refused(raw: str) -> None:
    with pytest.raises(ValidationError) as exc:
        v.parse_body_map(raw)
    assert field_of(exc) == "body_map"


def test_secret() -> None:
    secret = v.generate_secret()
    assert secret.startswith("whsec_")
    assert v.validate_secret(secret) == secret


@pytest.mark.parametrize("raw", ["", "abc", "whsec_", "whsec_!!!notbase64", "whsec_c2hvcnQ="])
def test_secret_refused(raw: str) -> None:
    with pytest.raises(ValidationError) as exc:
        v.validate_secret(raw)
    assert field_of(exc) == "secret"


def test_tenant() -> None:
    assert v.validate_tenant("acme") == "acme"
    for bad in ["", "a\nb", "x" * 201, "tab\there"]:
        with pytest.raises(ValidationError) as exc:
            v.validate_tenant(bad)
        assert field_of(exc) == "tenant"


@pytest.mark.parametrize(
    ("func", "field", "low", "high"),
    [
        (v.validate_max_retries, "max_retries", 0, 100),
        (v.validate_backoff_ms, "backoff_ms", 0, 86_400_000),
        (v.validate_timeout_ms, "timeout_ms", 1, 300_000),
    ],
)
def test_int_ranges(func: object, field: str, low: int, high: int) -> None:
    assert callable(func)
    assert func(low) == low
    assert func(str(high)) == high
    for bad in [low - 1, high + 1, "abc", "1.5", ""]:
        with pytest.raises(ValidationError) as exc:
            func(bad)
        assert field_of(exc) == field


def test_parse_id() -> None:
    assert v.parse_id("42") == 42
    for bad in ["0", "-1", "x", str(2**63)]:
        with pytest.raises(ValidationError) as exc:
            v.parse_id(bad, "subscription")
        assert field_of(exc) == "subscription"


def test_event_type_name() -> None:
    assert v.validate_event_type_name("shop.item_added") == "shop.item_added"
    for bad in ["shop", "Shop.item", "shop.", ".item", "shop.item-added", "1shop.x"]:
        with pytest.raises(ValidationError) as exc:
            v.validate_event_type_name(bad)
        assert field_of(exc) == "name"


def test_parse_since() -> None:
    now = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert v.parse_since("30m", now) == now - timedelta(minutes=30)
    assert v.parse_since("2h", now) == now - timedelta(hours=2)
    assert v.parse_since("1d", now) == now - timedelta(days=1)
    assert v.parse_since("45s", now) == now - timedelta(seconds=45)
    assert v.parse_since("2024-04-30T10:00:00Z", now) == datetime(2024, 4, 30, 10, tzinfo=UTC)
    naive = v.parse_since("2024-04-30T10:00:00", now)
    assert naive.tzinfo is not None  # a naive time is read as local time
    for bad in ["yesterday", "2h30", "-2h", ""]:
        with pytest.raises(ValidationError) as exc:
            v.parse_since(bad, now)
        assert field_of(exc) == "since"
