"""ClaimSizer: how many slots a claim reserves (pure bookkeeping, the clock passed in)."""

from __future__ import annotations

from relay.daemon.claimsize import ClaimSizer


def test_at_start_the_whole_room_is_claimed() -> None:
    assert ClaimSizer().target(now=0.0, most=48, floor=12) == 48


def test_after_a_short_claim_only_due_retries_are_reserved_at_least_the_floor() -> None:
    sizer = ClaimSizer()
    sizer.claimed(wanted=48, got=3)  # nothing more was due
    sizer.retries_scheduled(now=10.0, delays=[0.1] * 20 + [5.0] * 30)
    assert sizer.target(now=10.05, most=48, floor=12) == 12  # none due yet: the floor
    assert sizer.target(now=10.2, most=48, floor=12) == 20  # the 20 short ones are due
    # counted once: the next claim does not reserve for them again
    assert sizer.target(now=10.3, most=48, floor=12) == 12
    assert sizer.target(now=15.1, most=48, floor=12) == 30
    assert sizer.target(now=20.0, most=8, floor=12) == 8  # never more than asked


def test_a_full_claim_or_unknown_work_claims_the_whole_room_again() -> None:
    sizer = ClaimSizer()
    sizer.claimed(wanted=12, got=12)  # full: more may be due (another relay's retries)
    assert sizer.target(now=0.0, most=48, floor=12) == 48
    sizer.claimed(wanted=48, got=5)
    assert sizer.target(now=0.0, most=48, floor=12) == 12
    sizer.unknown_work()  # a NOTIFY, released rows, an unleased fan-out
    assert sizer.target(now=0.0, most=48, floor=12) == 48


def test_negative_delays_count_as_due_now_and_repr_is_readable() -> None:
    sizer = ClaimSizer()
    sizer.claimed(wanted=10, got=0)
    sizer.retries_scheduled(now=1.0, delays=[-3.0] * 15)
    assert repr(sizer) == "ClaimSizer(unknown=False, retries=15)"
    assert sizer.target(now=1.0, most=100, floor=12) == 15
