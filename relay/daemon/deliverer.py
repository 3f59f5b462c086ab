"""The deliverer: claims due deliveries (first tries left unleased by a dispatch, retries,
rows another relay gave back or lost) while this relay has free slots.

Claims skip the subscriptions this relay already holds at their cap, are sized to what is
known to be due (:mod:`relay.daemon.claimsize`), and when nothing more is due it sleeps until
the next retry falls due, a wake-up (:class:`~relay.daemon.signals.Signals`: NOTIFY
``relay_deliveries``, a release, a scheduled retry) or a poll.
"""

from __future__ import annotations

import time

from relay.config import Config
from relay.daemon.attempts import Attempts
from relay.daemon.claimsize import ClaimSizer
from relay.daemon.signals import Signals, wait_for_event
from relay.daemon.store import Store
from relay.metrics import Metrics

# How late the deliverer may wake for a retry, so retries falling due together share a claim.
RETRY_COALESCE_SECONDS = 0.05


class Deliverer:
    """Runs claim statements while deliveries are due and this relay has room."""

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
        self.claim_sizer = ClaimSizer()
        self.wake = signals.deliveries
        self.fruitless: frozenset[int] | None = None  # exclusions of a claim that found none

    def _sized(self) -> ClaimSizer:
        """The claim sizer, told what was signalled since it was last asked (a wake-up of
        unknown size, retries this relay scheduled)."""
        unknown, retries = self.signals.take_due()
        if unknown:
            self.claim_sizer.unknown_work()
        if retries:
            self.claim_sizer.retries_due(retries)
        return self.claim_sizer

    def _skipping(self, exclusions: frozenset[int] | None) -> None:
        self.fruitless = exclusions
        self.signals.skipping(exclusions)

    # -- claiming ------------------------------------------------------------------------------
    async def step(self) -> None:
        """One claim statement, or one wait for room or for due work."""
        attempts = self.attempts
        if attempts.free_slots() <= 0:
            await attempts.wait_for_slot(None)
            return
        saturated = attempts.saturated()
        exclusions = frozenset(saturated)
        if exclusions and exclusions == self.fruitless and not self.signals.new_work:
            # The last claim that skipped these saturated subscriptions found nothing else
            # due; running it again would walk their whole backlog for nothing. Wait for new
            # work, or for one of them to free a slot (the exclusions then change).
            self.wake.clear()
            await wait_for_event(self.wake, self.config.poll_interval)
            if not self.wake.is_set():
                self._skipping(None)  # a poll: look once more
                self.claim_sizer.unknown_work()
            return
        room = attempts.claim_room()
        if room <= 0 or (saturated and len(saturated) >= attempts.subscriptions_active):
            # Slots promised to a statement in progress may all go to one subscription; or
            # every subscription is at its cap, and a claim skipping them all finds nothing.
            await attempts.wait_for_slot(self.config.poll_interval)
            return
        # Reserve what is known to be due, not the whole room: the dispatcher needs the rest
        # while the claim runs (relay/daemon/claimsize.py).
        target = self._sized().target(
            time.monotonic(), self.config.claim_batch, attempts.low_water()
        )
        want = min(room, target)
        if want < attempts.low_water():
            # Work is waiting: gather a few freed slots before the next claim (bounded by
            # short gaps, so latency stays low).
            want = min(await attempts.gather(attempts.claim_room), target)
            if want <= 0:
                return
            saturated = attempts.saturated()
            exclusions = frozenset(saturated)
        claimed = await self._claim(want, saturated, exclusions)
        if claimed < want:
            await self._sleep_until_due(exclusions)

    async def _claim(self, want: int, saturated: list[int], exclusions: frozenset[int]) -> int:
        """Claim up to ``want`` due deliveries (skipping ``saturated``), start them, and
        return how many came back."""
        self.wake.clear()
        self.signals.new_work = False
        # Marked before the statement: an excluded subscription's slot that frees while the
        # claim runs must wake the deliverer again (see Signals.slot_freed).
        self._skipping(exclusions or None)
        # Reserved until the jobs are held, like a dispatch's leases: the dispatcher must not
        # hand the same slots (or the same subscription's room) out meanwhile.
        with self.attempts.reserving(want):
            leased_at = time.monotonic()
            jobs = await self.store.claim(want, self.config.lease_seconds, saturated)
            self._skipping(exclusions if exclusions and len(jobs) < want else None)
            self.metrics.db_up.labels("pool").set(1)
            self.metrics.claims.labels("delivery").inc()
            if jobs:
                self.metrics.claimed.labels("delivery").inc(len(jobs))
            claimed = len(jobs)
            self._sized().claimed(want, claimed)
            await self.attempts.start(jobs, leased_at)
        return claimed

    async def _sleep_until_due(self, exclusions: frozenset[int]) -> None:
        """Drained what is due: sleep until the next retry falls due, a wake-up, or a poll."""
        wait = self.config.poll_interval
        if exclusions:
            # The next-due query would walk the saturated subscriptions' rows too; look
            # again soon instead (a retry of another subscription may wait up to 1 s).
            wait = min(wait, 1.0)
        else:
            until = await self.store.seconds_until_due()
            if until is not None:
                # A little after the next due time, so one claim takes the retries that
                # fall due close together (a retry is never early, at most this late).
                wait = min(wait, until + RETRY_COALESCE_SECONDS) if until > 0 else 0.0
        if wait > 0:
            self.signals.deliverer_sleeps_until = time.monotonic() + wait
            try:
                await wait_for_event(self.wake, wait)
            finally:
                self.signals.deliverer_sleeps_until = None
