"""How a backlog flows: it waits in the outbox, and events are fanned out as slots free."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg

from tests.receiver import Receiver, respond
from tests.relayctx import add_subscription, emit, running_relay, wait_until

Conn = psycopg.Connection[Any]


def _counts(conn: Conn) -> tuple[int, int]:
    """(pending deliveries, undispatched outbox rows)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM relay.deliveries WHERE status = 'pending'),"
        "       (SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL)"
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def test_a_backlog_is_fanned_out_only_as_fast_as_slots_free(
    conn: Conn, database_url: str
) -> None:
    """Each delivery is leased by the statement that creates it (written twice, not three
    times): pending deliveries stay within the relay's slots (plus acks in flight) while the
    rest wait undispatched.
    """
    n, concurrency = 40, 4
    async with Receiver(default=respond(204, delay=0.05)) as rx:
        add_subscription(conn, rx.url("/hook"))
        for i in range(n):
            emit(conn, "order.created", {"i": i})
        samples: list[tuple[int, int]] = []
        async with running_relay(
            database_url,
            concurrency=concurrency,
            subscription_concurrency=concurrency,
            prefetch=concurrency,
        ) as relay:
            while len(rx.requests) < n:
                samples.append(_counts(conn))
                await asyncio.sleep(0.01)
            await wait_until(lambda: _counts(conn) == (0, 0))
            claimed_by_deliverer = relay.metrics.claims.labels("delivery")._value.get()
        # Pending = held (in flight + prefetched: at most 2 × `concurrency`) + outcomes whose
        # batched ack is not written yet (each from a slot already freed): never more than
        # twice that, where fanning the backlog out would have made all 40 pending at once.
        assert max(pending for pending, _ in samples) <= 2 * (2 * concurrency)
        assert any(waiting > 0 for _, waiting in samples), "the backlog never waited"
        assert sorted(r.json["i"] for r in rx.requests) == list(range(n))
        # Nothing was left for the deliverer to claim: every first attempt came leased.
        fanned = conn.execute(
            "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered' AND attempts = 1"
        ).fetchone()
        assert fanned == (n,)
        assert claimed_by_deliverer <= 1  # at most its start-up look for due rows


async def test_fan_out_beyond_the_free_slots_is_claimed_later(
    conn: Conn, database_url: str
) -> None:
    """One event for more subscriptions than free slots: the surplus deliveries are due at
    once and claimed as slots free; every subscription gets the event exactly once."""
    async with Receiver(default=respond(204, delay=0.05)) as rx:
        subs = 6
        for s in range(subs):
            add_subscription(conn, rx.url(f"/s{s}"))
        for i in range(5):
            emit(conn, "order.created", {"i": i})
        async with running_relay(database_url, concurrency=2, subscription_concurrency=2):
            await wait_until(lambda: len(rx.requests) >= 5 * subs, timeout=20)
            await wait_until(lambda: _counts(conn) == (0, 0))
        got = sorted((r.path, r.json["i"]) for r in rx.requests)
        assert got == sorted((f"/s{s}", i) for s in range(subs) for i in range(5))


async def test_every_leased_or_claimed_delivery_is_attempted_once(
    conn: Conn, database_url: str
) -> None:
    """Dispatch leases and deliverer claims share the slots and the per-subscription caps
    (retries keep both busy): no row is taken beyond a cap only to be given back, so the rows
    leased or claimed equal the attempts made."""
    async with Receiver() as rx:
        for s in range(2):
            rx.script(f"/s{s}", [respond(500), respond(204, delay=0.02), respond(204, delay=0.02)])
            add_subscription(conn, rx.url(f"/s{s}"), backoff_ms=50)
        for i in range(40):
            emit(conn, "order.created", {"i": i})
        async with running_relay(database_url, concurrency=6, subscription_concurrency=4) as relay:
            await wait_until(lambda: _counts(conn) == (0, 0), timeout=30)
            taken = relay.metrics.claimed.labels("delivery")._value.get()
        made = conn.execute("SELECT count(*) FROM relay.delivery_attempts").fetchone()
        assert made is not None and made[0] == len(rx.requests) == 82  # 80 + 2 retries
        assert taken == made[0]
