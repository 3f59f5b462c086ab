"""The retry policy: how long to wait after each failed attempt, and when to give up.

tenacity *defines* the policy (``stop_after_attempt(1 + max_retries)`` and
``wait_incrementing(B, B)``, so retry n waits B * n), but relay never sleeps inside tenacity:
the schedule lives in Postgres (``deliveries.failures`` and ``next_attempt_at``) so that a
restart neither resets nor loses it. :meth:`RetryPolicy.next_delay` therefore evaluates the
tenacity strategies against a :class:`tenacity.RetryCallState` rebuilt from the persisted
failure count.

A receiver's ``Retry-After`` can only lengthen the wait (:func:`delay_with_retry_after`),
capped at an hour so one answer cannot park a delivery for days.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import tenacity

from relay.errors import ValidationError

__all__ = [
    "BACKOFF_MS_LIMIT",
    "DEFAULT_BACKOFF_MS",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_POLICY",
    "DEFAULT_TIMEOUT_MS",
    "MAX_RETRIES_LIMIT",
    "RETRY_AFTER_CAP_SECONDS",
    "RetryPolicy",
    "delay_with_retry_after",
    "parse_retry_after",
]

DEFAULT_MAX_RETRIES = 3
DEFAULT_BACKOFF_MS = 5000
DEFAULT_TIMEOUT_MS = 10000
RETRY_AFTER_CAP_SECONDS = 3600.0

# The same bounds as the CHECK constraints on relay.subscriptions, so the CLI can refuse a bad
# value with a message naming the flag instead of a constraint violation.
MAX_RETRIES_LIMIT = 100
BACKOFF_MS_LIMIT = 86_400_000


@dataclass(frozen=True)
class RetryPolicy:
    """A subscription's retry budget: ``max_retries`` retries after the first attempt, retry
    n waiting ``backoff_ms`` * n milliseconds after the failed attempt ends.

    Raises :class:`ValidationError` (field ``max_retries`` or ``backoff_ms``) for values
    outside what the database accepts.
    """

    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_ms: int = DEFAULT_BACKOFF_MS
    _retrying: tenacity.Retrying = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        # bool is an int subclass; True retries is a bug at the call site, not one retry.
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise ValidationError("max_retries", "must be an integer")
        if not 0 <= self.max_retries <= MAX_RETRIES_LIMIT:
            raise ValidationError("max_retries", f"must be between 0 and {MAX_RETRIES_LIMIT}")
        if isinstance(self.backoff_ms, bool) or not isinstance(self.backoff_ms, int):
            raise ValidationError("backoff_ms", "must be an integer")
        if not 0 <= self.backoff_ms <= BACKOFF_MS_LIMIT:
            raise ValidationError("backoff_ms", f"must be between 0 and {BACKOFF_MS_LIMIT}")
        base = self.backoff_ms / 1000.0
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=tenacity.wait_incrementing(start=base, increment=base),
            reraise=True,
        )
        # Frozen dataclass: the derived tenacity object is set once, here.
        object.__setattr__(self, "_retrying", retrying)

    def next_delay(self, failures: int) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when the budget is spent.

        ``failures`` is the number of failed attempts so far in this budget (1 after the
        first failure). Retry n = ``failures`` waits ``backoff_ms`` * n; once
        ``failures > max_retries`` the delivery is dead and this returns ``None``.
        """
        if failures < 1:
            raise ValueError(f"failures must be >= 1, not {failures}")
        state = tenacity.RetryCallState(self._retrying, fn=None, args=(), kwargs={})
        # In tenacity, stop and wait are consulted right after attempt `attempt_number`
        # failed: exactly our position after `failures` failures.
        state.attempt_number = failures
        if self._retrying.stop(state):
            return None
        return float(self._retrying.wait(state))

    def delays(self) -> tuple[float, ...]:
        """The whole schedule in seconds (``(5.0, 10.0, 15.0)`` by default), for display."""
        return tuple(
            delay
            for delay in (self.next_delay(n) for n in range(1, self.max_retries + 1))
            if delay is not None
        )


DEFAULT_POLICY = RetryPolicy()

# RFC 9110 says delta-seconds is 1*DIGIT; a fractional value is accepted because some servers
# send one and its meaning is unambiguous.
_DELTA = re.compile(r"\d+(?:\.\d+)?")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait, or ``None`` if it says nothing usable.

    Accepts delta-seconds (``"120"``) or an HTTP-date (``"Wed, 21 Oct 2015 07:28:00 GMT"``,
    measured from ``now``; a date already past means 0). Missing, empty, negative or garbage
    values give ``None``. The result is capped at :data:`RETRY_AFTER_CAP_SECONDS`.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA.fullmatch(text):
        seconds = float(text)
    else:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        # HTTP-dates are GMT; a naive result (a "-0000" zone) or a naive `now` is UTC too.
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        seconds = max(0.0, (when - now).total_seconds())
    if not math.isfinite(seconds):
        return None
    return min(seconds, RETRY_AFTER_CAP_SECONDS)


def delay_with_retry_after(schedule_delay: float, retry_after: float | None) -> float:
    """The wait before the next attempt: the longer of the schedule's and ``Retry-After``.

    ``Retry-After`` only ever lengthens the wait, so a receiver cannot make relay retry
    faster than the subscription's policy.
    """
    if retry_after is None:
        return schedule_delay
    return max(schedule_delay, retry_after)
