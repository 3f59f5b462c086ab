"""``GET /metrics``: every series DESIGN.md names, values matching the database, bounded labels."""

from __future__ import annotations

import re
from typing import Any

import psycopg

from relay import __version__
from tests.observability.conftest import async_wait_for, parse_metrics, serving_relay, value
from tests.receiver import Receiver, hang, respond
from tests.relayctx import add_subscription, emit

Conn = psycopg.Connection[Any]

EVENT_TYPES = ("order.created", "test.processed")

# Label names relay may use; anything else (delivery_id, url, endpoint, ...) is unbounded.
ALLOWED_LABELS = {
    "outcome",
    "event_type",
    "result",
    "subscription_id",
    "success",
    "kind",
    "connection",
    "version",
    "le",
    "table",  # relay's three history tables (relay_history_bytes, relay_pruned_rows_total)
}

# Every metric DESIGN.md ("Observability") and docs/operating.md promise, with its labels.
EXPECTED: dict[str, tuple[str, set[str]]] = {
    "relay_deliveries_total": ("counter", {"outcome", "event_type"}),
    "relay_delivery_attempts_total": ("counter", {"result"}),
    "relay_subscription_attempts_total": ("counter", {"subscription_id", "success"}),
    "relay_delivery_attempt_duration_seconds_bucket": ("histogram", {"le"}),
    "relay_delivery_attempt_duration_seconds_count": ("histogram", set()),
    "relay_delivery_attempt_duration_seconds_sum": ("histogram", set()),
    "relay_delivery_latency_seconds_bucket": ("histogram", {"le"}),
    "relay_delivery_latency_seconds_count": ("histogram", set()),
    "relay_delivery_latency_seconds_sum": ("histogram", set()),
    "relay_outbox_backlog": ("gauge", set()),
    "relay_deliveries_pending": ("gauge", set()),
    "relay_deliveries_dead": ("gauge", set()),
    "relay_oldest_pending_age_seconds": ("gauge", set()),
    "relay_instances_seen": ("gauge", set()),
    "relay_deliveries_in_flight": ("gauge", set()),
    "relay_deliveries_ready": ("gauge", set()),
    "relay_db_connected": ("gauge", {"connection"}),
    "relay_build_info": ("", {"version"}),
    "relay_claims_total": ("counter", {"kind"}),
    "relay_claimed_rows_total": ("counter", {"kind"}),
    "relay_fanout_deliveries_total": ("counter", set()),
    "relay_history_bytes": ("gauge", {"table"}),
}


def _one(conn: Conn, sql: str, *params: Any) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


async def test_metrics_match_the_database_and_labels_stay_bounded(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """After deliveries that succeed, retry (5xx and timeout) and die, /metrics has every
    documented series with its labels, counters and gauges equal what the database holds, and
    no label carries a URL, a header value or a delivery/event id."""
    # Delivery and outbox ids far from subscription ids and counts: a leaked id stands out.
    conn.execute("ALTER TABLE relay.deliveries ALTER COLUMN id RESTART WITH 7700001")
    conn.execute("ALTER TABLE relay.outbox ALTER COLUMN id RESTART WITH 8800001")
    receiver.script("/ok", [respond(204)])
    receiver.script("/flaky", [respond(503), respond(200)])
    receiver.script("/slow", [hang(10), respond(204)])
    receiver.script("/broken", [respond(500)])
    subs = {
        "ok": add_subscription(conn, receiver.url("/ok")),
        "flaky": add_subscription(conn, receiver.url("/flaky"), backoff_ms=50),
        "slow": add_subscription(conn, receiver.url("/slow"), backoff_ms=50, timeout_ms=300),
        "broken": add_subscription(
            conn,
            receiver.url("/broken"),
            max_retries=0,
            headers='{"Authorization": "Bearer sekrit-label-check"}',
        ),
    }
    for event_type in EVENT_TYPES:
        emit(conn, event_type, {"n": 1})

    async with serving_relay(database_url, gauge_interval=0.2) as served:

        async def settled() -> Any:
            final = _one(conn, "SELECT count(*) FROM relay.deliveries WHERE status <> 'pending'")
            if final < len(EVENT_TYPES) * len(subs):
                return None
            samples = await served.metrics()
            dead = _one(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'dead'")
            delivered = _one(
                conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"
            )
            done = (
                value(samples, "relay_deliveries_dead") == dead
                and value(samples, "relay_deliveries_pending") == 0
                and value(samples, "relay_deliveries_total", outcome="delivered") == delivered
                and value(samples, "relay_deliveries_total", outcome="dead") == dead
            )
            return done

        await async_wait_for(settled, 30, "every delivery final and the gauges refreshed")
        status, text = await served.get("/metrics")
    assert status == 200
    samples, types = parse_metrics(text)
    print(text)

    # Every documented series exists, with its type and labels.
    for name, (mtype, label_names) in EXPECTED.items():
        assert name in samples, f"{name} missing from /metrics"
        family = re.sub(r"(_total|_bucket|_count|_sum|_info)$", "", name)
        if mtype:
            assert types.get(family) == mtype, (name, types.get(family))
        for lab, _ in samples[name]:
            assert set(lab) == label_names, (name, lab)

    # Values agree with the database.
    n_deliveries = _one(conn, "SELECT count(*) FROM relay.deliveries")
    assert n_deliveries == len(EVENT_TYPES) * len(subs)
    n_attempts = _one(conn, "SELECT count(*) FROM relay.delivery_attempts")
    by_class = {
        "2xx": _one(
            conn,
            "SELECT count(*) FROM relay.delivery_attempts WHERE status_code BETWEEN 200 AND 299",
        ),
        "5xx": _one(
            conn,
            "SELECT count(*) FROM relay.delivery_attempts WHERE status_code BETWEEN 500 AND 599",
        ),
        "timeout": _one(
            conn, "SELECT count(*) FROM relay.delivery_attempts WHERE error LIKE 'timeout%%'"
        ),
    }
    for result, expected in by_class.items():
        assert expected > 0, f"the scenario should produce {result} attempts"
        assert value(samples, "relay_delivery_attempts_total", result=result) == expected, result
    assert value(samples, "relay_delivery_attempts_total") == n_attempts
    assert value(samples, "relay_delivery_attempt_duration_seconds_count") == n_attempts
    assert value(samples, "relay_subscription_attempts_total") == n_attempts
    assert value(
        samples,
        "relay_subscription_attempts_total",
        subscription_id=str(subs["broken"]),
        success="false",
    ) == len(EVENT_TYPES)
    for event_type in EVENT_TYPES:
        for outcome in ("delivered", "dead"):
            expected = _one(
                conn,
                "SELECT count(*) FROM relay.deliveries WHERE status = %s AND event_type = %s",
                outcome,
                event_type,
            )
            got = value(samples, "relay_deliveries_total", outcome=outcome, event_type=event_type)
            assert got == expected, (outcome, event_type)
    delivered = _one(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
    assert value(samples, "relay_delivery_latency_seconds_count") == delivered
    assert value(samples, "relay_deliveries_dead") == len(EVENT_TYPES)  # the /broken ones
    assert value(samples, "relay_outbox_backlog") == 0
    assert value(samples, "relay_deliveries_pending") == 0
    assert value(samples, "relay_oldest_pending_age_seconds") == 0
    assert value(samples, "relay_deliveries_in_flight") == 0
    assert value(samples, "relay_instances_seen") >= 1
    assert value(samples, "relay_db_connected", connection="pool") == 1
    assert value(samples, "relay_build_info", version=__version__) == 1
    assert value(samples, "relay_fanout_deliveries_total") == n_deliveries
    assert value(samples, "relay_claimed_rows_total", kind="outbox") == len(EVENT_TYPES)
    assert value(samples, "relay_claimed_rows_total", kind="delivery") >= n_attempts
    assert value(samples, "relay_claims_total", kind="outbox") >= 1
    assert value(samples, "relay_claims_total", kind="delivery") >= 1

    # Bounded label sets: only known label names; no URL, header, or per-delivery value.
    ids = {str(r[0]) for r in conn.execute("SELECT id FROM relay.deliveries")}
    ids |= {str(r[0]) for r in conn.execute("SELECT id FROM relay.outbox")}
    ids |= {str(r[0]) for r in conn.execute("SELECT event_id FROM relay.outbox")}
    ids |= {f"msg_{r[0].hex}" for r in conn.execute("SELECT event_id FROM relay.outbox")}
    for name, rows in samples.items():
        assert name.startswith("relay_"), name
        for labels, _ in rows:
            assert set(labels) <= ALLOWED_LABELS, (name, labels)
            for key, label_value in labels.items():
                assert "://" not in label_value, (name, key, label_value)
                assert str(receiver.port) not in label_value or key == "le", (name, labels)
                assert "sekrit" not in label_value and "Bearer" not in label_value
                assert label_value not in ids, f"{name}{{{key}={label_value!r}}} is an id"
            if "subscription_id" in labels:
                assert int(labels["subscription_id"]) in subs.values()
            if "event_type" in labels:
                assert labels["event_type"] in EVENT_TYPES
            if "outcome" in labels:
                assert labels["outcome"] in ("delivered", "dead")
            if "result" in labels:
                assert labels["result"] in ("2xx", "3xx", "4xx", "5xx", "timeout", "error")
            if "table" in labels:
                assert labels["table"] in ("outbox", "deliveries", "delivery_attempts")


async def test_backlog_gauges_follow_the_database(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """The shared gauges report the database: undispatched outbox rows (kept so by a row lock
    that the dispatcher's SKIP LOCKED respects) count in relay_outbox_backlog and their age in
    relay_oldest_pending_age_seconds; pending deliveries of a disabled subscription count in
    relay_deliveries_pending, and one waiting for its retry time does not make the age grow.
    Once the rows are free they are dispatched and the gauges return to 0."""
    add_subscription(conn, receiver.url("/live"))
    paused = add_subscription(conn, receiver.url("/paused"), enabled=False)
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, created_at)"
        " SELECT 'order.created', '{}', now() - interval '300 seconds'"
        " FROM generate_series(1, 5)"
    )
    history = conn.execute(
        "INSERT INTO relay.outbox (event_type, payload, dispatched_at)"
        " VALUES ('order.created', '{}', now()) RETURNING id"
    ).fetchone()
    assert history is not None
    conn.execute(
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type, next_attempt_at)"
        " VALUES (%s, %s, 'order.created', now() + interval '1 hour')",
        (history[0], paused),
    )
    with psycopg.connect(database_url) as locker:  # a transaction holding the 5 rows
        locker.execute("SELECT id FROM relay.outbox WHERE dispatched_at IS NULL FOR UPDATE")
        async with serving_relay(database_url, gauge_interval=0.2) as served:

            async def gauges(backlog: int, pending: int) -> Any:
                samples = await served.metrics()
                got = (
                    value(samples, "relay_outbox_backlog"),
                    value(samples, "relay_deliveries_pending"),
                )
                return samples if got == (backlog, pending) else None

            samples = await async_wait_for(lambda: gauges(5, 1), 20, "backlog 5, pending 1")
            age = value(samples, "relay_oldest_pending_age_seconds")
            assert 300 <= age < 3600, age
            locker.rollback()  # the dispatcher may take them now
            # 5 new deliveries for /live are delivered; the paused one stays pending.
            await receiver.wait_for(5, timeout=30, path="/live")
            samples = await async_wait_for(lambda: gauges(0, 1), 20, "backlog 0, pending 1")
            # The only pending delivery waits for its retry time: nothing is late.
            assert value(samples, "relay_oldest_pending_age_seconds") == 0
