"""LISTEN/NOTIFY wake-ups on a dedicated connection, re-established after any failure.

Notifications only shorten sleeps; correctness never depends on them (a slow poll backs them
up). After every (re)connect the callback is fired for every channel, so work committed while
the listener was down is picked up at once (a catch-up poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import psycopg

from relay.daemon.backoff import Backoff
from relay.daemon.signals import DELIVERIES_CHANNEL, OUTBOX_CHANNEL
from relay.pgprepare import prepare_kwargs

log = logging.getLogger("relay.listener")

CHANNELS = (OUTBOX_CHANNEL, DELIVERIES_CHANNEL)
RECONNECT_MIN = 0.2
RECONNECT_MAX = 10.0
CONNECT_TIMEOUT = 5
# Seconds per wait for notifications (bounds how long a stop takes to be seen).
NOTIFY_WAIT = 0.5
# Seconds of silence after which the connection is pinged.
PING_AFTER = 10.0


class Listener:
    """Calls ``on_notify(channel)`` for each notification (in the daemon,
    :meth:`relay.daemon.signals.Signals.notified`); ``connected`` says whether it listens."""

    def __init__(self, url: str, on_notify: Callable[[str], None], *, prepare: bool = True) -> None:
        self.url = url
        self.prepare = prepare
        self.on_notify = on_notify
        self.connected = False
        self.reconnects = 0

    async def run(self, stopping: asyncio.Event) -> None:
        backoff = Backoff(RECONNECT_MIN, RECONNECT_MAX)
        while not stopping.is_set():
            try:
                await self._listen(stopping)
                backoff.reset()
                delay = backoff.failed()
            except (psycopg.Error, OSError) as exc:
                if self.connected:
                    # It was up: this is a fresh loss, not the next failure of a retry series.
                    backoff.reset()
                delay = backoff.failed()
                log.warning("listener connection lost, reconnecting in %.1fs: %s", delay, exc)
            except Exception:
                # A bug (or a driver API mismatch) must not end the listener silently: relay
                # would fall back to polling with nothing said. Logged at error level, the
                # listener is down on /readyz meanwhile, and the loop tries again.
                delay = backoff.failed()
                log.exception("listener failed unexpectedly, restarting in %.1fs", delay)
            finally:
                self.connected = False
            if stopping.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)

    async def _listen(self, stopping: asyncio.Event) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self.url,
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT,
            **prepare_kwargs(self.prepare),
        )
        async with conn:
            for channel in CHANNELS:
                await conn.execute(f"LISTEN {channel}")
            self.connected = True
            self.reconnects += 1
            log.info("listening on %s", ", ".join(CHANNELS))
            for channel in CHANNELS:  # catch up on anything missed while not listening
                self.on_notify(channel)
            idle = 0.0
            while not stopping.is_set():
                got = False
                async for note in conn.notifies(timeout=NOTIFY_WAIT, stop_after=1000):
                    self.on_notify(note.channel)
                    got = True
                    if stopping.is_set():
                        return
                idle = 0.0 if got else idle + NOTIFY_WAIT
                if idle >= PING_AFTER:
                    # A silent connection may be a dead one: prove it alive (or fail here).
                    await conn.execute("SELECT 1")
                    idle = 0.0
