"""Build delivery history with chosen ages, for the retention tests (plain INSERTs)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import psycopg

Conn = psycopg.Connection[Any]

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def scalar(conn: Conn, sql: str, params: Any = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def subscription(conn: Conn, url: str = "https://example.com/hook") -> int:
    return int(
        scalar(conn, "INSERT INTO relay.subscriptions (url) VALUES (%s) RETURNING id", (url,))
    )


def event(conn: Conn, age: timedelta, *, dispatched: bool = True) -> int:
    """An outbox row created ``age`` ago (dispatched a second later, or not at all)."""
    return int(
        scalar(
            conn,
            """INSERT INTO relay.outbox (event_type, payload, created_at, dispatched_at)
               VALUES ('order.created', '{"n": 1}', now() - %(age)s,
                       CASE WHEN %(d)s THEN now() - %(age)s + interval '1 second' END)
               RETURNING id""",
            {"age": age, "d": dispatched},
        )
    )


def delivery(
    conn: Conn,
    outbox_id: int,
    sub_id: int,
    status: str,
    ended: timedelta | None = None,
    attempts: int = 1,
) -> int:
    """A delivery of ``outbox_id``; a finished one ended ``ended`` ago; ``attempts`` rows."""
    delivery_id = int(
        scalar(
            conn,
            """INSERT INTO relay.deliveries
                   (outbox_id, subscription_id, event_type, status, attempts, failures,
                    delivered_at, dead_at, next_attempt_at)
               VALUES (%(o)s, %(s)s, 'order.created', %(st)s, %(a)s, 0,
                       CASE WHEN %(st)s::text = 'delivered' THEN now() - %(ended)s::interval END,
                       CASE WHEN %(st)s::text = 'dead' THEN now() - %(ended)s::interval END,
                       now() + interval '1 hour')
               RETURNING id""",
            {"o": outbox_id, "s": sub_id, "st": status, "a": attempts, "ended": ended},
        )
    )
    for n in range(1, attempts + 1):
        conn.execute(
            """INSERT INTO relay.delivery_attempts
                   (delivery_id, attempt, relay_id, started_at, duration_ms, status_code)
               VALUES (%s, %s, 'r1', now() - interval '3 days', 12.5, 500)""",
            (delivery_id, n),
        )
    return delivery_id


def ids(conn: Conn, table: str) -> set[int]:
    return {int(r[0]) for r in conn.execute(f"SELECT id FROM relay.{table}")}


def snapshot(conn: Conn) -> list[Any]:
    return [
        conn.execute(f"SELECT * FROM relay.{t} ORDER BY {key}").fetchall()
        for t, key in (
            ("outbox", "id"),
            ("deliveries", "id"),
            ("delivery_attempts", "delivery_id, attempt"),
        )
    ]
