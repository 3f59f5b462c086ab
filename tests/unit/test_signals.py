"""The wake-ups between the daemon's loops (relay.daemon.signals), without Postgres."""

from __future__ import annotations

import asyncio

from relay.daemon.signals import Signals


def test_a_scheduled_retry_wakes_the_deliverer_only_if_it_would_sleep_past_it() -> None:
    s = Signals()
    s.deliveries.clear()
    s.deliverer_sleeps_until = 100.5
    s.retries_scheduled([5.0], now=100.0)  # due after the planned wake-up: no need to wake
    assert not s.deliveries.is_set()
    s.retries_scheduled([0.1], now=100.0)  # due before it: wake to re-read the next due time
    assert s.deliveries.is_set()
    # either way the deliverer's claim sizer learns both due times, once
    assert s.take_due() == (True, [105.0, 100.1])
    assert s.take_due() == (False, [])


def test_a_retry_wakes_a_deliverer_that_is_not_sleeping() -> None:
    s = Signals()
    s.deliveries.clear()
    s.new_work = False
    s.retries_scheduled([30.0], now=0.0)
    assert s.deliveries.is_set() and s.new_work


def test_deliveries_due_asks_for_a_whole_room_claim() -> None:
    s = Signals()
    s.take_due()
    s.deliveries.clear()
    s.new_work = False
    s.deliveries_due()
    assert s.deliveries.is_set() and s.new_work
    assert s.take_due() == (True, [])


def test_notifications_wake_the_loop_of_their_channel() -> None:
    s = Signals()
    s.outbox.clear()
    s.deliveries.clear()
    s.notified("relay_outbox")
    assert s.outbox.is_set() and not s.deliveries.is_set()
    s.notified("relay_deliveries")
    assert s.deliveries.is_set()


def test_a_freed_slot_wakes_the_deliverer_only_for_a_skipped_saturated_subscription() -> None:
    s = Signals()
    s.deliveries.clear()
    s.skipping(frozenset({7}))
    s.slot_freed(7, was_saturated=False)  # had room anyway: its rows were not skipped
    s.slot_freed(8, was_saturated=True)  # not skipped by the last claim
    assert s.slot.is_set() and not s.deliveries.is_set()
    s.slot_freed(7, was_saturated=True)
    assert s.deliveries.is_set()
    s.deliveries.clear()
    s.skipping(None)
    s.slot_freed(7, was_saturated=True)
    assert not s.deliveries.is_set()


def test_stop_wakes_every_loop_once() -> None:
    s = Signals()
    for event in (s.outbox, s.deliveries, s.slot):
        event.clear()
    assert s.stop() is True
    assert all(e.is_set() for e in (s.stopping, s.outbox, s.deliveries, s.slot))
    assert s.stop() is False


async def test_wait_slot_clears_first_and_times_out() -> None:
    s = Signals()
    s.slot.set()  # an old wake-up does not count
    assert await s.wait_slot(0.01) is False
    asyncio.get_running_loop().call_soon(s.slot_freed)
    assert await s.wait_slot(1.0) is True
