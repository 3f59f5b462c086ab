"""Operator actions racing the daemon (issue 14): a remove, a disable, a tenant change or a
replay never strands, leaks or duplicates work. Real Postgres, the daemon's own statements."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from typing import Any

import psycopg
import pytest

from relay import admin
from relay.errors import Conflict, ValidationError
from tests.faults._util import Conn, scalar
from tests.relayctx import add_subscription, deliveries, emit


def _dispatch_uncommitted(database_url: str) -> psycopg.Connection[Any]:
    """A connection inside a transaction that ran one dispatch (leasing 1 delivery), not yet
    committed: a relay between its dispatch statement and its commit."""
    tx = psycopg.connect(database_url)
    tx.execute(
        "SELECT * FROM relay.dispatch_outbox(100, 1, 'racer', %s, 60)", (uuid.uuid4(),)
    ).fetchall()
    return tx


def _emit_three(conn: Conn, ordered: bool) -> None:
    """Three events; for an ordered subscription, of one aggregate (so the dispatch takes its
    ordered path, 0006: the first is the head, the other two are parked behind it)."""
    for i in range(3):
        if ordered:
            conn.execute("SELECT relay.emit('order.created', %s::jsonb, 'A')", (f'{{"n": {i}}}',))
        else:
            emit(conn, "order.created", {"n": i})


def _operate(c: psycopg.Connection[Any], action: str, sub: int) -> None:
    if action == "remove":
        admin.remove_subscription(c, sub)
    else:
        admin.set_enabled(c, sub, False)


def _settled(conn: Conn, action: str) -> None:
    """Nothing of the subscription is left to send: no pending row (remove), or every
    waiting row parked and none leased to the racing relay (disable)."""
    if action == "remove":
        assert scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'") == 0
    else:
        unparked = scalar(
            conn,
            "SELECT count(*) FROM relay.deliveries WHERE next_attempt_at <> 'infinity'"
            " AND lease_token IS NULL",
        )
        assert unparked == 0


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
@pytest.mark.parametrize("action", ["remove", "disable"])
def test_operator_action_racing_a_dispatch_strands_nothing(
    conn: Conn, database_url: str, action: str, ordered: bool
) -> None:
    """A dispatch fans out to a subscription while the operator removes (or disables) it,
    the dispatch first. The operator's statement waits for it and settles what it made."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=ordered)
    _emit_three(conn, ordered)
    tx = _dispatch_uncommitted(database_url)

    def operate() -> None:
        with psycopg.connect(database_url, autocommit=True) as c:
            _operate(c, action, sub)

    worker = threading.Thread(target=operate)
    worker.start()
    tx.commit()
    tx.close()
    worker.join(10)
    assert scalar(conn, "SELECT count(*) FROM relay.deliveries") == 3
    _settled(conn, action)


@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
@pytest.mark.parametrize("action", ["remove", "disable"])
def test_dispatch_racing_an_operator_action_sends_nothing(
    conn: Conn, database_url: str, action: str, ordered: bool
) -> None:
    """The operator's transaction holds the subscription when a dispatch starts. Before: the
    dispatch waited only for its foreign-key check, then fanned out from its old snapshot:
    new deliveries pending forever on a removed subscription, the leased one sent after
    the removal. Now the dispatch's lock re-reads the subscription and creates nothing."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook", ordered=ordered)
    _emit_three(conn, ordered)
    op = psycopg.connect(database_url)
    op.execute("SELECT 1")  # a transaction is open: the admin call below is a savepoint in it
    _operate(op, action, sub)  # not committed yet
    result: list[Any] = []

    def dispatch() -> None:
        with psycopg.connect(database_url, autocommit=True) as c:
            result.extend(
                c.execute(
                    "SELECT id FROM relay.dispatch_outbox(100, 1, 'racer', %s, 60)",
                    (uuid.uuid4(),),
                ).fetchall()
            )

    worker = threading.Thread(target=dispatch)
    worker.start()
    worker.join(0.5)  # it waits for the operator's transaction
    op.commit()
    op.close()
    worker.join(10)
    assert result == [(None,)]  # no job leased (one row of counts, no job columns)
    assert scalar(conn, "SELECT count(*) FROM relay.deliveries") == 0
    assert scalar(conn, "SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL") == 0


def test_claim_with_a_saturated_subscription_does_not_walk_its_backlog(
    conn: Conn,
) -> None:
    """One subscription at its cap with 5,000 due deliveries, another with 10. Before: the
    claim skipping the saturated one walked all of its due rows (O(backlog) per claim). Now
    it reads each other subscription's rows from their own index. Measured as index tuples
    fetched in the claim's transaction (pg_stat_xact_user_tables), not time."""
    slow = add_subscription(conn, "http://127.0.0.1:9/slow")
    fast = add_subscription(conn, "http://127.0.0.1:9/fast")
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, dispatched_at)"
        " SELECT 'order.created', '{}', now() FROM generate_series(1, 5010)"
    )
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type, next_attempt_at)"
        " SELECT id, CASE WHEN id <= 5000 THEN %s ELSE %s END, 'order.created',"
        "        now() - interval '1 hour' + id * interval '1 ms'"
        " FROM relay.outbox",
        (slow, fast),
    )
    conn.execute("ANALYZE relay.deliveries")
    with conn.transaction():
        claimed = conn.execute(
            "SELECT id FROM relay.claim_deliveries(10, %s, 'r', %s, 60)",
            ([slow], uuid.uuid4()),
        ).fetchall()
        fetched = scalar(
            conn,
            "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables"
            " WHERE schemaname = 'relay' AND relname = 'deliveries'",
        )
    assert len(claimed) == 10
    assert fetched < 500, fetched


def test_update_disabled_alone_disables_and_parks(conn: Conn) -> None:
    """`subscription update ID --disabled` (offered by its help) answered "nothing to
    update"; now it disables and parks the waiting deliveries like `disable`."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook")
    emit(conn, "order.created", {})
    conn.execute("SELECT * FROM relay.dispatch_outbox(10, 0, 'r', %s, 60)", (uuid.uuid4(),))
    admin.update_subscription(conn, sub, admin.SubscriptionChanges(enabled=False))
    assert scalar(conn, "SELECT enabled FROM relay.subscriptions WHERE id = %s", (sub,)) is False
    assert scalar(conn, "SELECT next_attempt_at = 'infinity' FROM relay.deliveries") is True


def test_delivery_list_json_with_a_paused_subscription(conn: Conn, database_url: str) -> None:
    """Once a paused subscription holds pending deliveries, `relay delivery list --json`
    failed: "timestamp too large (after year 10K): 'infinity'". Now a parked row shows
    next_attempt_at null."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook")
    emit(conn, "order.created", {})
    conn.execute("SELECT * FROM relay.dispatch_outbox(10, 0, 'r', %s, 60)", (uuid.uuid4(),))
    admin.set_enabled(conn, sub, False)
    out = subprocess.run(
        [sys.executable, "-m", "relay", "delivery", "list", "--json"],
        env={"RELAY_DATABASE_URL": database_url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert '"next_attempt_at": null' in out.stdout


def test_replay_of_a_delivery_in_flight_is_refused(conn: Conn) -> None:
    """`relay replay ID` on a leased delivery cleared its lease: sent twice. Now refused with
    the reason; nothing changes."""
    add_subscription(conn, "http://127.0.0.1:9/hook")
    emit(conn, "order.created", {})
    conn.execute("SELECT * FROM relay.dispatch_outbox(10, 1, 'relay-a', %s, 60)", (uuid.uuid4(),))
    (d,) = deliveries(conn)
    assert d["lease_token"] is not None
    with pytest.raises(Conflict, match="in flight"):
        admin.replay(conn, [d["id"]])
    (after,) = deliveries(conn)
    assert after["lease_token"] == d["lease_token"]


def test_tenant_change_keeps_other_tenants_work_away(conn: Conn) -> None:
    """After `subscription update ID --tenant X`, pending and replayed deliveries of other
    tenants' events were still sent. Now the change is refused while such work is pending,
    a replay of it is refused, and a claim ends any that slips through dead with the reason."""
    sub = add_subscription(conn, "http://127.0.0.1:9/hook")
    emit(conn, "order.created", {}, tenant="acme")
    emit(conn, "order.created", {}, tenant="other")
    conn.execute("SELECT * FROM relay.dispatch_outbox(10, 0, 'r', %s, 60)", (uuid.uuid4(),))
    with pytest.raises(ValidationError, match="tenant"):
        admin.update_subscription(conn, sub, admin.SubscriptionChanges(tenant_id="acme"))
    assert scalar(conn, "SELECT tenant_id FROM relay.subscriptions WHERE id = %s", (sub,)) is None
    # Forced by SQL (an older relay, the API): the claim refuses to send the other tenant's.
    conn.execute("UPDATE relay.subscriptions SET tenant_id = 'acme' WHERE id = %s", (sub,))
    jobs = conn.execute(
        "SELECT tenant_id FROM relay.claim_deliveries(10, '{}', 'r', %s, 60)", (uuid.uuid4(),)
    ).fetchall()
    assert jobs == [("acme",)]
    other = [d for d in deliveries(conn) if d["tenant_id"] == "other"]
    assert other[0]["status"] == "dead" and "tenant" in other[0]["last_error"]
    with pytest.raises(ValidationError, match="another tenant"):
        admin.replay(conn, [other[0]["id"]])
    assert admin.replay_dead(conn) == 0
