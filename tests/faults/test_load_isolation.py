"""Load and isolation: a hanging endpoint does not slow the others; several relays share the
work without ever delivering an attempt twice."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from relay.daemon.service import Relay
from relay.daemon.store import PgStore
from tests.faults._util import Conn, report, scalar, scaled, summary_ms, wait_sync
from tests.faults.conftest import StartRelay
from tests.receiver import Receiver, hang, respond, start_receiver_process
from tests.relayctx import add_subscription, running_relay


async def _measure(
    conn: Conn,
    receiver: Receiver,
    n: int,
    first: int,
    gap: float,
    sample: Callable[[], None] = lambda: None,
) -> list[float]:
    """Emit ``n`` events ``gap`` s apart; return each one's emit → receive latency on /fast."""
    emitted: dict[int, float] = {}
    for i in range(first, first + n):
        emitted[i] = time.time()
        conn.execute("SELECT relay.emit('order.created', jsonb_build_object('i', %s::int))", (i,))
        await asyncio.sleep(gap)
        sample()
    reqs = await receiver.wait_for(first + n, path="/fast", timeout=30)
    got = {r.json["i"]: r.received_at for r in reqs}
    return [got[i] - emitted[i] for i in range(first, first + n)]


def _predispatch(conn: Conn, subscription_id: int, n: int) -> None:
    """``n`` events with their deliveries already created (as a past dispatch left them), so
    the relay under test only claims: its dispatcher finds nothing to fan out."""
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, dispatched_at)"
        " SELECT 'order.created', jsonb_build_object('i', g), now()"
        " FROM generate_series(1, %s) g",
        (n,),
    )
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type)"
        " SELECT id, %s, event_type FROM relay.outbox",
        (subscription_id,),
    )


def _claims(relay: Relay) -> float:
    """Delivery claim queries run so far (relay_claims_total{kind="delivery"})."""
    for line in generate_latest(relay.metrics.registry).decode().splitlines():
        if line.startswith('relay_claims_total{kind="delivery"}'):
            return float(line.split()[-1])
    return 0.0


async def test_hanging_endpoint_does_not_slow_a_healthy_one(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """The healthy subscription's emit → receive latency (p50/p95) with and without a second
    subscription whose endpoint hangs past its 10 s timeout: the per-subscription in-flight cap
    (3/4 of concurrency) keeps slots free, so the healthy p95 stays well under 1 s."""
    n = scaled(60, 300)
    gap = 0.05
    receiver.script("/fast", [respond(204)])
    receiver.script("/hang", [hang(60)])
    add_subscription(conn, receiver.url("/fast"))
    async with running_relay(database_url, concurrency=16) as relay:
        cap = relay.config.effective_subscription_concurrency
        alone = await _measure(conn, receiver, n, 0, gap)
        hang_id = add_subscription(conn, receiver.url("/hang"), timeout_ms=10_000)
        peak = [0]

        def sample() -> None:
            busy = sum(1 for j in relay.attempts.in_flight.values() if j.subscription_id == hang_id)
            peak[0] = max(peak[0], busy)

        claims_before = _claims(relay)
        t0 = time.monotonic()
        beside = await _measure(conn, receiver, n, n, gap, sample)
        claims_rate = (_claims(relay) - claims_before) / (time.monotonic() - t0)
        hanging = len(receiver.requests_to("/hang"))
    without, with_hang = summary_ms(alone), summary_ms(beside)
    report(
        "isolation",
        events_per_phase=n,
        subscription_cap=cap,
        hanging_requests=hanging,
        hanging_in_flight_peak=peak[0],
        healthy_without_hanging=without,
        healthy_beside_hanging=with_hang,
        delivery_claims_per_s_beside_hanging=round(claims_rate, 1),
    )
    # It did take its whole cap (the cap itself under a dispatch/claim race is pinned by
    # test_caps_hold_when_dispatch_and_claim_race).
    assert peak[0] >= cap, "the hanging endpoint reached its cap of slots"
    assert with_hang["p95_ms"] < 1000, with_hang


async def test_saturated_subscription_does_not_busy_loop_the_deliverer(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """While one subscription is at its in-flight cap with more of its deliveries due, and
    nothing else is due, the deliverer sleeps (until a slot frees, a wake-up or the poll)
    instead of re-running its claim query in a tight loop."""
    receiver.script("/hang", [hang(60)])
    sub = add_subscription(conn, receiver.url("/hang"), timeout_ms=10_000)
    _predispatch(conn, sub, 30)
    async with running_relay(database_url, concurrency=8, poll_interval=1.0) as relay:
        cap = relay.config.effective_subscription_concurrency
        await receiver.wait_for(cap, path="/hang", timeout=10)
        before = _claims(relay)
        await asyncio.sleep(3.0)
        rate = (_claims(relay) - before) / 3.0
    report("saturated_idle", delivery_claims_per_s=round(rate, 1))
    # With a 1 s poll a sleeping deliverer claims a few times a second at most.
    assert rate < 20, f"{rate:.0f} claim queries per second while nothing can be claimed"


async def test_paused_subscription_backlog_does_not_busy_loop_the_deliverer(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """An operator pauses (disables) a subscription that has pending deliveries: relay does not
    claim them, and while nothing else is due the deliverer sleeps instead of spinning on its
    claim query (a paused backlog is an ordinary, long-lived state)."""
    sub = add_subscription(conn, receiver.url())
    _predispatch(conn, sub, 5)
    conn.execute("UPDATE relay.subscriptions SET enabled = false WHERE id = %s", (sub,))
    async with running_relay(database_url, poll_interval=1.0) as relay:
        await asyncio.sleep(0.5)
        before = _claims(relay)
        await asyncio.sleep(3.0)
        rate = (_claims(relay) - before) / 3.0
    report("paused_idle", delivery_claims_per_s=round(rate, 1))
    assert receiver.requests == []
    assert rate < 20, f"{rate:.0f} claim queries per second while nothing can be claimed"


async def test_caps_hold_when_dispatch_and_claim_race(
    conn: Conn, database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a slow database round trip (``release`` takes 1.5 s), a dispatch that leases new
    deliveries and a claim by the deliverer overlap: still at most ``concurrency`` attempts
    run at once, and at most the subscription cap go to one (hanging) endpoint."""
    original = PgStore.release

    async def slow_release(self: PgStore, jobs: Any) -> int:
        await asyncio.sleep(1.5)
        return await original(self, jobs)

    monkeypatch.setattr(PgStore, "release", slow_release)
    receiver.script("/hang", [hang(60)])
    add_subscription(conn, receiver.url("/hang"), timeout_ms=10_000)
    for i in range(30):
        conn.execute("SELECT relay.emit('order.created', jsonb_build_object('i', %s::int))", (i,))
    peak_total = peak_sub = 0
    async with running_relay(database_url, concurrency=8, poll_interval=1.0) as relay:
        cap = relay.config.effective_subscription_concurrency
        loop = asyncio.get_running_loop()
        end = loop.time() + 3.0
        while loop.time() < end:
            peak_total = max(peak_total, len(relay.attempts.in_flight))
            per_sub = Counter(job.subscription_id for job in relay.attempts.in_flight.values())
            peak_sub = max(peak_sub, max(per_sub.values(), default=0))
            await asyncio.sleep(0.01)
        requests = len(receiver.requests)
    report(
        "cap_race",
        concurrency=8,
        cap=cap,
        peak_in_flight=peak_total,
        peak_one_subscription=peak_sub,
        requests_to_hanging=requests,
    )
    assert peak_total <= 8 and peak_sub <= cap and requests <= cap


def test_three_relays_share_the_work_and_never_deliver_twice(
    conn: Conn, database_url: str, relay_procs: StartRelay, tmp_path: Path
) -> None:
    """Three relay processes on one database: every webhook-id arrives exactly once, one
    attempt row per delivery, and every relay recorded some of the attempts."""
    n = scaled(900, 5000)
    with start_receiver_process(tmp_path, delay=0.005) as rx:
        add_subscription(conn, rx.url)
        relays = [
            relay_procs(database_url, relay_id=f"r{i}", concurrency=8, poll_interval=0.5)
            for i in range(3)
        ]
        # Wait until all three are up (heartbeat rows) before the work arrives.
        wait_sync(
            lambda: scalar(conn, "SELECT count(*) FROM relay.relays") == 3, 30, "three relays"
        )
        t0 = time.monotonic()
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created', jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (n,),
        )
        wait_sync(
            lambda: (
                scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
                == n
            ),
            120,
            "every delivery",
        )
        took = time.monotonic() - t0
        for relay in relays:
            relay.signal(signal.SIGTERM)
        for relay in relays:
            assert relay.wait(30) == 0
        records = rx.records()
    ids = Counter(r["webhook_id"] for r in records)
    assert len(ids) == n and max(ids.values()) == 1, "each webhook-id exactly once"
    assert scalar(conn, "SELECT count(*) FROM relay.delivery_attempts") == n
    assert scalar(conn, "SELECT max(attempts) FROM relay.deliveries") == 1
    share = dict(
        conn.execute(
            "SELECT relay_id, count(*) FROM relay.delivery_attempts GROUP BY relay_id"
        ).fetchall()
    )
    report("three_relays", events=n, duplicates=0, attempts_per_relay=share, seconds=round(took, 1))
    assert set(share) == {"r0", "r1", "r2"}, share
    assert all(count > 0 for count in share.values())
