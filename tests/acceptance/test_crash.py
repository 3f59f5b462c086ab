"""Real relay processes: SIGKILL loses nothing, SIGTERM drains and exits 0."""

from __future__ import annotations

import signal
import time
from collections import Counter
from typing import Any

import psycopg

from tests.acceptance.conftest import count, wait_for
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription

Conn = psycopg.Connection[Any]


def test_sigkill_mid_batch_loses_nothing(
    conn: Conn, database_url: str, relay_process: Any, tmp_path: Any
) -> None:
    n = 2000
    # A slow-ish receiver keeps many requests in flight when the kill lands.
    with start_receiver_process(tmp_path, delay=0.02) as rx:
        # Leases last max(lease_seconds, timeout + 5 s): a short timeout keeps reclaims quick.
        add_subscription(conn, rx.url, timeout_ms=1000)
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created', jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (n,),
        )
        unrecorded = 0  # deliveries a killed relay held leased: sent or not, no outcome written
        for threshold in (200, 700, 1200):
            relay = relay_process(database_url, lease_seconds=2, concurrency=32)
            wait_for(lambda t=threshold: len(rx.records()) >= t, 60, f"{threshold} deliveries")
            relay.kill()
            assert relay.proc.returncode == -signal.SIGKILL
            # Counted after the kill (the database no longer changes for this relay): requests
            # in flight, outcomes waiting for their batched ack, prefetched ones never sent.
            leased = count(
                conn,
                "SELECT count(*) FROM relay.deliveries"
                " WHERE status = 'pending' AND lease_token IS NOT NULL",
            )
            assert leased > 0, "the kill landed while the relay held nothing: nothing tested"
            unrecorded += leased
        relay = relay_process(database_url, lease_seconds=2, concurrency=32)
        wait_for(
            lambda: (
                count(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'") == n
            ),
            90,
            "every delivery to be delivered after restart",
        )
        relay.signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        records = rx.records()
    ids = Counter(r["webhook_id"] for r in records)
    assert len(ids) == n, "every event reached the receiver at least once"
    duplicates = sum(c - 1 for c in ids.values())
    # Only deliveries whose outcome a killed relay had not written may repeat.
    assert duplicates <= unrecorded, (duplicates, unrecorded)
    assert count(conn, "SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL") == 0


def test_sigterm_drains_in_flight_and_exits_zero(
    conn: Conn, database_url: str, relay_process: Any, tmp_path: Any
) -> None:
    with start_receiver_process(tmp_path, delay=1.0) as rx:
        add_subscription(conn, rx.url)
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created', '{}' FROM generate_series(1, 20)"
        )
        relay = relay_process(
            database_url, concurrency=8, subscription_concurrency=8, drain_timeout=5
        )
        wait_for(lambda: len(rx.records()) >= 8, 30, "8 requests in flight")
        t0 = time.monotonic()
        relay.signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        took = time.monotonic() - t0
        # The 8 in flight finish (1 s each) and are acked; nothing new is claimed.
        delivered = count(conn, "SELECT count(*) FROM relay.deliveries WHERE status='delivered'")
        leased = count(conn, "SELECT count(*) FROM relay.deliveries WHERE lease_token IS NOT NULL")
        assert delivered == len(rx.records()) == 8, (delivered, took)
        assert leased == 0
        assert took < 5


def test_sigterm_lets_a_request_run_out_its_own_timeout_past_the_drain_timeout(
    conn: Conn, database_url: str, relay_process: Any, tmp_path: Any
) -> None:
    # The receiver answers after 3 s; the subscription allows 6 s; the drain timeout is 1 s.
    # A stop used to cancel the request at 1 s and release it: sent again after the restart.
    with start_receiver_process(tmp_path, delay=3.0) as rx:
        add_subscription(conn, rx.url, timeout_ms=6000)
        conn.execute("SELECT relay.emit('order.created', '{}')")
        relay = relay_process(database_url, drain_timeout=1)
        wait_for(lambda: len(rx.records()) >= 1, 30, "the request to arrive")
        t0 = time.monotonic()
        relay.signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        took = time.monotonic() - t0
        row = conn.execute("SELECT status, lease_token, attempts FROM relay.deliveries").fetchone()
        assert row == ("delivered", None, 1), (row, took)
        # A restart has nothing left to send: exactly one request.
        again = relay_process(database_url, drain_timeout=1)
        # SIGTERM before its signal handlers are in would kill it (-15), not stop it.
        wait_for(lambda: "ready" in again.log(), 30, "the second relay to be ready")
        time.sleep(1.0)
        again.signal(signal.SIGTERM)
        assert again.wait(30) == 0
        assert len(rx.records()) == 1


def test_sigterm_waits_no_longer_than_the_request_s_own_timeout(
    conn: Conn, database_url: str, relay_process: Any, tmp_path: Any
) -> None:
    # The receiver would answer after 8 s; the subscription allows 1.5 s: the stop waits for
    # that timeout, records the failed attempt (retry scheduled), and exits.
    with start_receiver_process(tmp_path, delay=8.0) as rx:
        add_subscription(conn, rx.url, timeout_ms=1500)
        conn.execute("SELECT relay.emit('order.created', '{}')")
        relay = relay_process(database_url, drain_timeout=0.5)
        wait_for(lambda: len(rx.records()) >= 1, 30, "the request to arrive")
        relay.signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        row = conn.execute(
            "SELECT d.status, d.lease_token, d.attempts, a.error"
            " FROM relay.deliveries d JOIN relay.delivery_attempts a ON a.delivery_id = d.id"
        ).fetchone()
        assert row is not None
        assert row[:3] == ("pending", None, 1), row
        assert "timeout" in row[3], row
