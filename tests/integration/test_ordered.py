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


# -- with issue 14's settling (0005): both designs park at 'infinity' -------------------------


def _state(conn: Conn) -> list[tuple[int, str, bool]]:
    """(outbox id, status, parked) of every delivery, in outbox id order."""
    return [(r["outbox_id"], r["status"], r["parked"]) for r in rows(conn)]


def test_disabled_while_its_head_retries_then_enable_makes_only_the_head_due(
    conn: Conn,
) -> None:
    """An ordered subscription disabled while its head is in flight: the head's retry is
    parked (0005), its successors stay parked; `enable` makes only the head due (not the
    successors, although all three are parked alike), and its end promotes the next."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    a1, a2, a3 = (emit_agg(conn, "A", i) for i in (1, 2, 3))
    (job,) = dispatch(conn, lease_limit=10)
    assert job["outbox_id"] == a1
    admin.set_enabled(conn, sub, False)
    ack(conn, job["id"], "retry")
    assert _state(conn) == [(a1, "pending", True), (a2, "pending", True), (a3, "pending", True)]
    assert claim(conn) == []
    admin.set_enabled(conn, sub, True)
    assert _state(conn) == [(a1, "pending", False), (a2, "pending", True), (a3, "pending", True)]
    assert claim(conn) == [job["id"]]
    ack(conn, job["id"])
    by_outbox = {r["outbox_id"]: r["id"] for r in rows(conn)}
    assert claim(conn) == [by_outbox[a2]]


def test_promotion_never_makes_a_disabled_subscriptions_row_due(conn: Conn) -> None:
    """The head in flight ends while its subscription is disabled: the ack does not promote
    the next one (it would be due for a paused subscription); `enable` then makes it due as
    the aggregate's new head, and only it."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    a1, a2, a3 = (emit_agg(conn, "A", i) for i in (1, 2, 3))
    (job,) = dispatch(conn, lease_limit=10)
    admin.set_enabled(conn, sub, False)
    ack(conn, job["id"])
    assert _state(conn) == [(a1, "delivered", False), (a2, "pending", True), (a3, "pending", True)]
    (n,) = conn.execute("SELECT relay.unpark_ordered_heads()").fetchone() or (0,)
    assert n == 0  # nor does the safety net
    assert claim(conn) == []
    admin.set_enabled(conn, sub, True)
    assert _state(conn) == [(a1, "delivered", False), (a2, "pending", False), (a3, "pending", True)]
    assert len(claim(conn)) == 1


def test_claim_parks_the_due_head_of_a_disabled_ordered_subscription(conn: Conn) -> None:
    """A due head of a subscription disabled behind the statements' back (as a race would
    leave it): the claim parks it (0005) and takes nothing else of the aggregate."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    a1, a2 = (emit_agg(conn, "A", i) for i in (1, 2))
    dispatch(conn)
    conn.execute("UPDATE relay.subscriptions SET enabled = false WHERE id = %s", (sub,))
    assert claim(conn) == []
    assert _state(conn) == [(a1, "pending", True), (a2, "pending", True)]


def test_removed_ordered_subscription_ends_its_parked_successors_dead(conn: Conn) -> None:
    """`subscription remove` ends every pending delivery dead, parked successors included."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    for i in (1, 2, 3):
        emit_agg(conn, "A", i)
    dispatch(conn, lease_limit=10)
    assert admin.remove_subscription(conn, sub) == 3
    assert [st for _, st, _ in _state(conn)] == ["dead", "dead", "dead"]


def test_claim_ending_a_removed_subscriptions_head_ends_its_parked_rows_too(
    conn: Conn,
) -> None:
    """A removed subscription's rows left pending (the removal's own statement did not see
    them): the claim ends the due head dead (0005) and, since no claim ever meets parked
    rows, the parked successors with it, rather than leaving them pending for ever."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    other = add_subscription(conn, "http://127.0.0.1:9/other", ordered=True)
    for i in (1, 2, 3):
        emit_agg(conn, "A", i)
    dispatch(conn)
    conn.execute(
        "UPDATE relay.subscriptions SET removed_at = now(), enabled = false WHERE id = %s",
        (sub,),
    )
    assert len(claim(conn)) == 1  # the other subscription's head only
    statuses = {
        (r["subscription_id"], r["outbox_id"]): (r["status"], r["parked"]) for r in rows(conn)
    }
    assert [st for (s, _), (st, _) in statuses.items() if s == sub] == ["dead"] * 3
    # the other subscription's successors are untouched: parked behind its leased head
    assert [p for (s, _), (_, p) in statuses.items() if s == other] == [False, True, True]
    errors = conn.execute(
        "SELECT DISTINCT last_error FROM relay.deliveries WHERE subscription_id = %s", (sub,)
    ).fetchall()
    assert errors == [("subscription removed",)]


def test_claim_ending_a_foreign_head_dead_promotes_the_next(conn: Conn) -> None:
    """The claim ends dead a head whose event is not of the subscription's tenant (0005);
    as when an ack ends it dead, the next delivery of the aggregate proceeds."""
    add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True, tenant_id="t1")
    for i in (1, 2):
        conn.execute(
            "SELECT relay.emit('order.created', %s::jsonb, 'A', 't1')",
            (json.dumps({"agg": "A", "seq": i}),),
        )
    dispatch(conn)
    first, second = (r["id"] for r in rows(conn))
    conn.execute("UPDATE relay.deliveries SET tenant_id = 't2' WHERE id = %s", (first,))
    assert claim(conn) == []  # the head ends dead; the next is promoted by that claim
    assert [(st, p) for _, st, p in _state(conn)] == [("dead", False), ("pending", False)]
    assert claim(conn) == [second]


def test_saturated_claim_keeps_the_guard(conn: Conn) -> None:
    """With a saturated subscription the claim takes each other subscription's rows from
    its own index (0005): the ordering guard holds there too."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=True)
    busy = add_subscription(conn, "http://127.0.0.1:9/busy", events=["test.*"])
    a1, a2 = (emit_agg(conn, "A", i) for i in (1, 2))
    n1 = emit_agg(conn, None, 1, "test.registered")
    dispatch(conn)
    conn.execute("UPDATE relay.deliveries SET next_attempt_at = now()")  # unpark all
    mine = {r["outbox_id"]: r["id"] for r in rows(conn) if r["subscription_id"] == sub}
    got = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM relay.claim_deliveries(100, %s, 'test', %s, 60)",
            ([busy], uuid.uuid4()),
        )
    ]
    # A's head and the event without an aggregate; not A's second, nor the busy one's row
    assert sorted(got) == sorted([mine[a1], mine[n1]]), (got, mine)
    assert mine[a2] not in got


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
