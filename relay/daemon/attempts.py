"""The deliveries one relay holds: leased jobs waiting for a request slot, and the HTTP attempts
running for them.

Both statements that lease jobs to this relay (the dispatcher's fan-out and the deliverer's
claim) go through :class:`Attempts`: they ask how many jobs one statement may lease now
(:meth:`Attempts.lease_room`, :meth:`Attempts.claim_room`), reserve that room while the
statement runs (:meth:`Attempts.reserving`) and hand it what came back (:meth:`Attempts.start`).
It starts one task per attempt as request slots free (:class:`~relay.daemon.slots.Slots` keeps
the counts), passes each outcome to the acker, and gives back, due now for any relay, what it
cannot send safely: a ready job whose lease ran short, and whatever is left at shutdown. What
it has to tell the other loops (a slot freed, rows given back) goes through
:class:`~relay.daemon.signals.Signals`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Protocol

from relay.config import Config
from relay.daemon.signals import Signals
from relay.daemon.slots import Slots, lease_length
from relay.daemon.store import Ack, Job, Store
from relay.errors import DatabaseError
from relay.metrics import Metrics, status_class
from relay.webhook.sender import Result, decide

log = logging.getLogger("relay.daemon")

# How long a statement waits for freed slots to lease several rows at once (a gap this long
# without a freed slot ends the wait).
CLAIM_GATHER_SECONDS = 0.005

# A graceful stop lets each request in flight run out its own timeout (the sender ends it
# then): this margin covers recording the outcome. Only a request still running after it
# (which the sender's own timeout should make impossible) is cancelled and released.
DRAIN_MARGIN_SECONDS = 2.0


class Sender(Protocol):
    """What :class:`Attempts` needs of the HTTP side (:class:`relay.webhook.sender.HttpSender`)."""

    async def attempt(self, job: Job) -> Result:
        """Send one attempt of ``job``; never raises for a receiver's failure."""
        ...


class Attempts:
    """The jobs this relay holds, and the tasks that send them.

    ``on_outcome(job, ack)`` receives each attempt's outcome (the acker's ``put``).
    """

    def __init__(
        self,
        config: Config,
        store: Store,
        sender: Sender,
        metrics: Metrics,
        signals: Signals,
        *,
        on_outcome: Callable[[Job, Ack], None],
    ) -> None:
        self.config = config
        self.store = store
        self.sender = sender
        self.metrics = metrics
        self.signals = signals
        self.stopping = signals.stopping
        self.on_outcome = on_outcome
        self.slots = Slots(
            config.concurrency,
            config.effective_subscription_concurrency,
            config.effective_prefetch,
        )
        self.in_flight: dict[asyncio.Task[None], Job] = {}
        # When each request in flight must have ended (its start + its own timeout + margin,
        # monotonic): how long a graceful stop waits for it.
        self.deadlines: dict[asyncio.Task[None], float] = {}
        self.releasing: set[asyncio.Task[None]] = set()  # background releases of lapsing jobs
        self.reserved = 0  # slots promised to a statement in progress
        # Enabled subscriptions (refreshed with the gauges); until known, assume many.
        self.subscriptions_active = 1 << 30
        self.loop: asyncio.AbstractEventLoop | None = None  # the running loop, once known
        # Read when scraped rather than set on every start and finish of an attempt (two
        # locked Gauge.set() calls per delivery: about 0.7 us, timeit).
        metrics.in_flight.set_function(lambda: self.slots.running)
        metrics.ready.set_function(lambda: self.slots.ready)

    def subscriptions_changed(self, active: int) -> None:
        """The number of enabled subscriptions (read with the gauges)."""
        self.subscriptions_active = active

    # -- room ----------------------------------------------------------------------------------
    def free_slots(self) -> int:
        """Deliveries this relay may still lease: request slots plus prefetch, less those
        held (in flight or ready) and those promised to a statement in progress."""
        return self.slots.hold_limit - self.slots.held - self.reserved

    def _room(self, *, skip_saturated: bool) -> int:
        """Deliveries one statement may lease now: bounded by the free slots, the claim batch
        and the room the busiest subscription has left under its cap, so a lease never has to
        be given back for exceeding a cap. Reserved slots (a statement in progress) count
        against that room: they may all be the busiest subscription's.

        A claim skips saturated subscriptions (``skip_saturated``), so only the others bound
        it; a dispatch cannot know which subscriptions the next events match, so all do.
        """
        room = min(self.free_slots(), self.config.claim_batch)
        if self.slots.capped:
            busiest = self.slots.busiest(skip_saturated=skip_saturated)
            room = min(room, self.slots.subscription_hold_limit - busiest - self.reserved)
        return max(0, room)

    def lease_room(self) -> int:
        """Room for a dispatch (which may match any subscription)."""
        return self._room(skip_saturated=False)

    def claim_room(self) -> int:
        """Room for a claim (which skips the saturated subscriptions)."""
        return self._room(skip_saturated=True)

    def low_water(self) -> int:
        """Free slots worth a statement while a backlog waits."""
        cap = min(self.config.claim_batch, self.slots.subscription_hold_limit)
        return max(1, cap // 4)

    async def gather(self, room: Callable[[], int]) -> int:
        """Wait for freed slots until ``room()`` reaches :meth:`low_water` (bounded: a gap of
        CLAIM_GATHER_SECONDS without a freed slot ends it), and return ``room()``.

        One statement per finished request would be wasteful: the index scan of a claim
        costs about the same for 1 row as for 20.
        """
        while not self.stopping.is_set() and room() < self.low_water():
            if not await self.wait_for_slot(CLAIM_GATHER_SECONDS):
                break
        return room()  # the other statement may have changed it meanwhile

    async def wait_for_slot(self, timeout: float | None) -> bool:
        """Wait until a slot frees or reserved room comes back (at most ``timeout`` s, if
        given); whether one did."""
        return await self.signals.wait_slot(timeout)

    @contextlib.contextmanager
    def reserving(self, n: int) -> Iterator[None]:
        """Promise ``n`` slots to a statement until its jobs are held: a statement in between
        must not see them (or the same subscription's room) as free."""
        self.reserved += n
        try:
            yield
        finally:
            self.reserved -= n
            self.signals.slot_freed()

    def saturated(self) -> list[int]:
        """Subscriptions holding all they may: a claim must skip them."""
        return self.slots.saturated()

    def others_may_match(self) -> bool:
        """Whether the lack of room is a saturated subscription's while others exist (if only
        saturated ones exist, fanning out more events now would only queue deliveries nobody
        can start; if none is saturated, the room is promised to a statement in progress)."""
        saturated = self.slots.saturated()
        return 0 < len(saturated) < self.subscriptions_active

    def was_saturated(self, subscription_id: int) -> bool:
        """Whether the subscription held all it may before one of its attempts finished."""
        if not self.slots.capped:
            return False
        return self.slots.held_by(subscription_id) + 1 >= self.slots.subscription_hold_limit

    # -- starting ------------------------------------------------------------------------------
    async def start(self, jobs: list[Job], leased_at: float) -> None:
        """Hold newly leased jobs (leased by a statement sent at ``leased_at``, monotonic),
        and start those that have a slot."""
        lease = self.config.lease_seconds
        deadlines = [leased_at + lease_length(lease, job.timeout_ms) for job in jobs]
        # Admitted first, so the counts are right while the release below awaits.
        overflow = self.slots.admit(jobs, deadlines)
        self.start_ready()
        if overflow:
            # One claim can overshoot a subscription's cap; give the excess straight back
            # (due now, for any relay) rather than let it queue behind a slow endpoint.
            await self.store.release([(j.id, j.token) for j in overflow])
            self.signals.deliveries_due()

    def start_ready(self) -> None:
        """Start an attempt task for each ready job that has a slot (none once stopping:
        the ready ones are released instead)."""
        if self.stopping.is_set():
            return
        start, lapsing = self.slots.pop_startable(time.monotonic())
        loop = self.loop
        if loop is None:
            # Kept: asyncio.create_task() looks the loop up per call (on Python 3.11 with a
            # getpid() system call each time).
            loop = self.loop = asyncio.get_running_loop()
        now = time.monotonic()
        for job in start:
            task = loop.create_task(self._attempt(job), name=f"delivery-{job.id}")
            self.in_flight[task] = job
            self.deadlines[task] = now + job.timeout_ms / 1000.0 + DRAIN_MARGIN_SECONDS
            task.add_done_callback(self._attempt_done)
        if lapsing:
            self._release_in_background(lapsing, "ready (lease too short to start)")

    async def _attempt(self, job: Job) -> None:
        result = await self.sender.attempt(job)
        ack = decide(job, result)
        self.metrics.attempt_made(
            status_class(result.status_code, result.error_kind),
            job.subscription_id,
            result.ok,
            result.duration_ms / 1000.0,
        )
        self.on_outcome(job, ack)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        job = self.in_flight.pop(task, None)
        self.deadlines.pop(task, None)
        if job is not None:
            sub = job.subscription_id
            self.slots.finished(sub)
            self.signals.slot_freed(sub, was_saturated=self.was_saturated(sub))
        else:
            self.signals.slot_freed()
        self.start_ready()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task crashed", exc_info=task.exception())

    # -- giving back ---------------------------------------------------------------------------
    def release_expired(self, now: float) -> None:
        """Give back ready jobs whose lease ran short while they waited for a slot (behind a
        slow endpoint): another relay, or this one later, may take them while they still can
        be sent safely."""
        lapsing = self.slots.expired(now)
        if lapsing:
            self._release_in_background(lapsing, "ready (lease ran short while waiting)")

    def _release_in_background(self, jobs: list[Job], why: str) -> None:
        """Give held jobs back without waiting for it here, then wake the loops."""

        async def release() -> None:
            await self._release(jobs, why)
            self.signals.slot_freed()
            self.signals.deliveries_due()

        task = asyncio.create_task(release(), name="release")
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)

    async def _release(self, jobs: list[Job], what: str) -> None:
        """Give leased jobs back: due now, for any relay (a failure leaves them to their
        lease's expiry, which is logged)."""
        try:
            released = await self.store.release([(j.id, j.token) for j in jobs])
            log.info("released %d %s deliveries for other relays", released, what)
        except DatabaseError as exc:
            log.warning(
                "could not release %d %s deliveries (lease will expire): %s", len(jobs), what, exc
            )

    async def drain(self) -> None:
        """Release the ready jobs at once; let each in-flight attempt finish within its own
        timeout (plus DRAIN_MARGIN_SECONDS), and at least until the drain timeout; cancel and
        release what is still running after that.

        Cutting a request short at a global drain timeout released work its receiver was
        about to accept: a subscription whose timeout is longer got a duplicate on every
        restart. A stop therefore takes at most the longest timeout among the requests in
        flight + the margin (or the drain timeout, if longer).
        """
        stopped_at = time.monotonic()
        ready = self.slots.take_ready()
        if ready:
            await self._release(ready, "ready")
        await asyncio.gather(*self.releasing, return_exceptions=True)
        if not self.in_flight:
            return
        floor = stopped_at + self.config.drain_timeout
        until = max([floor, *(self.deadlines.get(t, floor) for t in self.in_flight)])
        log.info(
            "waiting up to %.1fs for %d requests in flight to finish",
            max(0.0, until - time.monotonic()),
            len(self.in_flight),
        )
        still: set[asyncio.Task[None]] = set()
        for task in list(self.in_flight):
            if task.done():
                continue
            deadline = max(floor, self.deadlines.get(task, floor))
            _, pending = await asyncio.wait({task}, timeout=max(0.0, deadline - time.monotonic()))
            still |= pending
        if not still:
            return
        leftovers = [self.in_flight[t] for t in still]
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        await self._release(leftovers, "unfinished")
