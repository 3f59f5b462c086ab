"""The per-subscription "delivered" summary: due once per interval, only with something to say."""

from __future__ import annotations

from relay.daemon.summary import DeliveredSummary


def test_summary_is_due_once_per_interval_with_counts_per_subscription() -> None:
    s = DeliveredSummary(now=100.0, interval=60.0)
    assert s.take(now=120.0) == (0.0, {}), "nothing delivered: nothing to say"
    for sub in (2, 1, 2, 2):
        s.add(sub)
    assert s.take(now=159.9) == (0.0, {}), "not due before the interval"
    window, counts = s.take(now=160.0)
    assert window == 60.0 and counts == {1: 1, 2: 3}
    assert s.take(now=500.0) == (0.0, {}), "counts start again from zero"
    s.add(7)
    window, counts = s.take(now=530.0)
    assert window == 370.0 and counts == {7: 1}, "the window runs from the last summary"
    s.add(7)
    assert s.take(now=531.0) == (0.0, {})
    window, counts = s.take(now=531.0, force=True)
    assert window == 1.0 and counts == {7: 1}, "a forced summary (shutdown) says what is left"
