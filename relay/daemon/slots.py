"""The deliveries one relay holds: in flight, or leased and ready to start.

A relay leases a few more deliveries than it has request slots (``prefetch``), so a slot that
frees starts the next request at once instead of waiting for a statement, and each dispatch
or claim statement leases a bigger batch (a bigger statement costs Postgres less per
delivery: docs/performance.md). The ready jobs wait here, in order, per subscription.

Two rules keep prefetching safe:

- **Caps hold for what runs**: at most ``concurrency`` requests in flight, at most
  ``per_subscription`` to one subscription. A subscription may *hold* (in flight + ready) up to
  its cap plus ``min(prefetch, cap)``, so a slow endpoint cannot hoard the prefetch either.
- **A lease is never used after it could have lapsed**: each ready job carries the monotonic
  time its lease ends (counted from before the statement that took it, so never late). A job
  whose remaining lease could not cover its request timeout plus ``START_MARGIN`` is not
  started but handed back (:meth:`pop_startable`, :meth:`expired`) for the caller to release:
  sending it could race another relay that retakes the lapsed lease.

Pure bookkeeping: the caller passes the clock (``now``, monotonic seconds).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from relay.daemon.store import Job

# Lease a ready job must have left, beyond its request timeout, to be started.
START_MARGIN = 2.0
# Seconds a lease outlasts the request timeout at the least (the claim statements' rule).
LEASE_OVER_TIMEOUT = 5.0


def lease_length(lease_seconds: float, timeout_ms: int) -> float:
    """How long a claim or dispatch leases a delivery: the configured lease, but never less
    than the request timeout + LEASE_OVER_TIMEOUT (as the SQL computes it)."""
    return max(lease_seconds, timeout_ms / 1000.0 + LEASE_OVER_TIMEOUT)


@dataclass(frozen=True, slots=True)
class _Ready:
    job: Job
    deadline: float  # monotonic end of the lease

    def startable(self, now: float) -> bool:
        return self.deadline - now >= self.job.timeout_ms / 1000.0 + START_MARGIN


class Slots:
    """Counts of held deliveries per subscription, and the ready jobs in FIFO order per
    subscription (subscriptions take turns)."""

    def __init__(self, concurrency: int, per_subscription: int, prefetch: int) -> None:
        self.concurrency = concurrency
        self.per_subscription = min(per_subscription, concurrency)
        self.prefetch = prefetch
        #: most deliveries held (in flight + ready)
        self.hold_limit = concurrency + prefetch
        #: most deliveries of one subscription held
        self.subscription_hold_limit = self.per_subscription + min(prefetch, self.per_subscription)
        self.running = 0
        self.ready = 0
        self._running: dict[int, int] = {}
        self._held: dict[int, int] = {}
        # Insertion order is the turn order: a subscription served goes to the back.
        self._queues: dict[int, deque[_Ready]] = {}

    def __repr__(self) -> str:
        return (
            f"Slots(running={self.running}/{self.concurrency}, ready={self.ready}, "
            f"per_subscription={self.per_subscription}, prefetch={self.prefetch})"
        )

    @property
    def held(self) -> int:
        return self.running + self.ready

    @property
    def capped(self) -> bool:
        """Whether the per-subscription bound can bind (it is lower than the total)."""
        return self.subscription_hold_limit < self.hold_limit

    def held_by(self, subscription_id: int) -> int:
        return self._held.get(subscription_id, 0)

    def busiest(self, *, skip_saturated: bool) -> int:
        """The most deliveries one subscription holds (of those not saturated, if asked)."""
        if skip_saturated:
            limit = self.subscription_hold_limit
            return max((n for n in self._held.values() if n < limit), default=0)
        return max(self._held.values(), default=0)

    def saturated(self) -> list[int]:
        """Subscriptions holding all they may: a claim must skip them."""
        if not self.capped:
            return []
        limit = self.subscription_hold_limit
        return [sub for sub, n in self._held.items() if n >= limit]

    def admit(self, jobs: list[Job], deadlines: list[float]) -> list[Job]:
        """Queue newly leased jobs (lease ending at ``deadlines``); return those over their
        subscription's hold limit (one statement can overshoot it), for the caller to release."""
        overflow: list[Job] = []
        limit = self.subscription_hold_limit
        for job, deadline in zip(jobs, deadlines, strict=True):
            sub = job.subscription_id
            n = self._held.get(sub, 0)
            if n >= limit:
                overflow.append(job)
                continue
            self._held[sub] = n + 1
            queue = self._queues.get(sub)
            if queue is None:
                queue = self._queues[sub] = deque()
            queue.append(_Ready(job, deadline))
            self.ready += 1
        return overflow

    def pop_startable(self, now: float) -> tuple[list[Job], list[Job]]:
        """Take the ready jobs that may start now (free slots, caps); returns (to start,
        lapsing: leases too short to start, for the caller to release)."""
        start: list[Job] = []
        lapsing: list[Job] = []
        cap = self.per_subscription
        while self.running < self.concurrency and self.ready:
            sub = next((s for s in self._queues if self._running.get(s, 0) < cap), None)
            if sub is None:
                break  # every subscription with ready jobs is at its cap
            queue = self._queues.pop(sub)
            item = queue.popleft()
            self.ready -= 1
            if queue:
                self._queues[sub] = queue  # back of the turn order
            if item.startable(now):
                self._running[sub] = self._running.get(sub, 0) + 1
                self.running += 1
                start.append(item.job)
            else:
                self._drop(sub)
                lapsing.append(item.job)
        return start, lapsing

    def finished(self, subscription_id: int) -> None:
        """An attempt of ``subscription_id`` ended (its slot is free)."""
        _decrement(self._running, subscription_id)
        self.running -= 1
        self._drop(subscription_id)

    def expired(self, now: float) -> list[Job]:
        """Remove and return the ready jobs whose lease is now too short to start."""
        out: list[Job] = []
        for sub, queue in list(self._queues.items()):
            keep: deque[_Ready] = deque()
            for item in queue:
                if item.startable(now):
                    keep.append(item)
                else:
                    out.append(item.job)
                    self._drop(sub)
            if keep:
                self._queues[sub] = keep
            else:
                del self._queues[sub]
        self.ready -= len(out)
        return out

    def take_ready(self) -> list[Job]:
        """Remove and return every ready job (shutdown: they go back to the database)."""
        out = [item.job for queue in self._queues.values() for item in queue]
        for job in out:
            self._drop(job.subscription_id)
        self._queues.clear()
        self.ready = 0
        return out

    def _drop(self, subscription_id: int) -> None:
        _decrement(self._held, subscription_id)


def _decrement(counts: dict[int, int], key: int) -> None:
    """Count one less for ``key``, forgetting it at zero (the dicts hold only live keys)."""
    n = counts[key] - 1
    if n:
        counts[key] = n
    else:
        del counts[key]
