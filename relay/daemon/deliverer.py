"""The deliverer: claims due deliveries (first tries left unleased by a dispatch, retries,
rows another relay gave back or lost) while this relay has free slots.

Claims skip the subscriptions this relay already holds at their cap, are sized to what is
known to be due (:mod:`relay.claimsize`), and when nothing more is due it sleeps until the next
retry falls due, a wake-up (NOTIFY ``relay_deliveries``, a release, a scheduled retry) or a
poll.
"""

from __future__ import annotations

import asyncio
import time

from relay.config import Config
from relay.daemon.attempts import Attempts, wait_for_event
from relay.daemon.claimsize import ClaimSizer
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
        stopping: asyncio.Event,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.attempts = attempts
        self.stopping = stopping
        self.claim_sizer = ClaimSizer()
        self.wake = asyncio.Event()
        self.new_work = True  # something may have become due since the last claim
        self.sleeps_until: float | None = None  # monotonic end of its timed sleep
        self.fruitless: frozenset[int] | None = None  # exclusions of a claim that found none

    # -- wake-ups ------------------------------------------------------------------------------
    def work_arrived(self) -> None:
        """Deliveries of unknown number may be due (NOTIFY, unleased fan-out, rows released):
        wake the deliverer, and let its next claim take the whole room."""
        self.claim_sizer.unknown_work()
        self._wake()

    def _wake(self) -> None:
        self.new_work = True
        self.wake.set()

    def retry_scheduled(self, delays: list[float]) -> None:
        """Retries fall due in ``delays`` s: count them for sizing claims, and wake the
        deliverer unless it already sleeps only until before the first (waking it for every
        failed attempt would cost a claim each)."""
        now = time.monotonic()
        self.claim_sizer.retries_scheduled(now, delays)
        until = self.sleeps_until
        if until is not None and until <= now + min(delays):
            return
        self._wake()  # the sizer knows these: no whole-room claim

    def attempt_finished(self, subscription_id: int) -> None:
        """An attempt ended and freed its slot."""
        if (
            self.fruitless is not None
            and subscription_id in self.fruitless
            and self.attempts.was_saturated(subscription_id)
        ):
            # The last claim skipped this subscription's due rows (and the next-due time
            # ignored them): now that it has room, look again.
            self.wake.set()

    # -- claiming ------------------------------------------------------------------------------
    async def step(self) -> None:
        """One claim statement, or one wait for room or for due work."""
        attempts = self.attempts
        if attempts.free_slots() <= 0:
            await attempts.wait_for_slot(None)
            return
        saturated = attempts.slots.saturated()
        exclusions = frozenset(saturated)
        if exclusions and exclusions == self.fruitless and not self.new_work:
            # The last claim that skipped these saturated subscriptions found nothing else
            # due; running it again would walk their whole backlog for nothing. Wait for new
            # work, or for one of them to free a slot (the exclusions then change).
            self.wake.clear()
            await wait_for_event(self.wake, self.config.poll_interval)
            if not self.wake.is_set():
                self.fruitless = None  # a poll: look once more
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
        target = self.claim_sizer.target(
            time.monotonic(), self.config.claim_batch, attempts.low_water()
        )
        want = min(room, target)
        if want < attempts.low_water():
            # Work is waiting: gather a few freed slots before the next claim (bounded by
            # short gaps, so latency stays low).
            want = min(await attempts.gather(attempts.claim_room), target)
            if want <= 0:
                return
            saturated = attempts.slots.saturated()
            exclusions = frozenset(saturated)
        claimed = await self._claim(want, saturated, exclusions)
        if claimed < want:
            await self._sleep_until_due(exclusions)

    async def _claim(self, want: int, saturated: list[int], exclusions: frozenset[int]) -> int:
        """Claim up to ``want`` due deliveries (skipping ``saturated``), start them, and
        return how many came back."""
        self.wake.clear()
        self.new_work = False
        # Marked before the statement: an excluded subscription's slot that frees while the
        # claim runs must wake the deliverer again (see attempt_finished).
        self.fruitless = exclusions or None
        # Reserved until the jobs are held, like a dispatch's leases: the dispatcher must not
        # hand the same slots (or the same subscription's room) out meanwhile.
        with self.attempts.reserving(want):
            leased_at = time.monotonic()
            jobs = await self.store.claim(want, self.config.lease_seconds, saturated)
            self.fruitless = exclusions if exclusions and len(jobs) < want else None
            self.metrics.db_up.labels("pool").set(1)
            self.metrics.claims.labels("delivery").inc()
            if jobs:
                self.metrics.claimed.labels("delivery").inc(len(jobs))
            claimed = len(jobs)
            self.claim_sizer.claimed(want, claimed)
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
            self.sleeps_until = time.monotonic() + wait
            try:
                await wait_for_event(self.wake, wait)
            finally:
                self.sleeps_until = None
