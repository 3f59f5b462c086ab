"""Retention in ``relay run``: prune finished history in small batches, and report its size.

Every :data:`PRUNE_INTERVAL` seconds (the contract: at least once a minute) a pass deletes
what ended longer ago than ``--retention`` (``RELAY_RETENTION``, default 30d; ``off`` keeps
everything):

1. deliveries ``delivered``/``dead`` before the cutoff, with their attempts, a batch of at
   most :data:`PRUNE_BATCH` of each status per statement, until a batch comes back short;
2. outbox rows created before the cutoff, dispatched, with no delivery left: a walk of the
   primary key from the oldest row, :data:`PRUNE_BATCH` rows a statement, until it reaches
   rows too young to prune.

Each batch is one short autocommit transaction (relay/sql/queries/retention.sql): it touches
only finished rows, locks them SKIP LOCKED, and takes a transaction advisory lock so one
relay prunes at a time (a relay that finds it taken leaves the pass to the other). Between
batches the pruner rests at least as long as the batch took (at most half of one connection)
and, while this relay is delivering (:func:`rest_seconds`), :data:`PRUNE_REST_BUSY` times as
long: Postgres' time goes to delivery first, and the history waits.

After a pass that deleted at least :data:`PRUNE_VACUUM_ROWS` rows, and unless ``--no-vacuum``
(``RELAY_VACUUM=false``), it VACUUMs the history tables whose dead rows passed that many and a
fifth of their live rows (:meth:`Store.vacuum_if_needed`, the daemon's fallback, one relay at
a time). A deleted row's space is reused only once vacuumed; in the soak autovacuum lagged behind
the pruner on a busy server and ``relay.deliveries`` kept growing.

Every gauge interval it also reads ``relay_history_bytes{table}`` (pg_total_relation_size:
catalog and file sizes, no rows read), with retention on or off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from relay.config import Config
from relay.daemon.signals import wait_for_event
from relay.daemon.store import Store
from relay.metrics import Metrics

log = logging.getLogger("relay.pruner")

# Tunables (module constants so tests and benchmarks can shrink them).
PRUNE_INTERVAL = 30.0
PRUNE_BATCH = 2000
# The least rest between two batches; the rest is at least the batch's own duration too.
PRUNE_PAUSE = 0.01
# While the relay is delivering, the rest is this many times the batch's duration (a tenth of
# one connection). At full speed (rest = batch) a first pass over 300,000 prunable deliveries
# cost a 20,000-event drain 17 % of its rate on a 2-core host (bench prune_drain); at a tenth
# this pruner still deletes ~35,000 rows/s there, hundreds of times what 100 events/s create.
PRUNE_REST_BUSY = 9.0
# A pass that deleted this many rows (all tables) is followed by a vacuum of the tables that
# need one: below it, autovacuum keeps up.
PRUNE_VACUUM_ROWS = 10_000


class Pruner:
    """The retention loop of one relay (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        metrics: Metrics,
        stopping: asyncio.Event,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        """``busy()``: whether this relay is delivering now (it holds deliveries)."""
        self.config = config
        self.busy = busy
        self.store = store
        self.metrics = metrics
        self.stopping = stopping
        self.retention = config.retention_seconds
        self.last_pass = -float("inf")

    async def step(self) -> None:
        """Refresh the size gauges; prune if a pass is due; wait for the next interval."""
        sizes = await self.store.history_bytes()
        for table, size in sizes.items():
            self.metrics.history_bytes.labels(table).set(size)
        now = time.monotonic()
        if self.retention is not None and now - self.last_pass >= PRUNE_INTERVAL:
            self.last_pass = now
            pruned = await self.prune_pass(float(self.retention))
            if any(pruned.values()):
                log.info(
                    "pruned history older than %s: %s",
                    self.config.retention,
                    ", ".join(f"{n} {table}" for table, n in pruned.items()),
                    extra={"pruned": pruned},
                )
            if self.config.vacuum and sum(pruned.values()) >= PRUNE_VACUUM_ROWS:
                # the pass's dead rows are its own: a shorter interval than the daemon's
                # fallback would allow (one pass per table per PRUNE_INTERVAL at most)
                vacuumed = await self.store.vacuum_if_needed(PRUNE_VACUUM_ROWS, PRUNE_INTERVAL)
                if vacuumed:
                    log.info("vacuumed %s after pruning", ", ".join(vacuumed))
        await wait_for_event(self.stopping, min(self.config.gauge_interval, PRUNE_INTERVAL))

    async def prune_pass(self, older_than: float) -> dict[str, int]:
        """Delete, batch by batch, what ended over ``older_than`` seconds ago; the counts."""
        pruned = {"deliveries": 0, "delivery_attempts": 0, "outbox": 0}
        while not self.stopping.is_set():
            started = time.monotonic()
            ours, deliveries, attempts = await self.store.prune_deliveries(older_than, PRUNE_BATCH)
            if not ours:
                return pruned  # another relay is pruning: this pass is its
            self._count(pruned, "deliveries", deliveries)
            self._count(pruned, "delivery_attempts", attempts)
            if deliveries < PRUNE_BATCH:
                break
            await self._rest(started)
        after = 0
        while not self.stopping.is_set():
            started = time.monotonic()
            ours, outbox, last, done = await self.store.prune_outbox(older_than, PRUNE_BATCH, after)
            if not ours:
                return pruned
            self._count(pruned, "outbox", outbox)
            if done or last is None:
                break
            after = last
            await self._rest(started)
        return pruned

    def _count(self, pruned: dict[str, int], table: str, n: int) -> None:
        pruned[table] += n
        if n:
            self.metrics.pruned_rows.labels(table).inc(n)

    async def _rest(self, started: float) -> None:
        rest = rest_seconds(time.monotonic() - started, busy=self.busy())
        await wait_for_event(self.stopping, rest)


def rest_seconds(batch_seconds: float, *, busy: bool) -> float:
    """How long to rest after a batch that took ``batch_seconds``: as long as it took (at most
    half of one connection for pruning), PRUNE_REST_BUSY times as long while delivering."""
    factor = PRUNE_REST_BUSY if busy else 1.0
    return max(PRUNE_PAUSE, factor * batch_seconds)
