"""The acker: writes attempt outcomes in batches, one statement per batch."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time

from relay.daemon.backoff import Backoff
from relay.daemon.signals import Signals
from relay.daemon.store import Ack, Job, Store
from relay.daemon.summary import DeliveredSummary
from relay.errors import DatabaseError
from relay.metrics import Metrics
from relay.webhook.sender import attempt_summary, storable_text

# The daemon's logger: ack outcomes are part of its one-line-per-outcome log.
log = logging.getLogger("relay.daemon")

# Tunables (module constants so tests can shrink them).
ACK_BATCH_MAX = 500
# Under load, let outcomes gather this long before an ack statement (a lone outcome is written
# at once): a bigger ack statement costs Postgres less per row (docs/performance.md).
ACK_GATHER_SECONDS = 0.005
ACK_GATHER_ROWS = 64
# Failed ack rounds in a row after which the failure is an alert: one error-level log line,
# relay_ack_failing = 1 and /readyz not ready (a short database blip stays a warning).
ACK_ALERT_AFTER = 3


def _transient(exc: BaseException) -> bool:
    """Whether a failed ack is worth retrying as it is (the database was unreachable), or the
    database refused what the statement carried (retrying the same batch would never end)."""
    return isinstance(exc, DatabaseError) and exc.transient


class Acker:
    """Collects attempt outcomes and writes them in batches.

    Under load many outcomes share one ack statement (a few that arrive together wait up to
    ACK_GATHER_SECONDS for more); when idle, an outcome is written as soon as it arrives. A
    failed write is retried: the lease may expire meanwhile, and then the delivery is simply
    attempted again (at-least-once).
    """

    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        signals: Signals | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        # Told the delays of the retries just scheduled (accepted ones), so the deliverer
        # re-reads the next due time if it would otherwise sleep past them, and sizes its
        # claims by what falls due.
        self.signals = signals if signals is not None else Signals()
        self.summary = DeliveredSummary(time.monotonic())
        self._pending: list[tuple[Job, Ack]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.failures = 0  # failed ack rounds in a row
        self.last_error: str | None = None

    def put(self, job: Job, ack: Ack) -> None:
        self._pending.append((job, ack))
        self._idle.clear()
        self._wake.set()

    @property
    def failing(self) -> bool:
        """Whether outcomes have failed to be recorded ACK_ALERT_AFTER rounds in a row."""
        return self.failures >= ACK_ALERT_AFTER

    async def run(self) -> None:
        backoff = Backoff()
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if 1 < len(self._pending) < ACK_GATHER_ROWS and not self._closing:
                await asyncio.sleep(ACK_GATHER_SECONDS)
            batch = self._pending[:ACK_BATCH_MAX]
            done, accepted, left, error = await self._write(batch)
            # What could not be written goes back in front (oldest first) and is retried;
            # if a lease expires meanwhile the delivery is attempted again (at-least-once).
            self._pending[: len(batch)] = left
            if done:
                self._record(done, accepted)
                delays = [
                    ack.delay for job, ack in done if ack.outcome == "retry" and job.id in accepted
                ]
                if delays:
                    self.signals.retries_scheduled(delays)
            if error is None:
                if self.failing:
                    log.warning("acks are recorded again after %d failed rounds", self.failures)
                self.failures = 0
                self.last_error = None
                self.metrics.ack_failing.set(0)
                backoff.reset()
                if done:
                    self.metrics.db_up.labels("pool").set(1)
                continue
            self.failures += 1
            self.last_error = storable_text(str(error) or type(error).__name__, 300)
            delay = backoff.failed()
            if _transient(error):
                self.metrics.ack_failures.labels("transient").inc()
                self.metrics.db_up.labels("pool").set(0)
            if self.failures == ACK_ALERT_AFTER:
                # Once per streak, at error level: outcomes are not being recorded, so their
                # deliveries will be attempted again when their leases expire.
                log.error(
                    "acks failing %d times in a row, %d outcomes waiting: %s",
                    self.failures,
                    len(self._pending),
                    self.last_error,
                    exc_info=None if isinstance(error, DatabaseError) else error,
                )
            else:
                log.warning("ack failed, retrying in %.1fs: %s", delay, self.last_error)
            if self.failing:
                self.metrics.ack_failing.set(1)
            await asyncio.sleep(delay)

    async def _write(
        self, batch: list[tuple[Job, Ack]]
    ) -> tuple[list[tuple[Job, Ack]], set[int], list[tuple[Job, Ack]], BaseException | None]:
        """Write ``batch``: (written, accepted ids, left to retry, the last error or None).

        A batch the database refuses (one outcome it cannot store) is split: each outcome is
        written alone, and one refused alone is written without its response body, the reason
        in its error. The others are never held hostage by it.
        """
        try:
            return batch, await self.store.ack([a for _, a in batch]), [], None
        except Exception as exc:
            if _transient(exc):
                return [], set(), batch, exc
            self.metrics.ack_failures.labels("refused").inc()
            first: BaseException = exc
        done: list[tuple[Job, Ack]] = []
        accepted: set[int] = set()
        left: list[tuple[Job, Ack]] = []
        error: BaseException | None = None
        for i, (job, ack) in enumerate(batch):
            try:
                accepted |= await self.store.ack([ack])
                done.append((job, ack))
                continue
            except Exception as exc:
                if _transient(exc):
                    # The database went away: nothing more gets written now.
                    return done, accepted, left + batch[i:], exc
                refused = exc
            reduced = _reduced(ack, refused)
            try:
                accepted |= await self.store.ack([reduced])
            except Exception as exc:
                left.append((job, reduced))
                error = exc
                continue
            done.append((job, reduced))
            self.metrics.ack_reduced.inc()
            log.error(
                "outcome recorded without its response body: the database refused it",
                extra={**attempt_summary(job, ack), "reason": reduced.error},
            )
        if error is None and not done:
            error = first
        return done, accepted, left, error

    def _record(self, batch: list[tuple[Job, Ack]], accepted: set[int]) -> None:
        now = time.time()
        # The lines' fields are built only when they are logged (~0.7 us per delivery).
        info = log.isEnabledFor(logging.INFO)
        debug = log.isEnabledFor(logging.DEBUG)
        # relay_deliveries_total{outcome="delivered"} once per event type and batch, not once
        # per delivery (about 0.5 us of a delivery, timeit).
        delivered: dict[str, int] = {}
        for job, ack in batch:
            if job.id not in accepted:
                self.metrics.lost_leases.inc()
                log.warning(
                    "ack ignored: lease lost to another relay", extra=attempt_summary(job, ack)
                )
                continue
            if ack.outcome == "delivered":
                delivered[job.event_type] = delivered.get(job.event_type, 0) + 1
                self.metrics.latency.observe(max(0.0, now - job.created_at.timestamp()))
                self.summary.add(job.subscription_id)
                if debug:
                    log.debug("delivered", extra=attempt_summary(job, ack))
            elif ack.outcome == "dead":
                self.metrics.delivery_ended("dead", job.event_type)
                log.warning("dead", extra=attempt_summary(job, ack))
            elif info:
                log.info("retry scheduled", extra=attempt_summary(job, ack))
        for event_type, count in delivered.items():
            self.metrics.delivery_ended("delivered", event_type, count)
        self._log_summary(time.monotonic())

    def _log_summary(self, now: float, force: bool = False) -> None:
        window, counts = self.summary.take(now, force)
        for subscription_id, delivered in counts.items():
            log.info(
                "delivered %d in %.0fs",
                delivered,
                window,
                extra={
                    "subscription_id": subscription_id,
                    "delivered": delivered,
                    "window_s": round(window, 1),
                },
            )

    async def close(self, timeout: float) -> None:
        """Flush what is pending (bounded by ``timeout``) and stop."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        self._log_summary(time.monotonic(), force=True)


def _reduced(ack: Ack, exc: BaseException) -> Ack:
    """``ack`` without the response body, the database's reason in its error: what is still
    worth recording of an outcome the database refused as it was."""
    reason = storable_text(str(exc) or type(exc).__name__, 300)
    error = f"{ack.error + '; ' if ack.error else ''}response not recorded (refused: {reason})"
    return dataclasses.replace(ack, response_body=None, error=error)
