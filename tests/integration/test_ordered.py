"""Ordered subscriptions: one delivery at a time per (subscription, aggregate), in outbox id
order; real Postgres, real HTTP (the contract: DESIGN.md "Ordered subscriptions")."""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from relay import admin
from tests.receiver import Received, Receiver, respond
from tests.relayctx import add_subscription, running_relay, wait_until

Conn = psycopg.Connection[Any]


def emit_agg(conn: Conn, aggregate: str | None, seq: int, event_type: str = "order.created") -> int:
    """Emit an event of ``aggregate`` whose payload says which it is."""
    row = conn.execute(
        "SELECT relay.emit(%s, %s::jsonb, %s)",
        (event_type, json.dumps({"agg": aggregate, "seq": seq}), aggregate),
    ).fetchone()
    assert row is not None
    return int(row[0])


def seqs(requests: list[Received], aggregate: str | None) -> list[int]:
    return [int(r.json["seq"]) for r in requests if r.json["agg"] == aggregate]


def rows(conn: Conn) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT d.id, d.outbox_id, d.subscription_id, d.status,"
            " d.next_attempt_at = 'infinity' AS parked"
            " FROM relay.deliveries d ORDER BY d.outbox_id, d.subscription_id"
        )
        return cur.fetchall()


def dispatch(conn: Conn, lease_limit: int = 0) -> list[dict[str, Any]]:
    """One dispatch statement, as a relay runs it; returns the leased jobs."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "SELECT * FROM relay.dispatch_outbox(500, %s, 'test', %s, 60)",
            (lease_limit, uuid.uuid4()),
        )
        return [r for r in cur.fetchall() if r["id"] is not None]


def claim(conn: Conn, limit: int = 100) -> list[int]:
    return [
        int(r[0])
        for r in conn.execute(
            "SELECT id FROM relay.claim_deliveries(%s, '{}', 'test', %s, 60)",
            (limit, uuid.uuid4()),
        )
    ]


def ack(conn: Conn, delivery_id: int, outcome: str = "delivered") -> None:
    (token,) = conn.execute(
        "SELECT lease_token FROM relay.deliveries WHERE id = %s", (delivery_id,)
    ).fetchone() or (None,)
    assert token is not None, f"delivery {delivery_id} is not leased"
    conn.execute(
        "SELECT * FROM relay.ack_deliveries('test', %s, %s, %s, '{0}', '{204}', '{NULL}',"
        " ARRAY[now()], '{1}', '{NULL}')",
        ([delivery_id], [token], [outcome]),
    )


# -- the statements ---------------------------------------------------------------------------


def test_dispatch_parks_later_events_of_an_aggregate_and_the_ack_promotes_the_next(
    conn: Conn,
) -> None:
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    a1, a2, a3 = (emit_agg(conn, "A", i) for i in (1, 2, 3))
    b1 = emit_agg(conn, "B", 1)
    n1 = emit_agg(conn, None, 1)
    jobs = dispatch(conn, lease_limit=10)
    # the heads (and the event without aggregate) are leased at once; the rest are parked
    assert sorted(j["outbox_id"] for j in jobs) == [a1, b1, n1]
    parked = {r["outbox_id"]: r["parked"] for r in rows(conn)}
    assert parked == {a1: False, a2: True, a3: True, b1: False, n1: False}
    assert all(r["subscription_id"] == sub for r in rows(conn))
    assert claim(conn) == []  # nothing else may go
    by_outbox = {r["outbox_id"]: r["id"] for r in rows(conn)}
    ack(conn, by_outbox[a1], "retry")  # a retrying head holds its successors back
    conn.execute(
        "UPDATE relay.deliveries SET next_attempt_at = now() WHERE id = %s", (by_outbox[a1],)
    )
    assert claim(conn) == [by_outbox[a1]]
    ack(conn, by_outbox[a1], "dead")  # a dead head lets the next proceed
    assert claim(conn) == [by_outbox[a2]]
    ack(conn, by_outbox[a2])
    assert claim(conn) == [by_outbox[a3]]


def test_unordered_subscription_fans_out_as_before(conn: Conn) -> None:
    add_subscription(conn, "http://127.0.0.1:9/hook")
    for i in (1, 2, 3):
        emit_agg(conn, "A", i)
    assert len(dispatch(conn, lease_limit=10)) == 3
    assert not any(r["parked"] for r in rows(conn))


def test_claim_guard_holds_back_a_due_successor(conn: Conn) -> None:
    """Parking is for speed; the claim's own test keeps the order even for a due row."""
    add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    emit_agg(conn, "A", 1)
    emit_agg(conn, "A", 2)
    dispatch(conn)
    conn.execute("UPDATE relay.deliveries SET next_attempt_at = now()")  # unpark all
    first, second = (r["id"] for r in rows(conn))
    assert claim(conn) == [first]
    assert claim(conn) == []
    due = conn.execute("SELECT * FROM relay.deliveries WHERE id = %s", (second,)).fetchone()
    assert due is not None
    # the deliverer's "when is the next one due" ignores it too (or it would spin)
    from relay.sql import q

    (until,) = conn.execute(q("seconds_until_due"), {"saturated": []}).fetchone() or (None,)
    assert until is None or until > 0


def test_earlier_undispatched_event_holds_a_later_one(conn: Conn) -> None:
    """Two relays dispatching one aggregate's events at once: the later one, dispatched
    while the earlier is still in the outbox (claimed by the other relay), waits."""
    add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    a1 = emit_agg(conn, "A", 1)
    a2 = emit_agg(conn, "A", 2)
    with psycopg.connect(conn.info.dsn) as other:
        # the other relay holds a1 (its dispatch statement runs)
        other.execute("SELECT id FROM relay.outbox WHERE id = %s FOR UPDATE", (a1,))
        jobs = dispatch(conn, lease_limit=10)  # takes a2 only (a1 is locked: SKIP LOCKED)
        assert jobs == []
        assert [(r["outbox_id"], r["parked"]) for r in rows(conn)] == [(a2, True)]
        other.rollback()
    jobs = dispatch(conn, lease_limit=10)
    assert [j["outbox_id"] for j in jobs] == [a1]
    ack(conn, jobs[0]["id"])
    assert len(claim(conn)) == 1  # a2, promoted by a1's ack


def test_safety_net_unparks_a_head_nobody_promoted(conn: Conn) -> None:
    add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    emit_agg(conn, "A", 1)
    emit_agg(conn, "A", 2)
    dispatch(conn)
    first, second = (r["id"] for r in rows(conn))
    # the head ends behind the statements' back (as after a crash of this very logic)
    conn.execute("UPDATE relay.deliveries SET status = 'delivered' WHERE id = %s", (first,))
    assert claim(conn) == []
    (n,) = conn.execute("SELECT relay.unpark_ordered_heads()").fetchone() or (0,)
    assert n == 1
    assert claim(conn) == [second]


# -- operator changes -------------------------------------------------------------------------


def test_switch_to_ordered_parks_pending_successors_and_back(conn: Conn) -> None:
    sub = add_subscription(conn, "http://127.0.0.1:9/hook")
    for i in (1, 2, 3):
        emit_agg(conn, "A", i)
    emit_agg(conn, "B", 1)
    dispatch(conn)
    assert not any(r["parked"] for r in rows(conn))
    admin.update_subscription(conn, sub, admin.SubscriptionChanges(ordered=True))
    assert [r["parked"] for r in rows(conn)] == [False, True, True, False]
    assert len(claim(conn)) == 2  # A's head and B's
    admin.update_subscription(conn, sub, admin.SubscriptionChanges(ordered=False))
    assert not any(r["parked"] for r in rows(conn))
    assert len(claim(conn)) == 2


def test_enable_makes_only_heads_due(conn: Conn) -> None:
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    for i in (1, 2, 3):
        emit_agg(conn, "A", i)
    dispatch(conn)
    admin.set_enabled(conn, sub, False)
    assert all(r["parked"] for r in rows(conn))
    admin.set_enabled(conn, sub, True)
    assert [r["parked"] for r in rows(conn)] == [False, True, True]


def test_replay_of_an_earlier_delivery_parks_the_pending_later_ones(conn: Conn) -> None:
    add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True, max_retries=0)
    for i in (1, 2, 3):
        emit_agg(conn, "A", i)
    jobs = dispatch(conn, lease_limit=10)
    ack(conn, jobs[0]["id"], "dead")
    (second,) = claim(conn)
    assert [r["parked"] for r in rows(conn)][2] is True
    ack(conn, second, "dead")
    third = rows(conn)[2]
    assert not third["parked"]  # promoted, not yet claimed
    admin.replay(conn, [jobs[0]["id"]])
    assert [r["parked"] for r in rows(conn)] == [False, False, True]
    assert claim(conn) == [jobs[0]["id"]]


# -- end to end ---------------------------------------------------------------------------------


async def test_retrying_head_holds_back_only_its_own_aggregate(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    receiver.script("/hook", [respond(500), respond(204)])
    add_subscription(conn, receiver.url(), ordered=True, backoff_ms=1500)
    async with running_relay(database_url):
        emit_agg(conn, "A", 1)
        await receiver.wait_for(1)  # A1 failed: retried in 1.5 s
        emit_agg(conn, "A", 2)
        emit_agg(conn, "A", 3)
        emit_agg(conn, "B", 1)
        emit_agg(conn, "B", 2)
        emit_agg(conn, None, 1)
        await receiver.wait_for(4)
        # B and the event without an aggregate went through; A waits for its head
        assert seqs(receiver.requests, "A") == [1]
        await receiver.wait_for(7, timeout=15)
    assert seqs(receiver.requests, "A") == [1, 1, 2, 3]
    assert seqs(receiver.requests, "B") == [1, 2]


async def test_dead_head_lets_the_next_proceed_and_stays_replayable(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    receiver.script("/hook", [respond(500), respond(204)])
    add_subscription(conn, receiver.url(), ordered=True, max_retries=0)
    async with running_relay(database_url):
        first = emit_agg(conn, "A", 1)
        await receiver.wait_for(1)
        emit_agg(conn, "A", 2)
        await receiver.wait_for(2)
        (dead,) = [r for r in rows(conn) if r["outbox_id"] == first]
        assert dead["status"] == "dead"
        admin.replay(conn, [dead["id"]])
        await receiver.wait_for(3)
        await wait_until(lambda: all(r["status"] == "delivered" for r in rows(conn)))
    # the replayed old event arrives after the newer one: receivers compare a version
    assert seqs(receiver.requests, "A") == [1, 2, 1]


async def test_unordered_does_not_wait_for_a_retrying_event(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    receiver.script("/hook", [respond(500), respond(204)])
    add_subscription(conn, receiver.url(), backoff_ms=1500)
    async with running_relay(database_url):
        emit_agg(conn, "A", 1)
        await receiver.wait_for(1)
        emit_agg(conn, "A", 2)
        await receiver.wait_for(2)
        assert seqs(receiver.requests, "A") == [1, 2]
        await receiver.wait_for(3, timeout=10)
    assert seqs(receiver.requests, "A") == [1, 2, 1]


# -- the CLI ------------------------------------------------------------------------------------


def test_cli_ordered_flags_and_listings(
    conn: Conn, database_url: str, capsys: Any, monkeypatch: Any
) -> None:
    from tests.integration.test_cli import Relay

    monkeypatch.delenv("RELAY_DATABASE_URL", raising=False)
    relay = Relay(database_url, capsys)
    out, _ = relay("subscription", "add", "http://127.0.0.1:9/hook", "--ordered")
    sub = out.strip()
    plain, _ = relay("subscription", "add", "http://127.0.0.1:9/other")
    assert relay.json("subscription", "show", sub)["ordered"] is True
    listed = {str(r["id"]): r["ordered"] for r in relay.json("subscription", "list")}
    assert listed == {sub: True, plain.strip(): False}
    out, _ = relay("subscription", "list")
    assert "ORDERED" in out.splitlines()[0]
    relay("subscription", "update", sub, "--unordered")
    assert relay.json("subscription", "show", sub)["ordered"] is False
    relay("subscription", "update", sub, "--ordered")
    assert relay.json("subscription", "show", sub)["ordered"] is True
    # both at once: refused (argparse: exit 2), nothing changed
    _, err = relay("subscription", "update", sub, "--ordered", "--unordered", expect=2)
    assert "--unordered" in err
    assert relay.json("subscription", "show", sub)["ordered"] is True
    # `add` has no --unordered: it is the default
    relay("subscription", "add", "http://127.0.0.1:9/x", "--unordered", expect=2)
