"""A subscription disabled while its deliveries are in flight (issue 14): once those attempts
fail, their deliveries are parked (due at 'infinity', unleased), not retried, not walked by
claims, and ``relay_oldest_pending_age_seconds`` does not climb from them; ``enable`` resumes
them."""

from __future__ import annotations

import time
from typing import Any

from relay import admin
from tests.faults._util import Conn, scalar, wait_async
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription, running_relay

EVENTS = 4


async def test_disabled_while_in_flight_parks_after_the_attempts_fail_and_resumes_on_enable(
    conn: Conn, database_url: str, tmp_path: Any
) -> None:
    # The receiver answers after 2 s; the subscription gives up after 1 s: every attempt in
    # flight at the disable fails (a timeout) afterwards, and its retry would be due in 0.1 s.
    with start_receiver_process(tmp_path, delay=2.0) as rx:
        sub = add_subscription(conn, rx.url, timeout_ms=1000, backoff_ms=100, max_retries=5)
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created', jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (EVENTS,),
        )
        async with running_relay(database_url, gauge_interval=0.2) as relay:
            await wait_async(lambda: len(rx.records()) >= EVENTS, 15, "requests in flight")
            admin.set_enabled(conn, sub, False)
            await wait_async(
                lambda: scalar(conn, "SELECT count(*) FROM relay.delivery_attempts") >= EVENTS,
                15,
                "the in-flight attempts to fail",
            )
            t0 = time.monotonic()
            await wait_async(lambda: time.monotonic() - t0 > 1.5, 5, "retries that would be due")
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'pending'),"
                " count(*) FILTER (WHERE next_attempt_at = 'infinity'),"
                " count(*) FILTER (WHERE lease_token IS NOT NULL)"
                " FROM relay.deliveries"
            ).fetchone()
            assert row == (EVENTS, EVENTS, 0), "pending, parked, leased"
            assert len(rx.records()) == EVENTS, "nothing sent while disabled"
            # Parked rows are not "due": the claims skip them and the age gauge ignores them.
            due = scalar(
                conn,
                "SELECT count(*) FROM relay.deliveries"
                " WHERE status = 'pending' AND next_attempt_at <= now()",
            )
            assert due == 0
            age = relay.metrics.registry.get_sample_value("relay_oldest_pending_age_seconds")
            assert age == 0, age
            # Resumed: a timeout the receiver meets, then enable.
            conn.execute("UPDATE relay.subscriptions SET timeout_ms = 5000 WHERE id = %s", (sub,))
            admin.set_enabled(conn, sub, True)
            await wait_async(
                lambda: (
                    scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status='delivered'")
                    == EVENTS
                ),
                20,
                "the deliveries to resume on enable",
            )
