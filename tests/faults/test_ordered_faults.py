"""Ordered subscriptions where it is hard: kill -9 with the head in flight, several relays,
a switch to ordered with deliveries pending, and apps committing out of id order. Real
``relay run`` processes and a receiver process (its log survives the relays)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from relay import admin
from tests.faults._util import Conn, report, scalar, wait_sync
from tests.faults.conftest import StartRelay
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription


def emit(conn: Conn, agg: str | None, seq: int) -> int:
    return int(
        scalar(
            conn,
            "SELECT relay.emit('order.created', %s::jsonb, %s)",
            (json.dumps({"agg": agg, "seq": seq}), agg),
        )
    )


def arrivals(records: list[dict[str, Any]]) -> list[tuple[str, int, float, int]]:
    out = []
    for r in records:
        body = json.loads(r["body"])
        out.append((body["agg"], int(body["seq"]), float(r["received_at"]), int(r["status"])))
    return out


def first_successes(records: list[dict[str, Any]]) -> dict[str, list[int]]:
    seen: set[str] = set()
    order: dict[str, list[int]] = {}
    for r in records:
        if r["status"] < 300 and r["webhook_id"] not in seen:
            seen.add(r["webhook_id"])
            body = json.loads(r["body"])
            order.setdefault(body["agg"], []).append(int(body["seq"]))
    return order


def all_delivered(conn: Conn, n: int) -> bool:
    done = scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
    return bool(done == n)


def test_kill_9_with_the_head_in_flight_successor_waits_for_the_lease(
    conn: Conn, database_url: str, relay_procs: StartRelay, tmp_path: Path
) -> None:
    """The relay holding an aggregate's head dies mid-request; its successor (another relay,
    at once) waits for the lease to expire, retakes the head, and only then sends the rest."""
    with start_receiver_process(tmp_path, delay=1.0) as rx:
        add_subscription(conn, rx.url, ordered=True, timeout_ms=2000)  # lease: 2 s + 5 s
        first = relay_procs(database_url, lease_seconds=1)
        for seq in (1, 2, 3):
            emit(conn, "A", seq)
        rx.wait_for(1, timeout=20)
        first.kill()
        killed_at = time.time()
        relay_procs(database_url, lease_seconds=1)
        wait_sync(lambda: all_delivered(conn, 3), 40, "all delivered after the crash")
        got = arrivals(rx.records())
    seqs = [s for _, s, _, _ in got]
    # the head twice (the killed relay's request, then its retake), then the rest in order
    assert seqs == [1, 1, 2, 3], got
    retaken_at = got[1][2]
    assert retaken_at - killed_at > 4.0, "the head was retaken before its lease expired"
    report("ordered kill -9", head_retaken_after_s=round(retaken_at - killed_at, 2))


def test_several_relays_keep_each_aggregates_order(
    conn: Conn, database_url: str, relay_procs: StartRelay, tmp_path: Path
) -> None:
    """Three relays, events emitted while they run (their dispatches race on one aggregate's
    rows), a receiver failing every 7th request."""
    aggregates, per = 12, 8
    with start_receiver_process(tmp_path, fail_every=7) as rx:
        add_subscription(conn, rx.url, ordered=True, backoff_ms=50, max_retries=20)
        for _ in range(3):
            relay_procs(database_url, concurrency=16)
        for seq in range(per):
            for a in range(aggregates):
                emit(conn, f"agg-{a}", seq)
        emit_count = aggregates * per
        wait_sync(lambda: all_delivered(conn, emit_count), 60, "all delivered")
        order = first_successes(rx.records())
    assert sorted(order) == sorted(f"agg-{a}" for a in range(aggregates))
    for agg, seqs in order.items():
        assert seqs == list(range(per)), (agg, seqs)


def test_switch_to_ordered_with_deliveries_pending(
    conn: Conn, database_url: str, relay_procs: StartRelay, tmp_path: Path
) -> None:
    """Deliveries fanned out while the subscription was unordered are delivered in order
    once it is ordered (none was in flight at the switch)."""
    with start_receiver_process(tmp_path, fail_every=5) as rx:
        sub = add_subscription(conn, rx.url, backoff_ms=50, max_retries=20)
        for seq in range(10):
            for agg in ("A", "B", "C"):
                emit(conn, agg, seq)
        # fanned out (pending, due now), as a relay that stopped would have left them
        conn.execute("SELECT * FROM relay.dispatch_outbox(500, 0, 'gone', gen_random_uuid(), 60)")
        assert scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'") == 30
        admin.update_subscription(conn, sub, admin.SubscriptionChanges(ordered=True))
        relay_procs(database_url)
        relay_procs(database_url)
        wait_sync(lambda: all_delivered(conn, 30), 60, "all delivered")
        order = first_successes(rx.records())
    for agg in ("A", "B", "C"):
        assert order[agg] == list(range(10)), (agg, order[agg])


def test_commit_order_is_not_id_order_unless_the_app_locks_the_aggregate(
    conn: Conn, database_url: str, relay_procs: StartRelay, tmp_path: Path
) -> None:
    """Ids are not commit order. An app that emits A1 in a transaction that commits after
    another emitted (and committed) A2 gets A2 first: the order holds among the rows visible
    when they are dispatched. Locking the aggregate's row in the emitting transaction (what
    the README tells apps to do) makes id order commit order, and the order holds."""
    conn.execute("CREATE TABLE public.orders (id text PRIMARY KEY, state text)")
    conn.execute("INSERT INTO public.orders VALUES ('unlocked', 'new'), ('locked', 'new')")
    with start_receiver_process(tmp_path) as rx:
        add_subscription(conn, rx.url, ordered=True)
        relay_procs(database_url)
        # 1. no lock: A1 (lower id) commits after A2 was delivered
        with psycopg.connect(database_url) as slow:
            first = emit(slow, "unlocked", 1)  # uncommitted
            second = emit(conn, "unlocked", 2)
            assert first < second
            wait_sync(lambda: all_delivered(conn, 1), 20, "A2 delivered")
            slow.commit()
        wait_sync(lambda: all_delivered(conn, 2), 20, "A1 delivered")
        assert first_successes(rx.records())["unlocked"] == [2, 1]

        # 2. the app locks the aggregate's row: the second emitter waits for the first commit
        def app_transaction(seq: int, hold: float, started: threading.Event) -> None:
            with psycopg.connect(database_url) as app:
                app.execute("SELECT 1 FROM public.orders WHERE id = 'locked' FOR UPDATE")
                started.set()
                emit(app, "locked", seq)
                time.sleep(hold)
                app.execute("UPDATE public.orders SET state = %s WHERE id = 'locked'", (str(seq),))

        t1_started, t2_started = threading.Event(), threading.Event()
        t1 = threading.Thread(target=app_transaction, args=(1, 1.0, t1_started))
        t1.start()
        t1_started.wait(10)
        t2 = threading.Thread(target=app_transaction, args=(2, 0.0, t2_started))
        t2.start()
        t1.join(20)
        t2.join(20)
        wait_sync(lambda: all_delivered(conn, 4), 20, "both delivered")
        assert first_successes(rx.records())["locked"] == [1, 2]
