"""Exponential backoff for the daemon's retried loops (pure arithmetic: the loop sleeps).

The one helper behind every "failed, retrying in N s": the guarded loops, the acker, the
schema wait and the listener's reconnects, each with its own bounds.
"""

from __future__ import annotations

# Default bounds (seconds) of a failing loop's waits.
ERROR_BACKOFF_MIN = 0.1
ERROR_BACKOFF_MAX = 5.0


class Backoff:
    """Doubling waits between ``lo`` and ``hi`` seconds, back to ``lo`` after :meth:`reset`."""

    def __init__(self, lo: float | None = None, hi: float | None = None) -> None:
        # The defaults are read now, not at import: tests shrink the module constants.
        self.lo = ERROR_BACKOFF_MIN if lo is None else lo
        self.hi = ERROR_BACKOFF_MAX if hi is None else hi
        self.current = 0.0

    def __repr__(self) -> str:
        return f"Backoff(lo={self.lo}, hi={self.hi}, current={self.current})"

    def failed(self) -> float:
        """One more failure: the seconds to wait before the next try."""
        self.current = self.lo if self.current == 0 else min(self.hi, self.current * 2)
        return self.current

    def reset(self) -> None:
        """A success: the next failure waits ``lo`` again."""
        self.current = 0.0
