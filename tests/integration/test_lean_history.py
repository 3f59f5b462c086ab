"""Migration 0011 (lean history): an install with history moves from 0010 to 0011 intact, and
what the dropped foreign keys used to refuse -- an outbox row deleted by hand under its
deliveries -- neither breaks a read nor stalls the claim."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from relay import admin
from relay.cli import main
from relay.daemon.store import PgStore
from relay.errors import NotFound
from relay.sql import migrations
from relay.sql.migrate import migrate
from tests.history import DAY, HOUR, delivery, event, scalar, subscription

Conn = psycopg.Connection[Any]


def _migrate_to(conn: Conn, last: int) -> None:
    """Apply the migrations up to ``last`` as `relay migrate` did when it was the newest."""
    conn.execute(
        """CREATE TABLE IF NOT EXISTS relay.migrations (
               version integer PRIMARY KEY, name text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now())"""
    )
    for version, name, sql in migrations():
        if version <= last:
            conn.execute(sql.encode())
            conn.execute(
                "INSERT INTO relay.migrations (version, name) VALUES (%s, %s)", (version, name)
            )


def _attempts(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT delivery_id, attempt, relay_id, started_at, duration_ms, status_code, error,"
        " response_body FROM relay.delivery_attempts ORDER BY delivery_id, attempt"
    ).fetchall()


def test_0011_migrates_an_install_with_history(empty_database_url: str) -> None:
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA relay")
        _migrate_to(conn, 10)
        sub = subscription(conn)
        dead = delivery(conn, event(conn, 2 * DAY), sub, "dead", 2 * DAY, attempts=3)
        done = delivery(conn, event(conn, DAY), sub, "delivered", DAY, attempts=2)
        pending = delivery(conn, event(conn, HOUR), sub, "pending", attempts=1)
        before = _attempts(conn)
        deliveries = conn.execute("SELECT * FROM relay.deliveries ORDER BY id").fetchall()

        assert migrate(conn) == [11]

        assert _attempts(conn) == before
        assert conn.execute("SELECT * FROM relay.deliveries ORDER BY id").fetchall() == deliveries
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'relay.delivery_attempts'"
                "::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            )
        ]
        assert "id" not in columns and columns[:2] == ["delivery_id", "attempt"]
        key = scalar(
            conn,
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'relay.delivery_attempts'::regclass AND contype = 'p'",
        )
        assert key == "PRIMARY KEY (delivery_id, attempt)"
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(
                "INSERT INTO relay.delivery_attempts"
                " (delivery_id, attempt, relay_id, started_at, duration_ms)"
                " VALUES (%s, 1, 'r', now(), 1)",
                (dead,),
            )
        foreign = {
            r[0]
            for r in conn.execute(
                "SELECT conname FROM pg_constraint WHERE contype = 'f'"
                " AND conrelid IN ('relay.deliveries'::regclass,"
                "                  'relay.delivery_attempts'::regclass)"
            )
        }
        assert foreign == {"deliveries_subscription_id_fkey"}
        indexes = {
            r[0]
            for r in conn.execute(
                "SELECT indexrelid::regclass::text FROM pg_index"
                " WHERE indrelid = 'relay.deliveries'::regclass AND indisvalid"
            )
        }
        assert "relay.deliveries_status_id" not in indexes
        assert {"relay.deliveries_pending_id", "relay.deliveries_dead_id"} <= indexes

        # the history reads as before
        for status, expected in (("dead", dead), ("delivered", done), ("pending", pending)):
            rows = admin.list_deliveries(conn, status=status)
            assert [r["id"] for r in rows] == [expected]
        shown = admin.get_delivery(conn, dead)
        assert [a["attempt"] for a in shown["attempt_history"]] == [1, 2, 3]


def test_show_of_a_delivery_whose_event_was_deleted_says_so(
    conn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    sub = subscription(conn)
    outbox_id = event(conn, HOUR)
    dead = delivery(conn, outbox_id, sub, "dead", HOUR, attempts=2)
    # refused by the foreign key before 0011; an application's own cleanup may do it
    conn.execute("DELETE FROM relay.outbox WHERE id = %s", (outbox_id,))
    assert [r["id"] for r in admin.list_deliveries(conn)] == [dead]
    with pytest.raises(NotFound, match=rf"outbox row {outbox_id}\) was deleted"):
        admin.get_delivery(conn, dead)
    capsys.readouterr()
    assert main(["delivery", "show", str(dead), "--database-url", database_url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("relay: error: ") and "was deleted outside relay" in err
    assert "Traceback" not in err
    assert main(["delivery", "list", "--database-url", database_url]) == 0
    assert str(dead) in capsys.readouterr().out


async def test_a_pending_delivery_whose_event_was_deleted_ends_dead_at_its_claim(
    conn: Conn, database_url: str
) -> None:
    """Such a row cannot be sent (its payload is gone): the claim ends it dead, with a
    clear error, instead of meeting it again at every claim and leasing fewer rows."""
    sub = subscription(conn)
    gone = [event(conn, HOUR) for _ in range(3)]
    kept = [event(conn, HOUR) for _ in range(3)]
    for outbox_id in gone + kept:
        d = delivery(conn, outbox_id, sub, "pending", attempts=0)
        conn.execute(
            "UPDATE relay.deliveries SET next_attempt_at = now() - interval '1 minute'"
            " WHERE id = %s",
            (d,),
        )
    conn.execute("DELETE FROM relay.outbox WHERE id = ANY(%s)", (gone,))
    store = PgStore(database_url, pool_size=1, relay_id="lean")
    await store.open()
    try:
        # the three orphans come first in due order: this claim ends them and sends nothing;
        # left pending, they would take the whole batch of every claim after it
        assert await store.claim(3, 60.0) == []
        jobs = await store.claim(3, 60.0)
    finally:
        await store.close()
    assert sorted(j.outbox_id for j in jobs) == sorted(kept)
    rows = conn.execute(
        "SELECT outbox_id, status, last_error FROM relay.deliveries"
        " WHERE outbox_id = ANY(%s) ORDER BY outbox_id",
        (gone,),
    ).fetchall()
    assert rows == [
        (o, "dead", f"its event (outbox row {o}) was deleted outside relay") for o in gone
    ]
