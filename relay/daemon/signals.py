"""The wake-ups between the daemon's loops, in one object.

The loops never call each other: each tells :class:`Signals` what happened and waits on it for
what concerns it. :class:`~relay.daemon.service.Relay` creates one first and passes it to every
loop, so nothing is wired to a part that does not exist yet.

=====================  ==================================  ===================================
signal                 raised by                           waited on by
=====================  ==================================  ===================================
outbox woken           NOTIFY ``relay_outbox``, stop        the dispatcher
deliveries due         NOTIFY ``relay_deliveries``, an      the deliverer (its next claim takes
                       unleased fan-out, released rows      the whole room: how many is unknown)
retries scheduled      the acker (accepted retries)         the deliverer (sizes claims by them)
slot free              an attempt ending, reserved room     the dispatcher and the deliverer
                       coming back, released rows           (waiting for room)
stopping               :meth:`Relay.stop`                   every loop
=====================  ==================================  ===================================

Besides the events, two facts travel here from the deliverer to the others: until when it
sleeps (a retry due later need not wake it) and which saturated subscriptions its last claim
skipped (a slot of one of them freeing must wake it). What was signalled for claim sizing is
kept until the deliverer takes it (:meth:`take_due`).
"""

from __future__ import annotations

import asyncio
import time

#: NOTIFY channels and the signal each raises.
OUTBOX_CHANNEL = "relay_outbox"
DELIVERIES_CHANNEL = "relay_deliveries"


async def wait_for_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``event``; whether it was set."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


class Signals:
    """One relay's wake-ups: small, synchronous to raise, awaited by the loops.

    Raising a signal never blocks and never fails (it is called from done-callbacks and the
    listener); each is an :class:`asyncio.Event` a loop clears before the work that could
    miss it, then waits on.
    """

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.outbox = asyncio.Event()  # the dispatcher's wake-up
        self.deliveries = asyncio.Event()  # the deliverer's wake-up
        self.slot = asyncio.Event()  # a slot freed, or reserved room came back
        #: something may have become due since the deliverer's last claim
        self.new_work = True
        #: monotonic end of the deliverer's timed sleep (None: not in one)
        self.deliverer_sleeps_until: float | None = None
        # For claim sizing, kept until the deliverer takes them (take_due): whether deliveries
        # of unknown number became due, and the due times of the retries scheduled since.
        self._unknown = True
        self._retries: list[float] = []
        # Saturated subscriptions the deliverer's last claim skipped (None: none).
        self._skipped: frozenset[int] | None = None

    def __repr__(self) -> str:
        return (
            f"Signals(stopping={self.stopping.is_set()}, outbox={self.outbox.is_set()}, "
            f"deliveries={self.deliveries.is_set()}, slot={self.slot.is_set()})"
        )

    # -- raising -------------------------------------------------------------------------------
    def stop(self) -> bool:
        """Stopping: wake every loop so each sees it; whether this call was the first."""
        if self.stopping.is_set():
            return False
        self.stopping.set()
        self.outbox.set()
        self.deliveries.set()
        self.slot.set()
        return True

    def notified(self, channel: str) -> None:
        """A NOTIFY arrived (or the listener caught up after a reconnect) on ``channel``."""
        if channel == OUTBOX_CHANNEL:
            self.outbox_woken()
        else:
            self.deliveries_due()

    def outbox_woken(self) -> None:
        """New outbox rows may wait: wake the dispatcher."""
        self.outbox.set()

    def deliveries_due(self) -> None:
        """Deliveries of unknown number may be due (NOTIFY, unleased fan-out, rows released):
        wake the deliverer, and let its next claim take the whole room."""
        self._unknown = True
        self._wake_deliverer()

    def retries_scheduled(self, delays: list[float], now: float | None = None) -> None:
        """Retries fall due in ``delays`` s (from ``now``, monotonic): count them for sizing
        claims, and wake the deliverer unless it already sleeps only until before the first
        (waking it for every failed attempt would cost a claim each)."""
        if now is None:
            now = time.monotonic()
        self._retries.extend(now + max(0.0, delay) for delay in delays)
        until = self.deliverer_sleeps_until
        if until is not None and until <= now + min(delays):
            return
        self._wake_deliverer()  # the sizer learns these: no whole-room claim

    def slot_freed(
        self, subscription_id: int | None = None, *, was_saturated: bool = False
    ) -> None:
        """A request slot freed (``subscription_id``'s attempt ended; it held all it may
        before, if ``was_saturated``), or reserved room came back."""
        self.slot.set()
        if was_saturated and self._skipped is not None and subscription_id in self._skipped:
            # The last claim skipped this subscription's due rows (and the next-due time
            # ignored them): now that it has room, look again.
            self.deliveries.set()

    def _wake_deliverer(self) -> None:
        self.new_work = True
        self.deliveries.set()

    # -- the deliverer's side ------------------------------------------------------------------
    def skipping(self, subscriptions: frozenset[int] | None) -> None:
        """The deliverer's claim skips (skipped) these saturated subscriptions: wake it when
        one of them frees a slot."""
        self._skipped = subscriptions

    def take_due(self) -> tuple[bool, list[float]]:
        """What was signalled for claim sizing since the last call: whether deliveries of
        unknown number became due, and the due times of the retries scheduled."""
        unknown, retries = self._unknown, self._retries
        self._unknown, self._retries = False, []
        return unknown, retries

    # -- waiting -------------------------------------------------------------------------------
    async def wait_outbox(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for :meth:`outbox_woken` (since the last clear)."""
        return await wait_for_event(self.outbox, timeout)

    async def wait_deliveries(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a deliverer wake-up (since the last clear)."""
        return await wait_for_event(self.deliveries, timeout)

    async def wait_slot(self, timeout: float | None) -> bool:
        """Clear, then wait until a slot frees (at most ``timeout`` s, if given); whether one
        did."""
        self.slot.clear()
        if timeout is None:
            await self.slot.wait()
            return True
        return await wait_for_event(self.slot, timeout)

    async def wait_stopping(self, timeout: float) -> bool:
        """Sleep up to ``timeout`` s unless stopping; whether stopping."""
        return await wait_for_event(self.stopping, timeout)
