"""``relay run``: the daemon's loops, wired together.

Tasks (all in one asyncio loop):
- :class:`~relay.daemon.listener.Listener`: LISTEN for wake-ups, reconnecting with backoff;
- :class:`~relay.daemon.dispatcher.Dispatcher`: fans undispatched outbox rows out into
  deliveries;
- :class:`~relay.daemon.deliverer.Deliverer`: claims due deliveries while there are free slots;
- :class:`~relay.daemon.attempts.Attempts`: one task per HTTP attempt for the jobs both lease;
- :class:`~relay.daemon.acker.Acker`: writes attempt outcomes in batches (one statement per batch);
- housekeeping: heartbeat, shared gauges, lapsed ready jobs, the vacuum fallback;
- :class:`~relay.daemon.pruner.Pruner`: retention (prunes finished history, history sizes);
- the systemd watchdog, and the HTTP server for /metrics, /healthz and /readyz.

The loops never call each other: :class:`~relay.daemon.signals.Signals`, created first, carries
every wake-up between them. Every DB failure in a loop is logged, reported on /readyz and
retried with backoff: a database outage never crashes the service into a restart loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from relay.config import Config
from relay.daemon.acker import Acker
from relay.daemon.attempts import Attempts
from relay.daemon.backoff import Backoff
from relay.daemon.deliverer import Deliverer
from relay.daemon.dispatcher import Dispatcher
from relay.daemon.health import Health
from relay.daemon.listener import Listener
from relay.daemon.looptask import bound_create_task
from relay.daemon.pruner import Pruner
from relay.daemon.signals import Signals, wait_for_event
from relay.daemon.store import PgStore
from relay.daemon.systemd import SystemdNotifier, watchdog_interval
from relay.errors import ConfigError, DatabaseError
from relay.metrics import Metrics
from relay.pgprepare import prepare_kwargs
from relay.sql import expected_schema_version
from relay.webhook.netpolicy import parse_allowed_networks
from relay.webhook.sender import HttpSender

log = logging.getLogger("relay.daemon")

# Tunables (module constants so tests can shrink them).
SCHEMA_WAIT_INTERVAL = 2.0
# Queue-table vacuum fallback: how often to look, and how many dead rows are worth a VACUUM.
VACUUM_CHECK_SECONDS = 30.0
VACUUM_MIN_DEAD = 50_000
VACUUM_MIN_INTERVAL = 60.0
# Ordered subscriptions: how often to look for a parked head nobody promoted (a safety net).
UNPARK_CHECK_SECONDS = 10.0
# Python's cycle collector: young-generation threshold and the two older ones (see _tune_gc).
GC_THRESHOLD = (10_000, 10, 10)


class Relay:
    """One relay process."""

    def __init__(self, config: Config, url: str, metrics: Metrics | None = None) -> None:
        self.config = config
        self.relay_id = config.effective_relay_id
        self.metrics = metrics or Metrics()
        # First: every loop raises and waits on its wake-ups here, none calls another.
        self.signals = Signals()
        self.stopping = self.signals.stopping
        self.store = PgStore(
            url,
            pool_size=config.pool_size,
            relay_id=self.relay_id,
            synchronous_commit=config.synchronous_commit,
            prepare=config.prepare,
        )
        self.metrics.credentials_encrypted.set(0 if self.store.keyring is None else 1)
        self.sender = HttpSender(
            config.concurrency, parse_allowed_networks(config.allowed_networks)
        )
        self.acker = Acker(self.store, self.metrics, self.signals)
        self.attempts = Attempts(
            config,
            self.store,
            self.sender,
            self.metrics,
            self.signals,
            on_outcome=self.acker.put,
        )
        self.dispatcher = Dispatcher(config, self.store, self.metrics, self.attempts, self.signals)
        self.deliverer = Deliverer(config, self.store, self.metrics, self.attempts, self.signals)
        self.listener = (
            Listener(url, self.signals.notified, prepare=config.prepare) if config.listen else None
        )
        self.pruner = Pruner(
            config,
            self.store,
            self.metrics,
            self.stopping,
            busy=lambda: self.attempts.slots.held > 0,
        )
        self.health = Health(self, self.metrics.registry, config.metrics_host_port)
        self.notifier = SystemdNotifier()
        self.last_vacuum_check = time.monotonic()
        self.last_unpark_check = time.monotonic()
        self.schema_ok = False
        self.last_loop_tick = time.monotonic()

    # -- what /healthz and /readyz read (relay.daemon.health.Probe) ----------------------------
    @property
    def stopped(self) -> bool:
        """Whether a stop was asked."""
        return self.stopping.is_set()

    @property
    def listener_connected(self) -> bool | None:
        """Whether the LISTEN connection is up (None: not listening, by configuration)."""
        return None if self.listener is None else self.listener.connected

    @property
    def acks_error(self) -> str | None:
        """Why attempt outcomes are not being recorded (acks keep failing), or None."""
        if not self.acker.failing:
            return None
        return (
            f"attempt outcomes not recorded, {self.acker.failures} failures in a row: "
            f"{self.acker.last_error}"
        )

    async def ping(self) -> None:
        """Prove the database answers (:class:`DatabaseError` if not)."""
        await self.store.ping()

    def _toggle_debug(self) -> None:
        from relay.logs import toggle_debug

        log.warning("log level now %s (SIGHUP)", toggle_debug(self.config.log_level))

    def stop(self) -> None:
        if not self.stopping.is_set():
            log.info("stopping: no new claims; draining in-flight deliveries")
            self.notifier.stopping()
            self.signals.stop()

    async def _guarded(
        self, name: str, step: Callable[[], Awaitable[None]], *, cancellable: bool = True
    ) -> None:
        """Run ``step`` until stopping, backing off on errors.

        A cancellable step is abandoned as soon as a stop comes (no waiting out a database
        timeout). The dispatcher's and deliverer's are not: cancelling a statement that had
        committed would strand the rows it leased until their lease expires.
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
                await wait_for_event(self.stopping, delay)
            except Exception:
                # A bug must not silently stop a loop: log it loudly and keep going.
                delay = backoff.failed()
                log.exception("%s: unexpected error, retrying in %.1fs", name, delay)
                await wait_for_event(self.stopping, delay)

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
        self.attempts.subscriptions_changed(stats.subscriptions_active)
        m.db_up.labels("pool").set(1)

    async def _housekeeping_step(self) -> None:
        self.last_loop_tick = time.monotonic()
        await self._refresh_gauges()
        now = time.monotonic()
        self.attempts.release_expired(now)
        if self.config.vacuum and now - self.last_vacuum_check >= VACUUM_CHECK_SECONDS:
            self.last_vacuum_check = now
            vacuumed = await self.store.vacuum_if_needed(VACUUM_MIN_DEAD, VACUUM_MIN_INTERVAL)
            if vacuumed:
                log.info("vacuumed %s (dead rows piled up)", ", ".join(vacuumed))
        if now - self.last_unpark_check >= UNPARK_CHECK_SECONDS:
            self.last_unpark_check = now
            unparked = await self.store.unpark_ordered_heads()
            if unparked:
                log.info("ordered subscriptions: made %d held-back deliveries due", unparked)
        await wait_for_event(self.stopping, self.config.gauge_interval)
        return None

    async def _watchdog(self, interval: float) -> None:
        while not self.stopping.is_set():
            if self.health.alive():
                self.notifier.watchdog()
            await wait_for_event(self.stopping, interval)

    async def _ticker(self) -> None:
        # Proves the event loop itself is not blocked (for /healthz).
        while not self.stopping.is_set():
            self.last_loop_tick = time.monotonic()
            if self.listener is not None:
                self.metrics.db_up.labels("listener").set(1 if self.listener.connected else 0)
            await wait_for_event(self.stopping, 1.0)

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
            await wait_for_event(self.stopping, backoff.failed())

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
                self._guarded("dispatcher", self.dispatcher.step, cancellable=False)
            ),
            asyncio.create_task(self._guarded("deliverer", self.deliverer.step, cancellable=False)),
            asyncio.create_task(self._guarded("housekeeping", self._housekeeping_step)),
            asyncio.create_task(self._guarded("pruner", self.pruner.step)),
        ]
        if self.listener is not None:
            background.append(asyncio.create_task(self.listener.run(self.stopping)))
        if not self.stopping.is_set():
            self.notifier.ready()
            log.info("relay %s ready", self.relay_id)
        await self.stopping.wait()
        await asyncio.gather(*workers, return_exceptions=True)
        await self.attempts.drain()
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


def main(config: Config) -> int:
    """Entry point of ``relay run``: resolve the database, set up logging, run until a signal."""
    from relay.embedded import resolve_database_url
    from relay.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    # Nobody else migrates an embedded database: resolving it does.
    url = resolve_database_url(config.database_url, config.state_dir, migrate=True)
    _check_credentials(url)
    relay = Relay(config, url)
    _tune_gc()
    try:
        return _run_loop(relay.run())
    except KeyboardInterrupt:
        return 0


def _check_credentials(url: str) -> None:
    """RELAY_ENCRYPTION_KEY at start: a warning without one; a :class:`ConfigError` (exit 2,
    relay does not start) when stored credentials are encrypted and it cannot decrypt them,
    rather than failing every delivery. Best effort: with the database not reachable yet,
    relay starts and such a delivery fails with the same reason (relay.daemon.store)."""
    import psycopg

    from relay import crypto
    from relay.admin.credentials import check_readable

    keyring = crypto.load_keyring()  # a malformed key: ConfigError
    if keyring is None:
        log.warning(
            "RELAY_ENCRYPTION_KEY is not set: subscriptions' signing secrets and header values "
            "are stored in plain text (see `relay encryption-key generate`)"
        )
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=5, **prepare_kwargs())
    except psycopg.Error:
        return
    with conn:
        try:
            check_readable(conn, keyring)
        except DatabaseError:
            return  # no schema yet: nothing stored to check


def _tune_gc() -> None:
    """Keep Python's cycle collector off the request path.

    Each request briefly holds a few dozen container objects (aiohttp's request/response,
    the task, the job's dicts), so at the default threshold (700 more allocations than
    frees) the collector ran every few deliveries and its full collections walked every
    object the process had imported (what that cost: docs/performance.md, "Levers"). Objects
    that live for the whole run are moved out of its reach (``gc.freeze``), and a young
    collection waits for GC_THRESHOLD more live objects: garbage cycles (rare here) are
    still collected once that many build up.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (less CPU per request), else plain asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        return asyncio.run(_bound(coro))
    return uvloop.run(_bound(coro))


async def _bound(coro: Coroutine[Any, Any, int]) -> int:
    """``coro`` with asyncio.create_task bound to the running loop (relay.daemon.looptask)."""
    with bound_create_task(asyncio.get_running_loop()):
        return await coro
