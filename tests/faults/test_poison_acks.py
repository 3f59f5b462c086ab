"""Poison outcomes: an attempt outcome the database refuses never holds the others hostage.

The refusals are made by the real database (a CHECK constraint, a trigger), as a future
column rule, an extension or a bug of relay's own would make them.
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from relay.daemon.service import Relay
from tests.faults._util import Conn
from tests.receiver import Receiver, respond
from tests.relayctx import add_subscription, attempts, deliveries, emit, running_relay, wait_until

EVENTS = 5


async def _readyz(relay: Relay) -> tuple[int, dict[str, Any]]:
    assert relay.health.bound is not None
    host, port = relay.health.bound
    async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/readyz") as r:
        return r.status, await r.json()


def _metric(relay: Relay, name: str, labels: dict[str, str] | None = None) -> float:
    value = relay.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


async def test_refused_outcome_is_recorded_reduced_and_others_are_not_held(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """Outcomes of two subscriptions share ack batches; the database refuses the response
    body of one. The batch is split: the others are recorded as they are, the refused ones
    without their body, the reason in the error. Before: the whole batch was retried
    forever and nothing of this relay was recorded again."""
    conn.execute(
        "ALTER TABLE relay.delivery_attempts ADD CONSTRAINT no_poison "
        "CHECK (response_body IS NULL OR response_body NOT LIKE '%poison%')"
    )
    receiver.script("/poison", [respond(200, body="poison")])
    receiver.script("/ok", [respond(200, body="fine")])
    bad = add_subscription(conn, receiver.url("/poison"))
    ok = add_subscription(conn, receiver.url("/ok"))
    for i in range(EVENTS):
        emit(conn, "order.created", {"n": i})
    async with running_relay(database_url) as relay:
        await wait_until(
            lambda: [d["status"] for d in deliveries(conn)] == ["delivered"] * 2 * EVENTS, 15
        )
        assert _metric(relay, "relay_ack_reduced_total") == EVENTS
        assert _metric(relay, "relay_ack_failures_total", {"kind": "refused"}) >= 1
    for d in deliveries(conn):
        (a,) = attempts(conn, d["id"])
        assert a["status_code"] == 200
        if d["subscription_id"] == ok:
            assert a["response_body"] == "fine" and a["error"] is None
        else:
            assert d["subscription_id"] == bad
            assert a["response_body"] is None
            assert "response not recorded (refused:" in a["error"]
            assert "no_poison" in a["error"]


async def test_ack_that_keeps_failing_shows_and_spares_the_others(
    conn: Conn, database_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """The database refuses every outcome of one subscription, even without a body (a
    trigger). The other subscription's outcomes are recorded meanwhile; the stuck one shows
    in relay_ack_failing, one error-level log line and /readyz (503, check ``acks``); once
    the cause is gone, it is recorded and the relay is ready again."""
    stuck = add_subscription(conn, receiver.url("/stuck"), max_retries=0)
    ok = add_subscription(conn, receiver.url("/ok"))
    conn.execute(
        f"""
        CREATE FUNCTION relay.refuse_stuck() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF (SELECT subscription_id FROM relay.deliveries WHERE id = NEW.delivery_id)
               = {stuck} THEN
                RAISE EXCEPTION 'refused by test trigger';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_stuck BEFORE INSERT ON relay.delivery_attempts
            FOR EACH ROW EXECUTE FUNCTION relay.refuse_stuck();
        """
    )
    emit(conn, "order.created", {"n": 0})
    caplog.set_level(logging.WARNING, logger="relay")
    async with running_relay(database_url) as relay:
        await wait_until(
            lambda: any(
                d["subscription_id"] == ok and d["status"] == "delivered" for d in deliveries(conn)
            ),
            10,
        )
        await wait_until(lambda: relay.acker.failing, 10)
        status, body = await _readyz(relay)
        assert status == 503 and body["checks"]["acks"]["ok"] is False
        assert "refused by test trigger" in body["checks"]["acks"]["error"]
        assert _metric(relay, "relay_ack_failing") == 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("acks failing" in r.getMessage() for r in errors), errors
        # more work for the healthy subscription goes through while the other is stuck
        emit(conn, "order.created", {"n": 1})
        await wait_until(
            lambda: (
                sum(
                    d["subscription_id"] == ok and d["status"] == "delivered"
                    for d in deliveries(conn)
                )
                == 2
            ),
            10,
        )
        conn.execute("DROP TRIGGER refuse_stuck ON relay.delivery_attempts")
        await wait_until(lambda: not relay.acker.failing, 15)
        await wait_until(lambda: all(d["status"] != "pending" for d in deliveries(conn)), 15)
        status, _ = await _readyz(relay)
        assert status == 200
        assert _metric(relay, "relay_ack_failing") == 0
    stuck_rows = [d for d in deliveries(conn) if d["subscription_id"] == stuck]
    assert stuck_rows and all(d["status"] == "delivered" for d in stuck_rows)
