"""The dispatcher: fans undispatched outbox rows out into deliveries.

One statement (``relay.dispatch_outbox``) marks a batch of outbox rows dispatched, inserts a
delivery for every subscription each matches, and leases the first of them to this relay, as
many as it can start now: a backlog waits in the outbox, and a delivery is written twice
(inserted leased, then acked), not three times. Deliveries it could not lease are due now for
any relay's deliverer (:meth:`~relay.daemon.signals.Signals.deliveries_due` wakes it).
"""

from __future__ import annotations

import math
import time

from relay.config import Config
from relay.daemon.attempts import Attempts
from relay.daemon.signals import Signals, wait_for_event
from relay.daemon.store import Store
from relay.metrics import Metrics

# Weight of the latest dispatch in the deliveries-per-event estimate that sizes fan-outs.
FANOUT_SMOOTHING = 0.3


class Dispatcher:
    """Runs dispatch statements while the outbox has rows and this relay has room.

    It wakes on :meth:`Signals.outbox_woken` (a NOTIFY on ``relay_outbox``), and signals
    :meth:`Signals.deliveries_due` when a dispatch created deliveries it did not lease (the
    deliverer's to claim).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        metrics: Metrics,
        attempts: Attempts,
        signals: Signals,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.attempts = attempts
        self.signals = signals
        self.stopping = signals.stopping
        self.wake = signals.outbox
        self.backlog = False  # the last dispatch was full: more events are waiting
        self.fanout_estimate = 1.0  # deliveries per dispatched event, recently

    async def step(self) -> None:
        """One dispatch statement, or one wait for room or for new events."""
        self.wake.clear()  # before the query: a NOTIFY during it is not lost
        attempts = self.attempts
        room = await attempts.gather(attempts.lease_room) if self.backlog else attempts.lease_room()
        if room > 0:
            # Fan out only as many events as this relay can start now, and lease their
            # deliveries to itself in the same statement. An event matching several
            # subscriptions takes several slots: size the batch by the recent fan-out so its
            # deliveries are leased too, not left to a claim. Rounded down: rounded up, a
            # 1-event x 10-subscription drain left a few deliveries of every dispatch to a claim
            # (153 extra claim statements per 20,000 deliveries, 5-10 % of its rate).
            events = max(1, math.floor(room / self.fanout_estimate))
            limit, lease = min(events, self.config.dispatch_batch), room
        elif attempts.free_slots() > 0 and attempts.others_may_match():
            # A subscription is at its cap, but the next events may be for others: fan out a
            # full batch unleased; the deliverer claims around the saturated subscriptions.
            limit, lease = self.config.dispatch_batch, 0
        else:
            await attempts.wait_for_slot(self.config.poll_interval)
            return
        with attempts.reserving(lease):
            leased_at = time.monotonic()
            dispatched, created, jobs = await self.store.dispatch(
                limit, lease, self.config.lease_seconds
            )
            self.metrics.db_up.labels("pool").set(1)
            if dispatched:
                self.metrics.claims.labels("outbox").inc()
                self.metrics.claimed.labels("outbox").inc(dispatched)
                self.metrics.fanout.inc(created)
                # deliveries per event, smoothed (an event matching none counts as one)
                sample = max(1.0, created / dispatched)
                self.fanout_estimate += FANOUT_SMOOTHING * (sample - self.fanout_estimate)
            if jobs:
                self.metrics.claimed.labels("delivery").inc(len(jobs))
                # Still reserved until the jobs are held: a claim in between must not see
                # the slots as free.
                await attempts.start(jobs, leased_at)
        if created > len(jobs):
            self.signals.deliveries_due()
        self.backlog = dispatched == limit
        if not self.backlog:
            await wait_for_event(self.wake, self.config.poll_interval)
