"""Database faults: relay's connections killed, or its network path to Postgres cut for 10 s.

The relay runs in-process (the daemon's own classes in the test's event loop) so the test can
read its health server and listener state while the faults happen.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

from psycopg.conninfo import conninfo_to_dict

from relay.daemon.store import PgStore
from tests.faults._util import (
    Conn,
    readyz,
    report,
    scalar,
    scaled,
    seed_from_env,
    wait_async,
)
from tests.proxy import TcpProxy
from tests.receiver import Receiver
from tests.relayctx import add_subscription, running_relay

TERMINATE = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def _emit_batch(conn: Conn, n: int, tag: str) -> None:
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload)"
        " SELECT 'order.created', jsonb_build_object('tag', %s::text, 'n', g)"
        " FROM generate_series(1, %s) g",
        (tag, n),
    )


def _delivered(conn: Conn) -> int:
    return int(scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"))


async def test_terminated_connections_lose_nothing_and_relay_recovers(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """pg_terminate_backend on every relay connection (pool and LISTEN) several times while
    events flow: every event is delivered, the relay recovers by itself (ready again, the
    listener re-established) and a later event is still delivered promptly."""
    seed = seed_from_env()
    rng = random.Random(seed)
    rounds = scaled(5, 20)
    batch = scaled(40, 100)
    add_subscription(conn, receiver.url())
    terminated = 0
    async with running_relay(database_url, poll_interval=1.0) as relay:
        listener = relay.listener
        assert listener is not None
        await wait_async(lambda: listener.connected, 10, "the listener")
        for i in range(rounds):
            _emit_batch(conn, batch, f"round-{i}")
            await asyncio.sleep(rng.uniform(0.05, 0.6))
            terminated += int(scalar(conn, TERMINATE))
        total = rounds * batch
        took = await wait_async(lambda: _delivered(conn) == total, 60, "every delivery")
        # Recovered by itself: ready (database answering, listening again) within a bound,
        # and a new event goes through at once. Polled: the listener may only now notice
        # the last termination and reconnect.
        deadline = time.monotonic() + 30
        while True:
            status, body = await readyz(relay.health.bound)
            if status == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert status == 200, body  # includes the listener check
        _emit_batch(conn, 1, "after")
        t0 = time.monotonic()
        await wait_async(lambda: _delivered(conn) == total + 1, 10, "the event after the faults")
        after_latency = time.monotonic() - t0
        reconnects = listener.reconnects
    ids = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert len(ids) == total + 1, "every event reached the receiver"
    duplicates = sum(c - 1 for c in ids.values())
    assert scalar(conn, "SELECT count(*) FROM relay.delivery_attempts") == total + 1
    report(
        "db_terminate",
        seed=seed,
        rounds=rounds,
        backends_terminated=terminated,
        events=total + 1,
        lost=0,
        duplicates=duplicates,
        listener_reconnects=reconnects,
        drain_s=round(took, 2),
        latency_after_faults_s=round(after_latency, 3),
    )


async def test_listener_reconnects_promptly_after_each_connection_loss(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """Each time its LISTEN connection is killed while Postgres stays up, the listener is back
    within ~1 s, not after an ever-growing backoff: a previous loss must not slow down the
    recovery from the next one (readiness and wake-up latency depend on it)."""
    add_subscription(conn, receiver.url())
    losses = 5
    waits: list[float] = []
    async with running_relay(database_url) as relay:
        listener = relay.listener
        assert listener is not None
        await wait_async(lambda: listener.connected, 10, "the listener")
        for _ in range(losses):
            before = listener.reconnects
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query LIKE 'LISTEN%%'"
            )

            def back(before: int = before) -> bool:
                return listener.reconnects > before and listener.connected

            waits.append(await wait_async(back, 30, "the listener to reconnect"))
            await asyncio.sleep(1.0)  # the connection has been healthy for a while
    report("listener_reconnect", losses=losses, seconds=[round(w, 2) for w in waits])
    assert max(waits) < 2.0, waits


async def test_database_unreachable_for_10s_then_everything_delivered(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """Relay's network path to Postgres cut for 10 s (TcpProxy stopped) while apps keep
    committing events directly: /readyz answers 503 naming the database and the listener during
    the outage and 200 after; the LISTEN connection is re-established and its catch-up wakes
    the outbox loop (seen as a wake-up on ``relay_outbox`` after the restart although nothing
    was inserted since; poll_interval is 60 s); every event is delivered exactly once."""
    add_subscription(conn, receiver.url())
    params = conninfo_to_dict(database_url)
    outage = 10.0
    host, port = str(params.get("host") or "127.0.0.1"), int(str(params.get("port") or 5432))
    with TcpProxy(host, port) as proxy:
        url = proxy.rewrite(database_url)
        async with running_relay(url, poll_interval=60.0) as relay:
            listener = relay.listener
            assert listener is not None
            _emit_batch(conn, 5, "before")
            await receiver.wait_for(5, timeout=10)
            await wait_async(lambda: listener.connected, 10, "the listener")
            status, body = await readyz(relay.health.bound)
            assert status == 200, body
            reconnects_before = listener.reconnects
            # Record the wake-ups the listener hands to the relay (catch-up calls included).
            wakeups: list[tuple[str, float]] = []
            forward = listener.on_notify

            def spy(channel: str) -> None:
                wakeups.append((channel, time.monotonic()))
                forward(channel)

            listener.on_notify = spy

            proxy.stop()
            t_cut = time.monotonic()
            # A statement relay sent just before the cut may still run in Postgres (its bytes
            # were on the wire) and would see events emitted meanwhile: seen once on a
            # stalling host, as 3 deliveries of the first batch. Let it end before emitting,
            # so a delivery made from here on could only come through a connection relay
            # cannot have.
            await asyncio.sleep(1.0)
            seen_down: dict[str, Any] = {}
            emitted = 0
            while time.monotonic() - t_cut < outage:
                _emit_batch(conn, 3, "during")
                emitted += 3
                status, body = await readyz(relay.health.bound)
                if status == 503 and not seen_down:
                    seen_down = body
                await asyncio.sleep(0.5)
            assert seen_down, "readyz never reported not ready during the outage"
            checks = seen_down["checks"]
            assert checks["database"]["ok"] is False, seen_down
            assert checks["listener"]["ok"] is False, seen_down
            assert scalar(conn, "SELECT count(*) FROM relay.deliveries") == 5

            proxy.restart()
            t_back = time.monotonic()
            ready_after = -1.0
            while time.monotonic() - t_back < 60:
                status, body = await readyz(relay.health.bound)
                if status == 200:
                    ready_after = time.monotonic() - t_back
                    break
                await asyncio.sleep(0.2)
            assert ready_after >= 0, f"not ready 60 s after the outage: {body}"
            assert listener.connected and listener.reconnects > reconnects_before
            # The catch-up: nothing was inserted since the restart, yet the outbox loop was
            # woken (the listener fires every channel right after it re-LISTENs).
            assert any(ch == "relay_outbox" and t >= t_back for ch, t in wakeups), wakeups
            total = 5 + emitted
            delivered_after = await wait_async(
                lambda: len(receiver.requests) >= total, 30, "every event after the outage"
            )
            await asyncio.sleep(0.3)
    ids = Counter(r.headers["webhook-id"] for r in receiver.requests)
    assert len(ids) == total and sum(ids.values()) == total, "each event exactly once"
    assert _delivered(conn) == total
    report(
        "db_unreachable",
        outage_s=outage,
        events_during_outage=emitted,
        lost=0,
        duplicates=0,
        ready_again_after_s=round(ready_after, 2),
        all_delivered_after_s=round(delivered_after, 2),
        readyz_during_outage=seen_down["checks"],
    )


async def test_readiness_is_not_fooled_by_idle_connections_the_server_closed(
    conn: Conn, database_url: str
) -> None:
    """Every idle pooled connection terminated while nothing used them: the database still
    answers, so /readyz must say ready at once (the dead connections are dropped, not
    reported as an outage)."""
    store = PgStore(database_url, pool_size=4, relay_id="ping-test")
    await store.open()
    try:
        await store.pool.wait()
        async with store.pool.connection(), store.pool.connection(), store.pool.connection():
            pass  # three connections now sit idle in the pool
        assert int(scalar(conn, TERMINATE)) >= 3
        await asyncio.sleep(0.2)
        await store.ping()  # would raise DatabaseError on the first dead connection
    finally:
        await store.close()
