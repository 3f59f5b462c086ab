"""Rows for API tests, written straight into the test database (history without a daemon)."""

from __future__ import annotations

from typing import Any

import psycopg


def make_delivery(
    conn: psycopg.Connection[Any],
    sub_id: int,
    *,
    tenant: str | None,
    status: str = "dead",
    attempts: int = 1,
    leased: bool = False,
    event_type: str = "order.created",
) -> int:
    """A delivery of a fresh event of ``tenant`` to ``sub_id``, with ``attempts`` attempts."""
    row = conn.execute(
        'SELECT relay.emit(%s, \'{"orderId": "o-1"}\'::jsonb, tenant_id => %s)',
        (event_type, tenant),
    ).fetchone()
    assert row is not None
    outbox_id = row[0]
    conn.execute("UPDATE relay.outbox SET dispatched_at = now() WHERE id = %s", (outbox_id,))
    row = conn.execute(
        """INSERT INTO relay.deliveries
               (outbox_id, subscription_id, event_type, tenant_id, status, attempts, failures,
                lease_owner, lease_token, next_attempt_at, last_status_code, last_error,
                dead_at, delivered_at)
           VALUES (%(o)s, %(s)s, %(t)s, %(tenant)s, %(st)s, %(a)s, %(a)s,
                   CASE WHEN %(leased)s THEN 'r1' END,
                   CASE WHEN %(leased)s THEN gen_random_uuid() END,
                   now() + CASE WHEN %(leased)s THEN interval '1 minute' ELSE interval '0' END,
                   500, 'HTTP 500',
                   CASE WHEN %(st)s = 'dead' THEN now() END,
                   CASE WHEN %(st)s = 'delivered' THEN now() END)
           RETURNING id""",
        {"o": outbox_id, "s": sub_id, "t": event_type, "tenant": tenant, "st": status,
         "a": attempts, "leased": leased},
    ).fetchone()  # fmt: skip
    assert row is not None
    delivery_id = int(row[0])
    for n in range(1, attempts + 1):
        conn.execute(
            """INSERT INTO relay.delivery_attempts
                   (delivery_id, attempt, relay_id, started_at, duration_ms, status_code,
                    response_body)
               VALUES (%s, %s, 'r1', now(), 12.5, 500, 'no')""",
            (delivery_id, n),
        )
    return delivery_id


def make_subscription(conn: psycopg.Connection[Any], tenant: str | None) -> int:
    row = conn.execute(
        "INSERT INTO relay.subscriptions (url, tenant_id, headers, secret) "
        "VALUES ('https://example.com/hook', %s, '{\"Authorization\": \"Bearer s3cr3t\"}', "
        "'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw') RETURNING id",
        (tenant,),
    ).fetchone()
    assert row is not None
    return int(row[0])
