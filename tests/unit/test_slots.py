"""Slots: the caps on what runs, the hold limits on what is leased, and the lease guard."""

from __future__ import annotations

import pytest

from relay.daemon.slots import START_MARGIN, Slots, lease_length
from relay.daemon.store import Job
from tests.unit.scripted_store import make_job

NOW = 1000.0
LONG = NOW + 60.0  # a lease with plenty left


def job(i: int, sub: int = 1, timeout_ms: int = 10_000) -> Job:
    return make_job(i, sub, timeout_ms)


def ids(jobs: list[Job]) -> list[int]:
    return [j.id for j in jobs]


def test_limits_follow_concurrency_cap_and_prefetch() -> None:
    slots = Slots(concurrency=64, per_subscription=48, prefetch=64)
    assert slots.hold_limit == 128
    # a subscription may prefetch at most its own cap's worth
    assert slots.subscription_hold_limit == 96
    assert slots.capped
    assert not Slots(concurrency=8, per_subscription=8, prefetch=0).capped
    assert "running=0/64" in repr(slots)


def test_no_prefetch_starts_everything_admitted() -> None:
    slots = Slots(concurrency=4, per_subscription=4, prefetch=0)
    assert slots.admit([job(i) for i in range(4)], [LONG] * 4) == []
    start, lapsing = slots.pop_startable(NOW)
    assert ids(start) == [0, 1, 2, 3] and lapsing == []
    assert (slots.running, slots.ready, slots.held) == (4, 0, 4)


def test_ready_jobs_start_in_order_as_slots_free() -> None:
    slots = Slots(concurrency=2, per_subscription=2, prefetch=2)
    slots.admit([job(i) for i in range(4)], [LONG] * 4)
    start, _ = slots.pop_startable(NOW)
    assert ids(start) == [0, 1]
    assert (slots.running, slots.ready) == (2, 2)
    assert slots.pop_startable(NOW) == ([], [])  # no free slot
    slots.finished(1)
    start, _ = slots.pop_startable(NOW)
    assert ids(start) == [2]
    assert (slots.running, slots.ready, slots.held) == (2, 1, 3)


def test_a_subscription_at_its_cap_does_not_block_the_others() -> None:
    slots = Slots(concurrency=4, per_subscription=2, prefetch=4)
    slots.admit([job(i, sub=1) for i in range(4)] + [job(10, sub=2)], [LONG] * 5)
    start, _ = slots.pop_startable(NOW)
    # sub 1 runs its cap of 2, sub 2 gets a turn; a fourth slot stays free (sub 1 capped)
    assert sorted(ids(start)) == [0, 1, 10]
    assert slots.running == 3 and slots.ready == 2
    slots.finished(1)
    start, _ = slots.pop_startable(NOW)
    assert ids(start) == [2]


def test_subscriptions_take_turns() -> None:
    slots = Slots(concurrency=1, per_subscription=1, prefetch=6)
    slots.admit([job(1, sub=1), job(2, sub=1), job(3, sub=2), job(4, sub=2)], [LONG] * 4)
    order = []
    for _ in range(4):
        start, _ = slots.pop_startable(NOW)
        order += ids(start)
        slots.finished(start[0].subscription_id)
    assert order == [1, 3, 2, 4]


def test_holding_beyond_a_subscriptions_limit_overflows() -> None:
    slots = Slots(concurrency=8, per_subscription=2, prefetch=8)
    assert slots.subscription_hold_limit == 4  # cap 2 + prefetch of at most 2
    overflow = slots.admit([job(i, sub=1) for i in range(6)], [LONG] * 6)
    assert ids(overflow) == [4, 5]
    assert slots.held_by(1) == 4
    assert slots.saturated() == [1]
    assert slots.busiest(skip_saturated=False) == 4
    assert slots.busiest(skip_saturated=True) == 0


def test_a_job_whose_lease_is_too_short_is_not_started() -> None:
    """Remaining lease must cover the request timeout plus START_MARGIN: otherwise another
    relay could retake the lapsed lease while this one is still sending."""
    slots = Slots(concurrency=4, per_subscription=4, prefetch=4)
    timeout = 10.0
    just_enough = NOW + timeout + START_MARGIN
    slots.admit([job(1), job(2)], [just_enough - 0.001, just_enough])
    start, lapsing = slots.pop_startable(NOW)
    assert ids(start) == [2] and ids(lapsing) == [1]
    assert slots.held == 1  # the lapsing one is no longer held


def test_expired_removes_only_lapsing_ready_jobs() -> None:
    slots = Slots(concurrency=1, per_subscription=1, prefetch=3)
    overflow = slots.admit([job(1), job(2, sub=2), job(3, sub=2)], [LONG, NOW + 20, LONG])
    assert overflow == []
    start, _ = slots.pop_startable(NOW)
    assert ids(start) == [1]
    assert slots.expired(NOW) == []
    lapsed = slots.expired(NOW + 9)  # job 2 has 11 s left: less than 10 + START_MARGIN
    assert ids(lapsed) == [2]
    assert (slots.running, slots.ready, slots.held) == (1, 1, 2)
    slots.finished(1)
    start, _ = slots.pop_startable(NOW + 9)
    assert ids(start) == [3]


def test_take_ready_empties_the_queue_and_keeps_the_running() -> None:
    slots = Slots(concurrency=1, per_subscription=1, prefetch=2)
    slots.admit([job(1, sub=1), job(2, sub=2), job(3, sub=2)], [LONG] * 3)
    slots.pop_startable(NOW)
    assert sorted(ids(slots.take_ready())) == [2, 3]
    assert (slots.running, slots.ready, slots.held) == (1, 0, 1)
    assert slots.pop_startable(NOW) == ([], [])


@pytest.mark.parametrize(
    ("lease_seconds", "timeout_ms", "expected"),
    [(60.0, 10_000, 60.0), (1.0, 10_000, 15.0), (20.0, 15_000, 20.0)],
)
def test_lease_length_outlasts_the_timeout(
    lease_seconds: float, timeout_ms: int, expected: float
) -> None:
    assert lease_length(lease_seconds, timeout_ms) == expected
