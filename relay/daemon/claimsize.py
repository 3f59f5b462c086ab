"""How many slots the deliverer's next claim should reserve.

A claim reserves its slots for as long as its statement runs (so the dispatcher cannot hand
the same slots out meanwhile). Reserving the whole free room for a claim that brings back a
few retries starves the dispatcher (in a retry storm claims reserved several times the slots
they got back: docs/performance.md). So the deliverer sizes a claim by what it knows
is due -- the retries this relay scheduled whose time has come -- and reserves the whole
room only when it cannot know: at start, after a NOTIFY from elsewhere (another relay's
fan-out, released rows), after its own unleased fan-out, or when the last claim came back
full (more may be waiting: another relay's retries, leases a crashed relay left to expire).

Pure bookkeeping: the caller passes the clock (``now``, monotonic seconds).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class ClaimSizer:
    """Tracks the due times of this relay's scheduled retries and whether other work of
    unknown size may be due."""

    def __init__(self) -> None:
        self.unknown = True  # work of unknown size may be due: claim the whole room
        self._due: list[float] = []  # heap of monotonic due times of our retries

    def __repr__(self) -> str:
        return f"ClaimSizer(unknown={self.unknown}, retries={len(self._due)})"

    def retries_scheduled(self, now: float, delays: Iterable[float]) -> None:
        """This relay scheduled retries falling due ``delays`` seconds from ``now``."""
        self.retries_due(now + max(0.0, delay) for delay in delays)

    def retries_due(self, times: Iterable[float]) -> None:
        """This relay scheduled retries falling due at ``times`` (monotonic seconds)."""
        for due in times:
            heapq.heappush(self._due, due)

    def unknown_work(self) -> None:
        """Deliveries of unknown number may have become due."""
        self.unknown = True

    def target(self, now: float, most: int, floor: int) -> int:
        """Slots the next claim should reserve: ``most`` when the amount due is unknown, else
        the retries due by ``now`` (popped: counted once), at least ``floor`` (one claim
        statement costs about the same for 1 row as for ``floor``), at most ``most``."""
        due = 0
        while self._due and self._due[0] <= now:
            heapq.heappop(self._due)
            due += 1
        if self.unknown:
            return most
        return min(most, max(floor, due))

    def claimed(self, wanted: int, got: int) -> None:
        """A claim for ``wanted`` rows brought ``got`` back: a full one may have left more."""
        self.unknown = got >= wanted
