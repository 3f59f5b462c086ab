"""The claim/lease/ack protocol at the store level, against a real Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from relay.daemon.store import JOB_COLUMNS, Ack, Job, PgStore
from relay.sql import q
from tests.relayctx import add_subscription, attempts, emit

Conn = psycopg.Connection[Any]


def _ack(job: Job, outcome: str = "delivered") -> Ack:
    return Ack(job.id, job.token, outcome, 0.0, 204, None, datetime.now(UTC), 1.0, None)


async def test_an_ack_from_a_relay_that_lost_its_lease_is_ignored(
    conn: Conn, database_url: str
) -> None:
    add_subscription(conn, "http://127.0.0.1:9/hook")
    emit(conn, "order.created", {})
    a = PgStore(database_url, pool_size=2, relay_id="relay-a")
    b = PgStore(database_url, pool_size=2, relay_id="relay-b")
    await a.open()
    await b.open()
    try:
        assert (await a.dispatch(10))[:2] == (1, 1)
        (job_a,) = await a.claim(10, lease_seconds=60)
        # While A's lease holds, nobody else can claim the row.
        assert await b.claim(10, lease_seconds=60) == []
        # A stalls past its lease (simulated by expiring it): B retakes the delivery.
        conn.execute("UPDATE relay.deliveries SET next_attempt_at = now() - interval '1 s'")
        (job_b,) = await b.claim(10, lease_seconds=60)
        assert job_b.id == job_a.id and job_b.token != job_a.token
        # A's late ack matches nothing and records no attempt; B's is accepted.
        assert await a.ack([_ack(job_a)]) == set()
        assert attempts(conn, job_a.id) == []
        assert await b.ack([_ack(job_b)]) == {job_b.id}
        (attempt,) = attempts(conn, job_b.id)
        assert attempt["relay_id"] == "relay-b"
        # A release with the stale token changes nothing either.
        assert await a.release([(job_a.id, job_a.token)]) == 0
        row = conn.execute("SELECT status, attempts FROM relay.deliveries").fetchone()
        assert row == ("delivered", 1)
    finally:
        await a.close()
        await b.close()


async def test_retry_schedule_is_persisted_not_reset_by_a_restart(
    conn: Conn, database_url: str
) -> None:
    """Attempt count and next due time live in Postgres: a new relay (a restart) sees the
    schedule the old one wrote and does not attempt early."""
    add_subscription(conn, "http://127.0.0.1:9/hook")
    emit(conn, "order.created", {})
    first = PgStore(database_url, pool_size=2, relay_id="before-restart")
    await first.open()
    try:
        await first.dispatch(10)
        (job,) = await first.claim(10, lease_seconds=60)
        retry = Ack(job.id, job.token, "retry", 30.0, 500, "HTTP 500", datetime.now(UTC), 1.0, "")
        assert await first.ack([retry]) == {job.id}
    finally:
        await first.close()
    after = PgStore(database_url, pool_size=2, relay_id="after-restart")
    await after.open()
    try:
        assert await after.claim(10, lease_seconds=60) == []  # not due for 30 s
        until = await after.seconds_until_due()
        assert until is not None and 25 < until <= 30
        row = conn.execute("SELECT status, attempts, failures FROM relay.deliveries").fetchone()
        assert row == ("pending", 1, 1)
    finally:
        await after.close()


def test_dispatch_and_claim_return_the_job_columns_in_job_order(conn: Conn) -> None:
    """PgStore builds a Job positionally from each row: both statements must return exactly
    JOB_COLUMNS, in order, after their own leading columns."""
    params = {
        "limit": 1,
        "lease_limit": 1,
        "saturated": [],
        "owner": "me",
        "token": uuid.uuid4(),
        "lease_seconds": 60.0,
    }
    dispatch = conn.execute(q("dispatch_outbox"), params)
    assert dispatch.description is not None
    names = tuple(c.name for c in dispatch.description)
    assert names == ("dispatched", "deliveries", *JOB_COLUMNS)
    claim = conn.execute(q("claim_deliveries"), params)
    assert claim.description is not None
    assert tuple(c.name for c in claim.description) == JOB_COLUMNS
