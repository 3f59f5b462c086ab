"""The periodic "delivered" summary: one info line per subscription a minute, not one per delivery.

At 3,000 deliveries/s one line per success is 3,000 lines/s into journald, whose default rate
limit (10,000 messages per 30 s per service) then drops lines, warnings and errors included.
So successes are logged one by one only at debug; at info each subscription gets a line per
SUMMARY_SECONDS with how many were delivered. Failures (retries, dead) keep their own lines.
"""

from __future__ import annotations

from collections import Counter

# Tunable (tests shrink it).
SUMMARY_SECONDS = 60.0


class DeliveredSummary:
    """Counts successes per subscription; says when a summary is due. Pure: ``now`` is passed in."""

    def __init__(self, now: float, interval: float | None = None) -> None:
        self.interval = SUMMARY_SECONDS if interval is None else interval
        self.since = now
        self.counts: Counter[int] = Counter()

    def add(self, subscription_id: int) -> None:
        self.counts[subscription_id] += 1

    def take(self, now: float, force: bool = False) -> tuple[float, dict[int, int]]:
        """``(window seconds, {subscription_id: delivered})`` when a summary is due (or
        ``force``, at shutdown) and anything was delivered; else ``(0.0, {})``."""
        if not self.counts or (not force and now - self.since < self.interval):
            return 0.0, {}
        window, counts = now - self.since, dict(sorted(self.counts.items()))
        self.since = now
        self.counts.clear()
        return window, counts
