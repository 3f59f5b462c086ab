"""Prefetch: deliveries leased beyond the request slots wait, ready, in the relay.

Against a real Postgres and a real HTTP receiver: the caps still bound what runs, ready
deliveries are never sent on a lease that could lapse, and stopping gives them back at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import psycopg
import pytest

from relay.daemon import slots
from tests.receiver import Receiver, hang, respond
from tests.relayctx import add_subscription, emit, running_relay, wait_until

Conn = psycopg.Connection[Any]


def _backlog(conn: Conn, url: str, n: int, **subscription: Any) -> None:
    """One subscription to ``url`` and ``n`` events waiting for it (payload ``{"i": i}``)."""
    add_subscription(conn, url, **subscription)
    for i in range(n):
        emit(conn, "order.created", {"i": i})


def _leased(conn: Conn) -> int:
    row = conn.execute(
        "SELECT count(*) FROM relay.deliveries WHERE status = 'pending' AND lease_token IS NOT NULL"
    ).fetchone()
    assert row is not None
    return int(row[0])


async def test_prefetched_deliveries_start_as_slots_free_within_the_caps(
    conn: Conn, database_url: str
) -> None:
    """A backlog behind a slow receiver: the relay holds its slots' worth in flight plus its
    prefetch ready, never more than ``concurrency`` requests at once, and every event arrives
    exactly once."""
    n, concurrency = 40, 4
    async with Receiver(default=respond(204, delay=0.05)) as rx:
        _backlog(conn, rx.url("/hook"), n)
        peak_running = peak_ready = peak_held = peak_leased = 0
        async with running_relay(
            database_url, concurrency=concurrency, subscription_concurrency=concurrency, prefetch=4
        ) as relay:
            while len(rx.requests) < n:
                peak_running = max(peak_running, len(relay.attempts.in_flight))
                peak_ready = max(peak_ready, relay.attempts.slots.ready)
                peak_held = max(peak_held, relay.attempts.slots.held)
                peak_leased = max(peak_leased, _leased(conn))
                await asyncio.sleep(0.005)
            await wait_until(lambda: _leased(conn) == 0)
        assert peak_running == concurrency
        assert peak_ready > 0, "nothing was ever prefetched"
        assert peak_held == concurrency + 4
        # Leased in the database: those held, plus finished ones whose batched ack is not
        # written yet (each from a slot already freed).
        assert peak_leased <= 2 * (concurrency + 4)
        assert sorted(r.json["i"] for r in rx.requests) == list(range(n))


async def test_stopping_releases_ready_deliveries_without_sending_them(
    conn: Conn, database_url: str
) -> None:
    """On stop, ready deliveries go back to the database at once (due now, unleased, no
    attempt), not after the drain timeout; only those in flight were ever sent."""
    async with Receiver(default=hang(60)) as rx:
        # The 3 in flight time out on their own during the drain: a stop lets each request
        # run out its own timeout rather than cut it at the drain timeout (issue 14).
        _backlog(conn, rx.url("/hook"), 12, timeout_ms=3000)
        async with running_relay(
            database_url,
            concurrency=3,
            subscription_concurrency=3,
            prefetch=3,
            drain_timeout=1.0,
        ) as relay:
            await rx.wait_for(3, timeout=10)
            await wait_until(lambda: relay.attempts.slots.ready == 3)
            assert _leased(conn) == 6
        assert len(rx.requests) == 3, "a ready delivery was sent"
    rows = conn.execute(
        "SELECT count(*),"
        " count(*) FILTER (WHERE lease_token IS NULL AND next_attempt_at <= now()"
        " AND attempts = 0),"
        " count(*) FILTER (WHERE lease_token IS NULL AND attempts = 1)"
        " FROM relay.deliveries"
    ).fetchone()
    # 6 leased: the 3 ready released due now without an attempt; the 3 sent timed out during
    # the drain and were recorded as failed attempts (retry scheduled).
    assert rows == (6, 3, 3)


async def test_a_ready_delivery_whose_lease_ran_short_is_released_not_sent(
    conn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A ready delivery must still have its request timeout + START_MARGIN of lease left to
    start; otherwise it is released (another relay could retake the lapsing lease while this
    one sends). With the margin widened so a ready delivery may wait only ~1 s and requests
    taking 1.5 s, ready deliveries lapse: they are released, claimed again with a fresh lease,
    and every event still arrives exactly once, with one attempt each and no lost lease."""
    # lease = max(1 s, 2 s timeout + 5) = 7 s; a ready job may start while >= 6 s remain
    monkeypatch.setattr(slots, "START_MARGIN", 4.0)
    n = 8
    caplog.set_level(logging.INFO, logger="relay.daemon")
    async with Receiver(default=respond(204, delay=1.5)) as rx:
        _backlog(conn, rx.url("/hook"), n, timeout_ms=2_000)
        async with running_relay(
            database_url,
            concurrency=2,
            subscription_concurrency=2,
            prefetch=2,
            lease_seconds=1.0,
        ) as relay:
            await wait_until(lambda: len(rx.requests) >= n, timeout=30)
            await wait_until(lambda: _leased(conn) == 0)
            lost = relay.metrics.lost_leases._value.get()
    released = [r.getMessage() for r in caplog.records if "ready (lease" in r.getMessage()]
    assert released, "no ready delivery ever lapsed: the test did not exercise the guard"
    assert sorted(r.json["i"] for r in rx.requests) == list(range(n))
    assert lost == 0
    attempts = conn.execute("SELECT attempts FROM relay.deliveries").fetchall()
    assert attempts == [(1,)] * n
