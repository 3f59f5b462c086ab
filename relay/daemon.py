"""``relay run``: the daemon's loops, wired together.

Tasks (all in one asyncio loop):
- :class:`~relay.listener.Listener`: LISTEN for wake-ups, reconnecting with backoff;
- dispatcher: fans undispatched outbox rows out into deliveries;
- deliverer: claims due deliveries while it has free slots, one task per HTTP attempt;
- :class:`Acker`: writes attempt outcomes in batches (one statement per batch);
- housekeeping: heartbeat, shared gauges, systemd watchdog;
- the HTTP server for /metrics, /healthz and /readyz.

Every DB failure in a loop is logged, reported on /readyz and retried with backoff: a
database outage never crashes the service into a restart loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from relay.acker import Acker, Backoff
from relay.claimsize import ClaimSizer
from relay.config import Config
from relay.deliver import HttpSender, decide
from relay.errors import ConfigError, DatabaseError
from relay.health import Health
from relay.listener import Listener
from relay.metrics import Metrics, status_class
from relay.netpolicy import parse_allowed_networks
from relay.queries import expected_schema_version
from relay.slots import Slots, lease_length
from relay.store import Job, Store
from relay.systemd import SystemdNotifier, watchdog_interval

log = logging.getLogger("relay.daemon")

# Tunables (module constants so tests can shrink them).
SCHEMA_WAIT_INTERVAL = 2.0
# Queue-table vacuum fallback: how often to look, and how many dead rows are worth a VACUUM.
VACUUM_CHECK_SECONDS = 30.0
VACUUM_MIN_DEAD = 50_000
VACUUM_MIN_INTERVAL = 60.0
# How long the deliverer waits for freed slots to claim several rows in one statement.
CLAIM_GATHER_SECONDS = 0.005
# Weight of the latest dispatch in the deliveries-per-event estimate that sizes fan-outs.
FANOUT_SMOOTHING = 0.3
# How late the deliverer may wake for a retry, so retries falling due together share a claim.
RETRY_COALESCE_SECONDS = 0.05
# Python's cycle collector: young-generation threshold and the two older ones (see _tune_gc).
GC_THRESHOLD = (10_000, 10, 10)


class Relay:
    """One relay process."""

    def __init__(self, config: Config, url: str, metrics: Metrics | None = None) -> None:
        self.config = config
        self.relay_id = config.effective_relay_id
        self.metrics = metrics or Metrics()
        self.store = Store(url, pool_size=config.pool_size, relay_id=self.relay_id)
        self.sender = HttpSender(
            config.concurrency, parse_allowed_networks(config.allowed_networks)
        )
        self.acker = Acker(self.store, self.metrics, on_retry=self._retry_scheduled)
        self.claim_sizer = ClaimSizer()
        self.listener = Listener(url, self._on_notify) if config.listen else None
        self.health = Health(self)
        self.notifier = SystemdNotifier()
        self.stopping = asyncio.Event()
        self.outbox_wake = asyncio.Event()
        self.deliver_wake = asyncio.Event()
        self.slot_free = asyncio.Event()
        self.slots = Slots(
            config.concurrency,
            config.effective_subscription_concurrency,
            config.effective_prefetch,
        )
        self.in_flight: dict[asyncio.Task[None], Job] = {}
        self.releasing: set[asyncio.Task[None]] = set()  # background releases of lapsing jobs
        self.loop: asyncio.AbstractEventLoop | None = None  # the running loop, once known
        self.reserved = 0  # slots promised to a dispatch in progress
        self.outbox_backlog = False  # the last dispatch was full: more events are waiting
        self.fanout_estimate = 1.0  # deliveries per dispatched event, recently
        # Enabled subscriptions (refreshed with the gauges); until known, assume many.
        self.subscriptions_active = 1 << 30
        self.new_work = True  # something may have become due since the last claim
        self.deliver_sleeps_until: float | None = None  # monotonic end of its timed sleep
        self.fruitless: frozenset[int] | None = None  # exclusions of a claim that found none
        self.last_vacuum_check = time.monotonic()
        self.schema_ok = False
        self.last_loop_tick = time.monotonic()

    # -- wake-ups ------------------------------------------------------------------------------
    def deliver_wake_set(self) -> None:
        """Deliveries of unknown number may be due (NOTIFY, unleased fan-out, rows released):
        wake the deliverer, and let its next claim take the whole room."""
        self.claim_sizer.unknown_work()
        self._wake_deliverer()

    def _wake_deliverer(self) -> None:
        self.new_work = True
        self.deliver_wake.set()

    def _retry_scheduled(self, delays: list[float]) -> None:
        """Retries fall due in ``delays`` s: count them for sizing claims, and wake the
        deliverer unless it already sleeps only until before the first (waking it for every
        failed attempt would cost a claim each)."""
        now = time.monotonic()
        self.claim_sizer.retries_scheduled(now, delays)
        until = self.deliver_sleeps_until
        if until is not None and until <= now + min(delays):
            return
        self._wake_deliverer()  # the sizer knows these: no whole-room claim

    def _on_notify(self, channel: str) -> None:
        if channel == "relay_outbox":
            self.outbox_wake.set()
        else:
            self.deliver_wake_set()

    def _toggle_debug(self) -> None:
        from relay.logs import toggle_debug

        log.warning("log level now %s (SIGHUP)", toggle_debug(self.config.log_level))

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: no new claims; draining in-flight deliveries")
            self.notifier.stopping()
            self.stopping.set()
            self.outbox_wake.set()
            self.deliver_wake.set()
            self.slot_free.set()

    async def _sleep_or_wake(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    async def _guarded(
        self, name: str, step: Callable[[], Awaitable[float | None]], *, cancellable: bool = True
    ) -> None:
        """Run ``step`` until stopping, backing off on errors.

        A cancellable step is abandoned as soon as a stop comes (no waiting out a database
        timeout). The deliverer's is not: cancelling a claim whose statement had committed
        would strand its rows until their lease expires.
        """
        backoff = Backoff()
        while not self.stopping.is_set():
            try:
                if cancellable:
                    await self._until_stopped(step())
                else:
                    await step()
                backoff.reset()
            except DatabaseError as exc:
                delay = backoff.failed()
                log.warning("%s: database error, retrying in %.1fs: %s", name, delay, exc)
                self.metrics.db_up.labels("pool").set(0)
                await self._sleep_or_wake(self.stopping, delay)
            except Exception:
                # A bug must not silently stop a loop: log it loudly and keep going.
                delay = backoff.failed()
                log.exception("%s: unexpected error, retrying in %.1fs", name, delay)
                await self._sleep_or_wake(self.stopping, delay)

    # -- dispatcher ----------------------------------------------------------------------------
    async def _dispatch_step(self) -> float | None:
        self.outbox_wake.clear()  # before the query: a NOTIFY during it is not lost
        room = await self._gather_room() if self.outbox_backlog else self._lease_room()
        if room > 0:
            # Fan out only as many events as this relay can start now, and lease their
            # deliveries to itself in the same statement: a backlog then waits in the outbox
            # and each delivery is written twice (inserted leased, acked), not three times.
            # An event matching several subscriptions takes several slots: size the batch by
            # the recent fan-out so its deliveries are leased too, not left to a claim.
            events = max(1, math.ceil(room / self.fanout_estimate))
            limit, lease = min(events, self.config.dispatch_batch), room
        elif self._free_slots() > 0 and self._others_may_match():
            # A subscription is at its cap, but the next events may be for others: fan out a
            # full batch unleased; the deliverer claims around the saturated subscriptions.
            limit, lease = self.config.dispatch_batch, 0
        else:
            self.slot_free.clear()
            await self._sleep_or_wake(self.slot_free, self.config.poll_interval)
            return None
        self.reserved += lease
        leased_at = time.monotonic()
        try:
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
                # Still reserved until the jobs are in in_flight: a claim in between must
                # not see the slots as free.
                await self._start(jobs, leased_at)
        finally:
            self.reserved -= lease
            self.slot_free.set()
        if created > len(jobs):
            self.deliver_wake_set()
        self.outbox_backlog = dispatched == limit
        if not self.outbox_backlog:
            await self._sleep_or_wake(self.outbox_wake, self.config.poll_interval)
        return None

    def _room(self, *, skip_saturated: bool) -> int:
        """Deliveries one statement may lease now: bounded by the free slots, the claim batch
        and the room the busiest subscription has left under its cap, so a lease never has to
        be given back for exceeding a cap. Reserved slots (a statement in progress) count
        against that room: they may all be the busiest subscription's.

        A claim skips saturated subscriptions (``skip_saturated``), so only the others bound
        it; a dispatch cannot know which subscriptions the next events match, so all do.
        """
        room = min(self._free_slots(), self.config.claim_batch)
        if self.slots.capped:
            busiest = self.slots.busiest(skip_saturated=skip_saturated)
            room = min(room, self.slots.subscription_hold_limit - busiest - self.reserved)
        return max(0, room)

    def _lease_room(self) -> int:
        return self._room(skip_saturated=False)

    def _claim_room(self) -> int:
        return self._room(skip_saturated=True)

    async def _gather_room(self) -> int:
        """Wait for freed slots until one statement can lease a few (bounded: a gap of
        CLAIM_GATHER_SECONDS without a freed slot ends it), and return the room."""
        room = self._lease_room()
        while room < self._claim_low_water() and not self.stopping.is_set():
            if not await self._gather_slots():
                break
            room = self._lease_room()
        return self._lease_room()  # the deliverer may have changed it meanwhile

    async def _gather_slots(self) -> bool:
        """Wait briefly for a slot to free; whether one did."""
        self.slot_free.clear()
        try:
            await asyncio.wait_for(self.slot_free.wait(), CLAIM_GATHER_SECONDS)
        except TimeoutError:
            return False
        return True

    def _others_may_match(self) -> bool:
        """Whether the lack of room is a saturated subscription's while others exist (if only
        saturated ones exist, fanning out more events now would only queue deliveries nobody
        can start; if none is saturated, the room is promised to a claim in progress)."""
        saturated = self.slots.saturated()
        return 0 < len(saturated) < self.subscriptions_active

    def _free_slots(self) -> int:
        """Deliveries this relay may still lease: request slots plus prefetch, less those
        held (in flight or ready) and those promised to a statement in progress."""
        return self.slots.hold_limit - self.slots.held - self.reserved

    async def _start(self, jobs: list[Job], leased_at: float) -> None:
        """Hold newly leased jobs (leased by a statement sent at ``leased_at``, monotonic),
        and start those that have a slot."""
        lease = self.config.lease_seconds
        deadlines = [leased_at + lease_length(lease, job.timeout_ms) for job in jobs]
        # Admitted first, so the counts are right while the release below awaits.
        overflow = self.slots.admit(jobs, deadlines)
        self._start_ready()
        if overflow:
            # One claim can overshoot a subscription's cap; give the excess straight back
            # (due now, for any relay) rather than let it queue behind a slow endpoint.
            await self.store.release([(j.id, j.token) for j in overflow])
            self.deliver_wake_set()

    # -- deliverer -----------------------------------------------------------------------------
    async def _deliver_step(self) -> float | None:
        free = self._free_slots()
        if free <= 0:
            self.slot_free.clear()
            await self.slot_free.wait()
            return None
        saturated = self.slots.saturated()
        exclusions = frozenset(saturated)
        if exclusions and exclusions == self.fruitless and not self.new_work:
            # The last claim that skipped these saturated subscriptions found nothing else
            # due; running it again would walk their whole backlog for nothing. Wait for new
            # work, or for one of them to free a slot (the exclusions then change).
            self.deliver_wake.clear()
            await self._sleep_or_wake(self.deliver_wake, self.config.poll_interval)
            if not self.deliver_wake.is_set():
                self.fruitless = None  # a poll: look once more
                self.claim_sizer.unknown_work()
            return None
        room = self._claim_room()
        if room <= 0 or (saturated and len(saturated) >= self.subscriptions_active):
            # Slots promised to a statement in progress may all go to one subscription; or
            # every subscription is at its cap, and a claim skipping them all finds nothing.
            self.slot_free.clear()
            await self._sleep_or_wake(self.slot_free, self.config.poll_interval)
            return None
        # Reserve what is known to be due, not the whole room: the dispatcher needs the rest
        # while the claim runs (relay/claimsize.py).
        target = self.claim_sizer.target(
            time.monotonic(), self.config.claim_batch, self._claim_low_water()
        )
        want = min(room, target)
        if want < self._claim_low_water():
            # Work is waiting: gather a few freed slots before the next claim instead of
            # paying one claim statement per finished request (the index scan of a claim
            # costs about the same for 1 row as for 20). Bounded by 5 ms gaps, so latency
            # stays low.
            while (
                not self.stopping.is_set()
                and self._claim_room() < self._claim_low_water()
                and await self._gather_slots()
            ):
                pass
            want = min(self._claim_room(), target)
            if want <= 0:
                return None
            saturated = self.slots.saturated()
            exclusions = frozenset(saturated)
        claimed = await self._claim(want, saturated, exclusions)
        if claimed < want:
            await self._sleep_until_due(exclusions)
        return None

    async def _claim(self, want: int, saturated: list[int], exclusions: frozenset[int]) -> int:
        """Claim up to ``want`` due deliveries (skipping ``saturated``), start them, and
        return how many came back."""
        self.deliver_wake.clear()
        self.new_work = False
        # Marked before the statement: an excluded subscription's slot that frees while the
        # claim runs must wake the deliverer again (see _attempt_done).
        self.fruitless = exclusions or None
        # Reserved until the jobs are in in_flight, like a dispatch's leases: the dispatcher
        # must not hand the same slots (or the same subscription's room) out meanwhile.
        self.reserved += want
        try:
            leased_at = time.monotonic()
            jobs = await self.store.claim(want, self.config.lease_seconds, saturated)
            self.fruitless = exclusions if exclusions and len(jobs) < want else None
            self.metrics.db_up.labels("pool").set(1)
            self.metrics.claims.labels("delivery").inc()
            if jobs:
                self.metrics.claimed.labels("delivery").inc(len(jobs))
            claimed = len(jobs)
            self.claim_sizer.claimed(want, claimed)
            await self._start(jobs, leased_at)
        finally:
            self.reserved -= want
            self.slot_free.set()
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
            self.deliver_sleeps_until = time.monotonic() + wait
            try:
                await self._sleep_or_wake(self.deliver_wake, wait)
            finally:
                self.deliver_sleeps_until = None

    def _claim_low_water(self) -> int:
        """Free slots worth a claim statement while a backlog waits."""
        cap = min(self.config.claim_batch, self.slots.subscription_hold_limit)
        return max(1, cap // 4)

    def _was_saturated(self, subscription_id: int) -> bool:
        """Whether the subscription held all it may before one of its attempts finished."""
        if not self.slots.capped:
            return False
        return self.slots.held_by(subscription_id) + 1 >= self.slots.subscription_hold_limit

    def _start_ready(self) -> None:
        """Start an attempt task for each ready job that has a slot (none once stopping:
        the ready ones are released instead)."""
        if self.stopping.is_set():
            self.metrics.in_flight.set(self.slots.running)
            return
        start, lapsing = self.slots.pop_startable(time.monotonic())
        loop = self.loop
        if loop is None:
            # Kept: asyncio.create_task() looks the loop up per call (on Python 3.11 with a
            # getpid() system call each time).
            loop = self.loop = asyncio.get_running_loop()
        for job in start:
            task = loop.create_task(self._attempt(job), name=f"delivery-{job.id}")
            self.in_flight[task] = job
            task.add_done_callback(self._attempt_done)
        self.metrics.in_flight.set(self.slots.running)
        self.metrics.ready.set(self.slots.ready)
        if lapsing:
            self._release_in_background(lapsing, "ready (lease too short to start)")

    def _release_in_background(self, jobs: list[Job], why: str) -> None:
        """Give held jobs back without waiting for it here, then wake the loops."""

        async def release() -> None:
            await self._release(jobs, why)
            self.slot_free.set()
            self.deliver_wake_set()

        task = asyncio.create_task(release(), name="release")
        self.releasing.add(task)
        task.add_done_callback(self.releasing.discard)
        self.metrics.ready.set(self.slots.ready)

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

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        job = self.in_flight.pop(task, None)
        if job is not None:
            self.slots.finished(job.subscription_id)
            if (
                self.fruitless is not None
                and job.subscription_id in self.fruitless
                and self._was_saturated(job.subscription_id)
            ):
                # The last claim skipped this subscription's due rows (and the next-due time
                # ignored them): now that it has room, look again.
                self.deliver_wake.set()
        self._start_ready()
        self.slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("delivery task crashed", exc_info=task.exception())

    async def _attempt(self, job: Job) -> None:
        result = await self.sender.attempt(job)
        ack = decide(job, result)
        self.metrics.attempt_made(
            status_class(result.status_code, result.error_kind),
            job.subscription_id,
            result.ok,
            result.duration_ms / 1000.0,
        )
        self.acker.put(job, ack)

    # -- housekeeping --------------------------------------------------------------------------
    async def _refresh_gauges(self) -> None:
        await self.store.heartbeat()
        stats = await self.store.stats(self.config.gauge_interval)
        m = self.metrics
        m.outbox_backlog.set(stats.outbox_backlog)
        m.pending.set(stats.deliveries_pending)
        m.dead.set(stats.deliveries_dead)
        m.oldest_pending_age.set(stats.oldest_pending_age)
        m.relays_seen.set(stats.relays_seen)
        self.subscriptions_active = stats.subscriptions_active
        m.db_up.labels("pool").set(1)

    async def _housekeeping_step(self) -> float | None:
        self.last_loop_tick = time.monotonic()
        await self._refresh_gauges()
        now = time.monotonic()
        lapsing = self.slots.expired(now)
        if lapsing:
            # Ready jobs behind a slow endpoint whose lease ran short: another relay (or this
            # one, later) may take them while they still can be sent safely.
            self._release_in_background(lapsing, "ready (lease ran short while waiting)")
        if self.config.vacuum and now - self.last_vacuum_check >= VACUUM_CHECK_SECONDS:
            self.last_vacuum_check = now
            vacuumed = await self.store.vacuum_if_needed(VACUUM_MIN_DEAD, VACUUM_MIN_INTERVAL)
            if vacuumed:
                log.info("vacuumed %s (dead rows piled up)", ", ".join(vacuumed))
        await self._sleep_or_wake(self.stopping, self.config.gauge_interval)
        return None

    async def _watchdog(self, interval: float) -> None:
        while not self.stopping.is_set():
            if self.health.alive():
                self.notifier.watchdog()
            await self._sleep_or_wake(self.stopping, interval)

    async def _ticker(self) -> None:
        # Proves the event loop itself is not blocked (for /healthz).
        while not self.stopping.is_set():
            self.last_loop_tick = time.monotonic()
            if self.listener is not None:
                self.metrics.db_up.labels("listener").set(1 if self.listener.connected else 0)
            await self._sleep_or_wake(self.stopping, 1.0)

    async def _wait_for_schema(self) -> None:
        expected = expected_schema_version()
        backoff = Backoff(SCHEMA_WAIT_INTERVAL, 30.0)
        while not self.stopping.is_set():
            try:
                version = await self.store.schema_version()
                self.metrics.db_up.labels("pool").set(1)
                if version == expected:
                    self.schema_ok = True
                    return
                log.error(
                    "database schema is at version %s, relay needs %s: run `relay migrate`",
                    version,
                    expected,
                )
            except DatabaseError as exc:
                self.metrics.db_up.labels("pool").set(0)
                log.warning("database not reachable yet: %s", exc)
            await self._sleep_or_wake(self.stopping, backoff.failed())

    # -- lifecycle -----------------------------------------------------------------------------
    async def run(self, *, install_signals: bool = True) -> int:
        """Run until :meth:`stop` (SIGTERM/SIGINT), then drain; returns the exit code."""
        if install_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop)
            # SIGHUP (systemctl reload): toggle debug logging without dropping any state.
            loop.add_signal_handler(signal.SIGHUP, self._toggle_debug)
        # The endpoint first: a taken port is a configuration error, reported before anything
        # else starts (and nothing is left running to hang the exit).
        try:
            await self.health.start()
        except OSError as exc:
            raise ConfigError(
                f"RELAY_METRICS_ADDR (metrics_addr): cannot listen on "
                f"{self.config.metrics_addr}: {exc.strerror or exc}"
            ) from None
        try:
            await self.store.open()
            await self.sender.start()
            return await self._serve()
        finally:
            await self.health.stop()
            await self.sender.close()
            await self.store.close()
            log.info("relay %s stopped", self.relay_id)

    async def _serve(self) -> int:
        background = [asyncio.create_task(self._ticker(), name="ticker")]
        interval = watchdog_interval()
        if interval:
            background.append(asyncio.create_task(self._watchdog(interval), name="watchdog"))
        log.info(
            "relay %s starting",
            self.relay_id,
            extra={"metrics_addr": self.config.metrics_addr, "config": self.config.masked()},
        )
        await self._until_stopped(self._wait_for_schema())
        with contextlib.suppress(DatabaseError):
            # Before the dispatcher's first step, which needs the subscription count.
            await self._until_stopped(self._refresh_gauges())
        acker = asyncio.create_task(self.acker.run(), name="acker")
        workers = [
            # not cancellable: a dispatch leases rows to this relay (see _guarded)
            asyncio.create_task(
                self._guarded("dispatcher", self._dispatch_step, cancellable=False)
            ),
            asyncio.create_task(self._guarded("deliverer", self._deliver_step, cancellable=False)),
            asyncio.create_task(self._guarded("housekeeping", self._housekeeping_step)),
        ]
        if self.listener is not None:
            background.append(asyncio.create_task(self.listener.run(self.stopping)))
        if not self.stopping.is_set():
            self.notifier.ready()
            log.info("relay %s ready", self.relay_id)
        await self.stopping.wait()
        await asyncio.gather(*workers, return_exceptions=True)
        await self._drain()
        await self.acker.close(self.config.drain_timeout)
        acker.cancel()
        for task in background:
            task.cancel()
        await asyncio.gather(acker, *background, return_exceptions=True)
        with contextlib.suppress(DatabaseError, TimeoutError):
            await asyncio.wait_for(self.store.deregister(), 2.0)
        return 0

    async def _until_stopped(self, step: Awaitable[object]) -> None:
        """Await ``step`` unless a stop comes first (then cancel it: no waiting out a dead DB)."""
        task = asyncio.ensure_future(step)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _drain(self) -> None:
        """Release the ready jobs at once; let in-flight attempts finish within the drain
        timeout; release the rest."""
        ready = self.slots.take_ready()
        self.metrics.ready.set(0)
        if ready:
            await self._release(ready, "ready")
        await asyncio.gather(*self.releasing, return_exceptions=True)
        if not self.in_flight:
            return
        _, still = await asyncio.wait(list(self.in_flight), timeout=self.config.drain_timeout)
        if not still:
            return
        leftovers = [self.in_flight[t] for t in still]
        for task in still:
            task.cancel()
        await asyncio.gather(*still, return_exceptions=True)
        await self._release(leftovers, "unfinished")


def main(config: Config) -> int:
    """Entry point of ``relay run``: resolve the database, set up logging, run until a signal."""
    from relay.embedded import resolve_database_url
    from relay.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    url = resolve_database_url(config.database_url, config.state_dir)
    if config.database_url is None:
        # Nobody else migrates an embedded database: do it here.
        import psycopg

        from relay.migrate import migrate

        with psycopg.connect(url) as conn:
            migrate(conn)
    relay = Relay(config, url)
    _tune_gc()
    try:
        return _run_loop(relay.run())
    except KeyboardInterrupt:
        return 0


def _tune_gc() -> None:
    """Keep Python's cycle collector off the request path.

    Each request briefly holds a few dozen container objects (aiohttp's request/response,
    the task, the job's dicts), so at the default threshold (700 more allocations than
    frees) the collector ran every ~14 deliveries and a full collection walked every object
    the process had imported: 11 % of relay's CPU in a 20,000-event drain. Objects that live
    for the whole run are moved out of its reach (``gc.freeze``), and a young collection
    waits for GC_THRESHOLD more live objects: garbage cycles (rare here) are still
    collected once that many build up.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (less CPU per request), else plain asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(coro)
    return uvloop.run(coro)
