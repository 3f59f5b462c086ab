"""The retry policy (tenacity-defined, persisted elsewhere) and Retry-After handling."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.errors import ValidationError
from relay.webhook.retry import (
    DEFAULT_BACKOFF_MS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_POLICY,
    DEFAULT_TIMEOUT_MS,
    RETRY_AFTER_CAP_SECONDS,
    RetryPolicy,
    delay_with_retry_after,
    parse_retry_after,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def test_contract_defaults() -> None:
    assert (DEFAULT_MAX_RETRIES, DEFAULT_BACKOFF_MS, DEFAULT_TIMEOUT_MS) == (3, 5000, 10000)
    assert RETRY_AFTER_CAP_SECONDS == 3600.0
    assert RetryPolicy() == DEFAULT_POLICY == RetryPolicy(3, 5000)


def test_default_schedule_is_5_10_15_then_dead() -> None:
    policy = RetryPolicy(max_retries=3, backoff_ms=5000)
    assert [policy.next_delay(n) for n in (1, 2, 3, 4, 5)] == [5.0, 10.0, 15.0, None, None]
    assert policy.delays() == (5.0, 10.0, 15.0)


def test_custom_backoff_and_budget() -> None:
    policy = RetryPolicy(max_retries=5, backoff_ms=200)
    assert policy.delays() == pytest.approx((0.2, 0.4, 0.6, 0.8, 1.0))
    assert policy.next_delay(6) is None


def test_zero_retries_dies_after_first_failure() -> None:
    assert RetryPolicy(max_retries=0).next_delay(1) is None
    assert RetryPolicy(max_retries=0).delays() == ()


def test_zero_backoff_retries_immediately() -> None:
    assert RetryPolicy(max_retries=2, backoff_ms=0).delays() == (0.0, 0.0)


@given(st.integers(0, 100), st.integers(0, 86_400_000), st.integers(1, 200))
def test_schedule_is_backoff_times_n(max_retries: int, backoff_ms: int, failures: int) -> None:
    delay = RetryPolicy(max_retries, backoff_ms).next_delay(failures)
    if failures > max_retries:
        assert delay is None
    else:
        assert delay == pytest.approx(backoff_ms / 1000 * failures)


def test_failures_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DEFAULT_POLICY.next_delay(0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 101}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"backoff_ms": -5}, "backoff_ms"),
        ({"backoff_ms": 86_400_001}, "backoff_ms"),
        ({"backoff_ms": 1.5}, "backoff_ms"),
    ],
)
def test_out_of_range_policies_are_refused(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy(**kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_policy_is_hashable_and_picklable() -> None:
    policy = RetryPolicy(4, 100)
    assert {policy: 1}[RetryPolicy(4, 100)] == 1
    assert pickle.loads(pickle.dumps(policy)).delays() == policy.delays()


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 30 ", 30.0),
        ("1.5", 1.5),
        ("86400", RETRY_AFTER_CAP_SECONDS),
        ("99999999999999999999999", RETRY_AFTER_CAP_SECONDS),
        (None, None),
        ("", None),
        ("   ", None),
        ("-5", None),
        ("soon", None),
        ("12abc", None),
        ("inf", None),
        ("NaN", None),
        ("1e3", None),
    ],
)
def test_retry_after_delta_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, NOW) == expected


def test_retry_after_http_date() -> None:
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after(later, NOW) == 90.0
    assert parse_retry_after("Wed, 01 May 2024 12:02:00 GMT", NOW) == 120.0


def test_retry_after_past_date_means_now() -> None:
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", NOW) == 0.0


def test_retry_after_far_date_is_capped() -> None:
    assert parse_retry_after("Thu, 01 Jan 2099 00:00:00 GMT", NOW) == RETRY_AFTER_CAP_SECONDS


def test_retry_after_naive_now_is_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", naive) == 30.0


@given(st.text(max_size=40))
def test_retry_after_never_raises(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or 0.0 <= result <= RETRY_AFTER_CAP_SECONDS


def test_retry_after_only_lengthens() -> None:
    assert delay_with_retry_after(5.0, None) == 5.0
    assert delay_with_retry_after(5.0, 1.0) == 5.0
    assert delay_with_retry_after(5.0, 0.0) == 5.0
    assert delay_with_retry_after(5.0, 60.0) == 60.0
