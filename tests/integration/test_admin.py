"""Operator operations (relay.admin) against a real Postgres."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from relay import admin
from relay.admin import SubscriptionChanges as Changes
from relay.errors import DatabaseError, NotFound, ValidationError

Conn = psycopg.Connection[Any]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def scalar(conn: Conn, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def counts(conn: Conn) -> tuple[int, ...]:
    return tuple(
        scalar(conn, f"SELECT count(*) FROM relay.{table}")
        for table in ("subscriptions", "deliveries", "outbox", "event_types", "delivery_attempts")
    )


def raw_subscription(conn: Conn, sub_id: int) -> dict[str, Any]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    row = cur.execute("SELECT * FROM relay.subscriptions WHERE id = %s", (sub_id,)).fetchone()
    assert row is not None
    return row


def make_delivery(
    conn: Conn,
    sub_id: int,
    *,
    status: str = "pending",
    attempts: int = 0,
    failures: int = 0,
    event_type: str = "order.created",
    dead_ago: timedelta = timedelta(minutes=5),
) -> int:
    outbox_id = scalar(conn, "SELECT relay.emit(%s, '{\"n\": 1}'::jsonb)", (event_type,))
    delivery_id = scalar(
        conn,
        """INSERT INTO relay.deliveries
               (outbox_id, subscription_id, event_type, status, attempts, failures,
                lease_owner, lease_token, last_status_code, last_error,
                dead_at, delivered_at, next_attempt_at)
           VALUES (%(o)s, %(s)s, %(t)s, %(st)s, %(a)s, %(f)s, 'r1', gen_random_uuid(), 500,
                   'HTTP 500',
                   CASE WHEN %(st)s = 'dead' THEN now() - %(ago)s END,
                   CASE WHEN %(st)s = 'delivered' THEN now() END,
                   now() + interval '1 hour')
           RETURNING id""",
        {"o": outbox_id, "s": sub_id, "t": event_type, "st": status, "a": attempts,
         "f": failures, "ago": dead_ago},
    )  # fmt: skip
    for n in range(1, attempts + 1):
        conn.execute(
            """INSERT INTO relay.delivery_attempts
                   (delivery_id, attempt, relay_id, started_at, duration_ms, status_code,
                    error, response_body)
               VALUES (%s, %s, 'r1', now(), 12.5, %s, %s, %s)""",
            (delivery_id, n, 500 if n % 2 else None, None if n % 2 else "timeout", "x" * 2000),
        )
    return int(delivery_id)


@pytest.fixture
def sub(conn: Conn) -> int:
    return admin.add_subscription(conn, Changes(url="https://example.com/hook")).id


# Subscriptions ----------------------------------------------------------------------------------


def test_add_with_every_field(conn: Conn) -> None:
    result = admin.add_subscription(
        conn,
        Changes(
            url="https://example.com/hook",
            method="get",
            headers={"Authorization": "Bearer t0ken", "X-Team": "ops"},
            events=["order.*", "test.processed"],
            event_names={"order.created": "OrderCreated"},
            body_map='{"type": "$.eventType", "customer.id": "$.userId"}',
            secret=SECRET,
            tenant_id="acme",
            max_retries="5",
            backoff_ms=250,
            timeout_ms=2000,
            enabled=False,
        ),
    )
    assert result.generated_secret is None
    row = raw_subscription(conn, result.id)
    assert row["url"] == "https://example.com/hook"
    assert row["method"] == "GET"
    assert row["headers"] == {"Authorization": "Bearer t0ken", "X-Team": "ops"}
    assert row["events"] == ["order.*", "test.processed"]
    assert row["event_names"] == {"order.created": "OrderCreated"}
    assert row["body_map"] == {"type": "$.eventType", "customer.id": "$.userId"}
    assert row["secret"] == SECRET
    assert row["tenant_id"] == "acme"
    assert (row["max_retries"], row["backoff_ms"], row["timeout_ms"]) == (5, 250, 2000)
    assert row["enabled"] is False


def test_add_defaults(conn: Conn, sub: int) -> None:
    row = raw_subscription(conn, sub)
    assert row["method"] == "POST"
    assert row["headers"] == {} and row["events"] == [] and row["event_names"] == {}
    assert row["body_map"] is None and row["secret"] is None and row["tenant_id"] is None
    assert (row["max_retries"], row["backoff_ms"], row["timeout_ms"]) == (3, 5000, 10000)
    assert row["enabled"] is True and row["removed_at"] is None


def test_add_generates_secret(conn: Conn) -> None:
    result = admin.add_subscription(conn, Changes(url="http://x.io", secret="generate"))
    assert result.generated_secret is not None
    assert result.generated_secret.startswith("whsec_")
    assert raw_subscription(conn, result.id)["secret"] == result.generated_secret


BAD_INPUT = [
    (Changes(url="ftp://x.io"), "url"),
    (Changes(url="http://x.io", method="PUT"), "method"),
    (Changes(url="http://x.io", headers={"X-A": "a\r\nX-Evil: 1"}), "header"),
    (Changes(url="http://x.io", headers={"webhook-signature": "v1,x"}), "header"),
    (Changes(url="http://x.io", events=["order.nope"]), "event"),
    (Changes(url="http://x.io", events=["billing.*"]), "event"),
    (Changes(url="http://x.io", events=["order.*", "Bad"]), "event"),
    (Changes(url="http://x.io", event_names={"order.nope": "X"}), "event_name"),
    (Changes(url="http://x.io", event_names={"order.created": ""}), "event_name"),
    (Changes(url="http://x.io", body_map="[1]"), "body_map"),
    (Changes(url="http://x.io", body_map='{"a": "$$$["}'), "body_map"),
    (Changes(url="http://x.io", secret="whsec_short"), "secret"),
    (Changes(url="http://x.io", secret="plain"), "secret"),
    (Changes(url="http://x.io", tenant_id=""), "tenant"),
    (Changes(url="http://x.io", max_retries=101), "max_retries"),
    (Changes(url="http://x.io", backoff_ms=-1), "backoff_ms"),
    (Changes(url="http://x.io", timeout_ms=0), "timeout_ms"),
    (Changes(url="http://x.io", timeout_ms="10s"), "timeout_ms"),
    (Changes(method="GET"), "url"),
    (Changes(url="http://x.io", clear_secret=True), "options"),
]


@pytest.mark.parametrize(("changes", "field"), BAD_INPUT)
def test_add_refuses_bad_input_and_writes_nothing(conn: Conn, changes: Changes, field: str) -> None:
    before = counts(conn)
    with pytest.raises(ValidationError) as exc:
        admin.add_subscription(conn, changes)
    assert exc.value.field == field
    assert counts(conn) == before


def test_update_merges_and_replaces(conn: Conn) -> None:
    sub_id = admin.add_subscription(
        conn,
        Changes(url="http://a.io", headers={"X-A": "1", "X-B": "2"}, events=["order.*"],
                event_names={"order.created": "OC"}, body_map={"t": "$.eventType"},
                secret=SECRET, tenant_id="acme"),
    ).id  # fmt: skip
    result = admin.update_subscription(
        conn,
        sub_id,
        Changes(url="https://b.io/x", headers={"x-a": "9", "X-C": "3"}, clear_headers=["X-B"],
                events=["test.*"], event_names={"test.processed": "TP"}, max_retries=0),
    )  # fmt: skip
    assert "headers" in result.changed and "url" in result.changed
    row = raw_subscription(conn, sub_id)
    assert row["url"] == "https://b.io/x"
    assert row["headers"] == {"x-a": "9", "X-C": "3"}
    assert row["events"] == ["test.*"]
    assert row["event_names"] == {"order.created": "OC", "test.processed": "TP"}
    assert row["max_retries"] == 0
    assert row["secret"] == SECRET and row["tenant_id"] == "acme"  # untouched
    assert row["updated_at"] >= row["created_at"]

    admin.update_subscription(
        conn,
        sub_id,
        Changes(clear_events=True, clear_body_map=True, clear_secret=True, clear_tenant=True,
                clear_event_names=["order.created"]),
    )  # fmt: skip
    row = raw_subscription(conn, sub_id)
    assert row["events"] == [] and row["body_map"] is None
    assert row["secret"] is None and row["tenant_id"] is None
    assert row["event_names"] == {"test.processed": "TP"}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        (Changes(url="gopher://x"), "url"),
        (Changes(events=["nope.*"]), "event"),
        (Changes(secret=SECRET, clear_secret=True), "secret"),
        (Changes(events=["order.*"], clear_events=True), "event"),
        (Changes(headers={"X-A": "1"}, clear_headers=["x-a"]), "header"),
        (Changes(clear_headers=["X-Missing"]), "header"),
        (Changes(clear_event_names=["order.created"]), "event_name"),
        (Changes(), "options"),
        # One bad field among good ones: the good ones must not be written either.
        (Changes(url="https://good.io", method="GET", timeout_ms=999_999), "timeout_ms"),
    ],
)
def test_update_refuses_bad_input_and_writes_nothing(
    conn: Conn, sub: int, changes: Changes, field: str
) -> None:
    before = raw_subscription(conn, sub)
    with pytest.raises(ValidationError) as exc:
        admin.update_subscription(conn, sub, changes)
    assert exc.value.field == field
    assert raw_subscription(conn, sub) == before


def test_update_generates_secret(conn: Conn, sub: int) -> None:
    result = admin.update_subscription(conn, sub, Changes(secret="generate"))
    assert (
        result.generated_secret and raw_subscription(conn, sub)["secret"] == result.generated_secret
    )


def test_unknown_and_removed_subscriptions(conn: Conn, sub: int) -> None:
    with pytest.raises(NotFound, match="999"):
        admin.update_subscription(conn, 999, Changes(method="GET"))
    with pytest.raises(NotFound):
        admin.get_subscription(conn, 999)
    with pytest.raises(NotFound):
        admin.set_enabled(conn, 999, False)
    with pytest.raises(NotFound):
        admin.remove_subscription(conn, 999)
    admin.remove_subscription(conn, sub)
    for call in (
        lambda: admin.update_subscription(conn, sub, Changes(method="GET")),
        lambda: admin.set_enabled(conn, sub, True),
        lambda: admin.remove_subscription(conn, sub),
    ):
        with pytest.raises(NotFound, match="removed"):
            call()


def test_list_and_get_mask_secrets_and_header_values(conn: Conn) -> None:
    sub_id = admin.add_subscription(
        conn,
        Changes(url="https://bob:pa55@example.com/h", headers={"Authorization": "Bearer s3cr3t"},
                secret=SECRET),
    ).id  # fmt: skip
    plain = admin.add_subscription(conn, Changes(url="http://plain.io")).id
    rows = {row["id"]: row for row in admin.list_subscriptions(conn)}
    for row in (rows[sub_id], admin.get_subscription(conn, sub_id)):
        assert row["secret"] == "whsec_****"
        assert row["headers"] == {"Authorization": "***"}
        assert row["url"] == "https://bob:***@example.com/h"
        assert "s3cr3t" not in repr(row) and SECRET not in repr(row) and "pa55" not in repr(row)
    assert rows[plain]["secret"] is None


def test_enable_disable(conn: Conn, sub: int) -> None:
    admin.set_enabled(conn, sub, False)
    assert raw_subscription(conn, sub)["enabled"] is False
    admin.set_enabled(conn, sub, True)
    assert raw_subscription(conn, sub)["enabled"] is True


def test_remove_is_soft_and_kills_pending(conn: Conn, sub: int) -> None:
    other = admin.add_subscription(conn, Changes(url="http://other.io")).id
    pending = make_delivery(conn, sub, attempts=1, failures=1)
    delivered = make_delivery(conn, sub, status="delivered", attempts=1)
    other_pending = make_delivery(conn, other)
    assert admin.remove_subscription(conn, sub) == 1

    row = raw_subscription(conn, sub)
    assert row["removed_at"] is not None and row["enabled"] is False
    assert [r["id"] for r in admin.list_subscriptions(conn)] == [other]
    assert {r["id"] for r in admin.list_subscriptions(conn, include_removed=True)} == {sub, other}
    assert admin.get_subscription(conn, sub)["removed_at"] is not None

    dead = admin.get_delivery(conn, pending)
    assert dead["status"] == "dead" and dead["last_error"] == "subscription removed"
    assert dead["dead_at"] is not None and dead["lease_owner"] is None
    assert len(dead["attempt_history"]) == 1  # history kept
    assert admin.get_delivery(conn, delivered)["status"] == "delivered"
    assert admin.get_delivery(conn, other_pending)["status"] == "pending"


# Deliveries and replay --------------------------------------------------------------------------


def test_list_deliveries_filters_newest_first(conn: Conn, sub: int) -> None:
    other = admin.add_subscription(conn, Changes(url="http://other.io")).id
    a = make_delivery(conn, sub)
    b = make_delivery(conn, sub, status="dead", event_type="test.processed")
    c = make_delivery(conn, other, status="delivered")
    assert [r["id"] for r in admin.list_deliveries(conn)] == [c, b, a]
    assert [r["id"] for r in admin.list_deliveries(conn, status="dead")] == [b]
    assert [r["id"] for r in admin.list_deliveries(conn, subscription_id=sub)] == [b, a]
    assert [r["id"] for r in admin.list_deliveries(conn, event_type="test.processed")] == [b]
    assert [r["id"] for r in admin.list_deliveries(conn, limit=1)] == [c]
    row = admin.list_deliveries(conn)[0]
    assert {"id", "status", "subscription_id", "event_type", "attempts"} <= set(row)
    with pytest.raises(ValidationError) as exc:
        admin.list_deliveries(conn, status="lost")
    assert exc.value.field == "status"


def test_get_delivery_has_every_attempt(conn: Conn, sub: int) -> None:
    d = make_delivery(conn, sub, status="dead", attempts=4, failures=4)
    row = admin.get_delivery(conn, d)
    history = row["attempt_history"]
    assert [a["attempt"] for a in history] == [1, 2, 3, 4]
    assert history[0]["status_code"] == 500 and history[1]["error"] == "timeout"
    assert all(a["duration_ms"] == 12.5 and a["relay_id"] == "r1" for a in history)
    assert all(len(a["response_body"]) == 500 and a["response_truncated"] for a in history)
    assert row["payload"] == {"n": 1} and row["event_id"] is not None
    with pytest.raises(NotFound):
        admin.get_delivery(conn, 12345)


def test_replay_resets_budget_and_keeps_history(conn: Conn, sub: int) -> None:
    dead = make_delivery(conn, sub, status="dead", attempts=4, failures=4)
    delivered = make_delivery(conn, sub, status="delivered", attempts=1)
    assert admin.replay(conn, [dead, delivered]) == 2
    for d, attempts in ((dead, 4), (delivered, 1)):
        row = admin.get_delivery(conn, d)
        assert row["status"] == "pending"
        assert row["failures"] == 0
        assert row["attempts"] == attempts
        assert len(row["attempt_history"]) == attempts
        assert row["dead_at"] is None and row["delivered_at"] is None
        assert row["lease_owner"] is None
        assert scalar(conn, "SELECT lease_token FROM relay.deliveries WHERE id = %s", (d,)) is None
        assert scalar(
            conn, "SELECT next_attempt_at <= now() FROM relay.deliveries WHERE id = %s", (d,)
        )


def test_replay_unknown_ids_replays_nothing(conn: Conn, sub: int) -> None:
    dead = make_delivery(conn, sub, status="dead")
    with pytest.raises(NotFound) as exc:
        admin.replay(conn, [dead, 777, 778])
    assert "777" in str(exc.value) and "778" in str(exc.value)
    assert admin.get_delivery(conn, dead)["status"] == "dead"


def test_replay_refuses_removed_subscription(conn: Conn, sub: int) -> None:
    dead = make_delivery(conn, sub, status="dead")
    admin.remove_subscription(conn, sub)
    with pytest.raises(ValidationError):
        admin.replay(conn, [dead])
    assert admin.replay_dead(conn) == 0
    assert admin.get_delivery(conn, dead)["status"] == "dead"


def test_replay_notifies_running_relays(conn: Conn, sub: int, database_url: str) -> None:
    dead = make_delivery(conn, sub, status="dead")
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN relay_deliveries")
        admin.replay(conn, [dead])
        got = list(listener.notifies(timeout=5, stop_after=1))
    assert [n.channel for n in got] == ["relay_deliveries"]


def test_replay_dead_filters(conn: Conn, sub: int) -> None:
    other = admin.add_subscription(conn, Changes(url="http://other.io")).id
    recent = make_delivery(conn, sub, status="dead", dead_ago=timedelta(minutes=10))
    old = make_delivery(conn, sub, status="dead", dead_ago=timedelta(days=3))
    other_dead = make_delivery(conn, other, status="dead")
    pending = make_delivery(conn, sub, attempts=1, failures=1)
    since = datetime.now(UTC) - timedelta(hours=1)
    assert admin.replay_dead(conn, subscription_id=sub, since=since) == 1
    assert admin.get_delivery(conn, recent)["status"] == "pending"
    assert admin.get_delivery(conn, old)["status"] == "dead"
    assert admin.get_delivery(conn, other_dead)["status"] == "dead"
    assert admin.replay_dead(conn) == 2
    assert admin.get_delivery(conn, pending)["failures"] == 1  # pending ones untouched
    with pytest.raises(NotFound):
        admin.replay_dead(conn, subscription_id=4242)


# Status, event types, emit ----------------------------------------------------------------------


def test_status(conn: Conn, sub: int) -> None:
    empty = admin.status(conn)
    assert empty["outbox_backlog"] == 0 and empty["oldest_pending_age_seconds"] == 0
    make_delivery(conn, sub, status="dead")
    make_delivery(conn, sub, status="delivered")
    due = make_delivery(conn, sub)
    conn.execute(
        "UPDATE relay.deliveries SET next_attempt_at = now() - interval '90 seconds' WHERE id = %s",
        (due,),
    )
    make_delivery(conn, sub)  # pending, not due yet
    conn.execute(
        "INSERT INTO relay.relays (relay_id, hostname, pid, version) VALUES ('r-live', 'h', 1, '0')"
    )
    conn.execute(
        "INSERT INTO relay.relays (relay_id, hostname, pid, version, last_seen) "
        "VALUES ('r-gone', 'h', 2, '0', now() - interval '5 minutes')"
    )
    info = admin.status(conn)
    assert info["outbox_backlog"] == 4  # make_delivery emits without dispatching
    assert info["deliveries_pending"] == 2 and info["deliveries_due"] == 1
    assert info["deliveries_dead"] == 1 and info["deliveries_delivered"] == 1
    assert 89 <= info["oldest_due_age_seconds"] < 200
    assert info["oldest_pending_age_seconds"] >= info["oldest_due_age_seconds"]
    assert [r["relay_id"] for r in info["relays"]] == ["r-live"]
    assert {"hostname", "pid", "version", "last_seen"} <= set(info["relays"][0])


def test_event_types(conn: Conn) -> None:
    names = [r["name"] for r in admin.list_event_types(conn)]
    assert "order.created" in names and len(names) == 9
    assert (
        admin.add_event_type(conn, "shop.item_added", "Shop", "An item was added")
        == "shop.item_added"
    )
    row = next(r for r in admin.list_event_types(conn) if r["name"] == "shop.item_added")
    assert row["id"] == "shop.item_added" and row["object"] == "Shop"
    for bad, field in (("Shop.Item", "name"), ("shop", "name"), ("shop.item_added", "name")):
        with pytest.raises(ValidationError) as exc:
            admin.add_event_type(conn, bad)
        assert exc.value.field == field
    with pytest.raises(ValidationError) as exc:
        admin.add_event_type(conn, "shop.other", "Shop", "bad\x00text")
    assert exc.value.field == "description"
    # the new type is usable at once
    admin.add_subscription(conn, Changes(url="http://x.io", events=["shop.*"]))


def test_admin_emit(conn: Conn) -> None:
    outbox_id = admin.emit(conn, "order.created", '{"orderId": 1}', aggregate_id="o-1",
                           tenant_id="acme", version="v2")  # fmt: skip
    row = conn.execute(
        "SELECT event_type, payload, aggregate_id, tenant_id, version FROM relay.outbox "
        "WHERE id = %s",
        (outbox_id,),
    ).fetchone()
    assert row == ("order.created", {"orderId": 1}, "o-1", "acme", "v2")
    before = counts(conn)
    with pytest.raises(ValidationError):
        admin.emit(conn, "order.created", "[1]")
    with pytest.raises(ValidationError):
        admin.emit(conn, "order.created", "{not json")
    with pytest.raises(Exception, match="unknown event type"):
        admin.emit(conn, "order.nope", {})
    assert counts(conn) == before


def test_missing_schema_says_migrate(empty_database_url: str) -> None:
    with (
        psycopg.connect(empty_database_url, autocommit=True) as c,
        pytest.raises(DatabaseError, match="relay migrate"),
    ):
        admin.list_subscriptions(c)
