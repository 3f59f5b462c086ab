"""The acker: writes attempt outcomes in batches, one statement per batch."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from relay.daemon.backoff import Backoff
from relay.daemon.signals import Signals
from relay.daemon.store import Ack, Job, Store
from relay.errors import DatabaseError
from relay.metrics import Metrics
from relay.webhook.sender import attempt_summary

# The daemon's logger: ack outcomes are part of its one-line-per-outcome log.
log = logging.getLogger("relay.daemon")

# Tunables (module constants so tests can shrink them).
ACK_BATCH_MAX = 500
# Under load, let outcomes gather this long before an ack statement (a lone outcome is written
# at once): a bigger ack statement costs Postgres less per row (docs/performance.md).
ACK_GATHER_SECONDS = 0.005
ACK_GATHER_ROWS = 64


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
        self._pending: list[tuple[Job, Ack]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False

    def put(self, job: Job, ack: Ack) -> None:
        self._pending.append((job, ack))
        self._idle.clear()
        self._wake.set()

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
            try:
                accepted = await self.store.ack([a for _, a in batch])
            except Exception as exc:
                # Keep the outcomes and retry: if the lease expires meanwhile the delivery is
                # simply attempted again (at-least-once), never lost.
                delay = backoff.failed()
                if isinstance(exc, DatabaseError):
                    log.warning("ack failed, retrying in %.1fs: %s", delay, exc)
                    self.metrics.db_up.labels("pool").set(0)
                else:
                    log.exception("ack failed unexpectedly, retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.metrics.db_up.labels("pool").set(1)
            del self._pending[: len(batch)]
            self._record(batch, accepted)
            delays = [
                ack.delay for job, ack in batch if ack.outcome == "retry" and job.id in accepted
            ]
            if delays:
                self.signals.retries_scheduled(delays)

    def _record(self, batch: list[tuple[Job, Ack]], accepted: set[int]) -> None:
        now = time.time()
        # The info lines' fields are built only when they are logged (at warning, the
        # benchmark's level, building them would cost every delivery for nothing).
        info = log.isEnabledFor(logging.INFO)
        for job, ack in batch:
            if job.id not in accepted:
                self.metrics.lost_leases.inc()
                log.warning(
                    "ack ignored: lease lost to another relay", extra=attempt_summary(job, ack)
                )
                continue
            if ack.outcome == "delivered":
                self.metrics.delivery_ended("delivered", job.event_type)
                self.metrics.latency.observe(max(0.0, now - job.created_at.timestamp()))
                if info:
                    log.info("delivered", extra=attempt_summary(job, ack))
            elif ack.outcome == "dead":
                self.metrics.delivery_ended("dead", job.event_type)
                log.warning("dead", extra=attempt_summary(job, ack))
            elif info:
                log.info("retry scheduled", extra=attempt_summary(job, ack))

    async def close(self, timeout: float) -> None:
        """Flush what is pending (bounded by ``timeout``) and stop."""
        self._closing = True
        self._wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
