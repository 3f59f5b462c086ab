"""The daemon end to end: real Postgres, real HTTP to a loopback receiver."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook
from yarl import URL

from relay import __version__
from tests.receiver import Receiver, hang, redirect, respond
from tests.relayctx import (
    add_subscription,
    attempts,
    deliveries,
    emit,
    running_relay,
    statuses,
    wait_until,
)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

Conn = psycopg.Connection[Any]


async def test_post_default_body_headers_and_signature(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    add_subscription(conn, receiver.url(), secret=SECRET, headers={"Authorization": "Bearer t0k"})
    emit(conn, "order.created", {"userId": "a86dr8yl", "productCode": "AS92731331"})
    async with running_relay(database_url):
        (req,) = await receiver.wait_for(1)
    assert req.method == "POST"
    assert req.json == {
        "eventType": "ORDER.CREATED",
        "version": "v1",
        "userId": "a86dr8yl",
        "productCode": "AS92731331",
    }
    assert req.headers["content-type"] == "application/json"
    assert req.headers["user-agent"] == f"relay/{__version__}"
    assert req.headers["authorization"] == "Bearer t0k"
    assert req.headers["webhook-id"].startswith("msg_")
    Webhook(SECRET).verify(req.body.decode(), req.headers)  # raises if the signature is wrong
    (d,) = deliveries(conn)
    assert d["status"] == "delivered" and d["attempts"] == 1
    (a,) = attempts(conn, d["id"])
    assert a["status_code"] == 204 and a["error"] is None and a["duration_ms"] > 0


async def test_event_names_version_and_body_map(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    add_subscription(
        conn,
        receiver.url(),
        event_names={"test.processed": "TestResulted"},
        body_map={
            "type": "$.eventType",
            "ver": "$.version",
            "customer.id": "$.userId",
            "codes": "$.items[*].code",
            "missing": "$.nope",
        },
    )
    emit(conn, "test.processed", {"userId": "u1", "items": [{"code": "a"}, {"code": "b"}]})
    conn.execute(
        "SELECT relay.emit('test.processed', %s, NULL, NULL, 'v2')",
        ('{"userId": "u2", "items": []}',),
    )
    async with running_relay(database_url):
        reqs = await receiver.wait_for(2)
    bodies = sorted((r.json for r in reqs), key=lambda b: b["customer"]["id"])
    assert bodies[0] == {
        "type": "TestResulted",
        "ver": "v1",
        "customer": {"id": "u1"},
        "codes": ["a", "b"],
    }
    assert bodies[1] == {"type": "TestResulted", "ver": "v2", "customer": {"id": "u2"}}


async def test_get_encodes_notification_as_query(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    add_subscription(conn, receiver.url() + "?static=1", method="GET", secret=SECRET)
    emit(
        conn,
        "order.dispatched",
        {"orderId": "o-1", "qty": 2, "gift": True, "address": {"city": "Leeds"}},
    )
    async with running_relay(database_url):
        (req,) = await receiver.wait_for(1)
    assert req.method == "GET" and req.body == b""
    assert req.query == {
        "static": "1",
        "eventType": "ORDER.DISPATCHED",
        "version": "v1",
        "orderId": "o-1",
        "qty": "2",
        "gift": "true",
        "address": '{"city":"Leeds"}',
    }
    # For GET the signed content is the query string as sent (re-encoded from the pairs).
    raw_query = URL("http://x/").extend_query(req.query_pairs).raw_query_string
    Webhook(SECRET).verify(raw_query, req.headers, json_parse=False)


async def test_event_filter_globs_and_disabled(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    add_subscription(conn, receiver.url("/orders"), events=["order.*"])
    add_subscription(conn, receiver.url("/exact"), events=["test.validation_fail"])
    add_subscription(conn, receiver.url("/off"), enabled=False)
    for t in ("order.created", "order.out_for_delivery", "test.validation_fail", "test.registered"):
        emit(conn, t, {})
    async with running_relay(database_url):
        await receiver.wait_for(3)
        await asyncio.sleep(0.3)
    got = sorted((r.path, r.json["eventType"]) for r in receiver.requests)
    assert got == [
        ("/exact", "TEST.VALIDATION_FAIL"),
        ("/orders", "ORDER.CREATED"),
        ("/orders", "ORDER.OUT_FOR_DELIVERY"),
    ]


async def test_tenant_isolation(conn: Conn, database_url: str, receiver: Receiver) -> None:
    add_subscription(conn, receiver.url("/a"), tenant_id="acme")
    add_subscription(conn, receiver.url("/b"), tenant_id="globex")
    add_subscription(conn, receiver.url("/internal"))
    emit(conn, "order.created", {"n": 1}, tenant="acme")
    emit(conn, "order.created", {"n": 2}, tenant="globex")
    emit(conn, "order.created", {"n": 3})
    async with running_relay(database_url):
        await receiver.wait_for(5)
        await asyncio.sleep(0.3)
    got = sorted((r.path, r.json["n"]) for r in receiver.requests)
    assert got == [("/a", 1), ("/b", 2), ("/internal", 1), ("/internal", 2), ("/internal", 3)]


async def test_retries_then_delivered_with_history(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    receiver.script("/hook", [respond(500, body=b"boom"), respond(503), respond(200)])
    add_subscription(conn, receiver.url(), backoff_ms=200)
    emit(conn, "order.created", {})
    async with running_relay(database_url):
        reqs = await receiver.wait_for(3, timeout=10)
        await wait_until(lambda: statuses(conn) == ["delivered"])
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(reqs)]
    assert 0.2 <= gaps[0] < 0.2 + 0.5, gaps
    assert 0.4 <= gaps[1] < 0.4 + 0.5, gaps
    assert len({r.headers["webhook-id"] for r in reqs}) == 1  # stable across retries
    (d,) = deliveries(conn)
    assert d["attempts"] == 3
    history = attempts(conn, d["id"])
    assert [a["status_code"] for a in history] == [500, 503, 200]
    assert history[0]["response_body"] == "boom"
    assert history[0]["error"] == "HTTP 500"


async def test_dead_after_budget_then_replay(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    receiver.script("/hook", [respond(500)] * 3 + [respond(204)])
    add_subscription(conn, receiver.url(), backoff_ms=50, max_retries=2)
    emit(conn, "order.created", {})
    async with running_relay(database_url):
        await receiver.wait_for(3)
        await wait_until(lambda: statuses(conn) == ["dead"])
        await asyncio.sleep(0.3)
        assert len(receiver.requests) == 3  # 1 + 2 retries, then nothing
        (d,) = deliveries(conn)
        assert d["last_status_code"] == 500 and d["dead_at"] is not None
        # Replay (what `relay replay ID` does): fresh budget, history kept.
        conn.execute(
            "UPDATE relay.deliveries SET status='pending', failures=0, next_attempt_at=now(),"
            " dead_at=NULL WHERE id=%s",
            (d["id"],),
        )
        conn.execute("SELECT pg_notify('relay_deliveries', '')")
        await receiver.wait_for(4)
        await wait_until(lambda: statuses(conn) == ["delivered"])
    (d,) = deliveries(conn)
    assert d["attempts"] == 4
    assert [a["status_code"] for a in attempts(conn, d["id"])] == [500, 500, 500, 204]


async def test_redirect_and_timeout_are_failures(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    receiver.script("/redir", [redirect("http://127.0.0.1:1/elsewhere")])
    receiver.script("/slow", [hang(5)])
    add_subscription(conn, receiver.url("/redir"), max_retries=0)
    add_subscription(conn, receiver.url("/slow"), max_retries=0, timeout_ms=300)
    emit(conn, "order.created", {})
    async with running_relay(database_url):
        # One read for both conditions: with two, the first could see no rows yet (all() of
        # nothing is true) and the second both rows just fanned out, still pending.
        await wait_until(lambda: statuses(conn) == ["dead", "dead"])
    by_url = {d["subscription_id"]: d for d in deliveries(conn)}
    errors = sorted(str(d["last_error"]) for d in by_url.values())
    assert errors[0].startswith("HTTP 302 redirect to http://127.0.0.1:1/elsewhere")
    assert errors[1] == "timeout after 300 ms"
    assert all(r.path != "/elsewhere" for r in receiver.requests)


async def test_loopback_refused_unless_allowed(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    add_subscription(conn, receiver.url(), max_retries=0)
    emit(conn, "order.created", {})
    async with running_relay(database_url, allowed_networks=""):
        await wait_until(lambda: statuses(conn) == ["dead"])
    assert receiver.requests == []
    assert "127.0.0.1" in deliveries(conn)[0]["last_error"]


async def test_out_of_order_commit_is_delivered(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """A transaction that inserts first (lower id) and commits last is still delivered."""
    add_subscription(conn, receiver.url())
    async with running_relay(database_url):
        with psycopg.connect(database_url) as slow:
            slow_id = emit(slow, "order.created", {"who": "slow"})  # not committed yet
            fast_id = emit(conn, "order.created", {"who": "fast"})  # autocommit
            assert slow_id < fast_id
            await receiver.wait_for(1)
            slow.commit()
        reqs = await receiver.wait_for(2)
    assert [r.json["who"] for r in reqs] == ["fast", "slow"]


@pytest.mark.parametrize("n_events", [300])
async def test_two_relays_never_deliver_an_attempt_twice(
    conn: Conn, database_url: str, receiver: Receiver, n_events: int
) -> None:
    add_subscription(conn, receiver.url())
    conn.execute(
        "INSERT INTO relay.outbox (event_type, payload)"
        " SELECT 'order.created', jsonb_build_object('n', g) FROM generate_series(1, %s) g",
        (n_events,),
    )
    async with (
        running_relay(database_url, relay_id="r1") as r1,
        running_relay(database_url, relay_id="r2") as r2,
    ):
        reqs = await receiver.wait_for(n_events, timeout=30)
        await asyncio.sleep(0.3)
        assert r1 is not r2
    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == len(set(ids)) == n_events == len(reqs)
    owners = {
        row[0]: row[1]
        for row in conn.execute(
            "SELECT relay_id, count(*) FROM relay.delivery_attempts GROUP BY relay_id"
        )
    }
    assert sum(owners.values()) == n_events
    assert set(owners) <= {"r1", "r2"}


@pytest.mark.slow
async def test_default_schedule_is_5_10_15_seconds_then_dead(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """The contract's defaults, unshortened: 3 retries, 5 s × n after each failure ends."""
    receiver.script("/hook", [respond(500)])
    sub = add_subscription(conn, receiver.url())  # column defaults: 3 retries, 5000 ms
    row = conn.execute(
        "SELECT max_retries, backoff_ms, timeout_ms FROM relay.subscriptions WHERE id=%s", (sub,)
    ).fetchone()
    assert row == (3, 5000, 10000)
    emit(conn, "order.created", {})
    async with running_relay(database_url):
        reqs = await receiver.wait_for(4, timeout=45)
        await wait_until(lambda: statuses(conn) == ["dead"], timeout=5)
        await asyncio.sleep(1.0)
        assert len(receiver.requests) == 4
    gaps = [b.received_at - a.received_at for a, b in itertools.pairwise(reqs)]
    for gap, expected in zip(gaps, (5.0, 10.0, 15.0), strict=True):
        assert expected <= gap < expected + 1.0, gaps
    history = attempts(conn, deliveries(conn)[0]["id"])
    assert [a["attempt"] for a in history] == [1, 2, 3, 4]


async def test_secret_rotation_through_the_cli_signs_with_both_during_the_overlap(
    conn: Conn, database_url: str, receiver: Receiver, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay.cli import main as cli

    old, new = SECRET, "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk="
    assert (
        cli(
            ["subscription", "add", receiver.url(), "--secret", old, "--database-url", database_url]
        )
        == 0
    )
    sub = capsys.readouterr().out.strip()
    assert (
        cli(
            [
                "subscription",
                "update",
                sub,
                "--secret",
                new,
                "--secret-overlap",
                "1h",
                "--database-url",
                database_url,
            ]
        )
        == 0
    )
    emit(conn, "order.created", {"n": 1})
    async with running_relay(database_url):
        (req,) = await receiver.wait_for(1)
    signatures = req.headers["webhook-signature"].split(" ")
    assert len(signatures) == 2
    for secret in (old, new):  # receivers on either secret verify during the overlap
        Webhook(secret).verify(req.body.decode(), req.headers)
    # --secret-overlap 0: the old secret stops signing at once.
    assert (
        cli(
            [
                "subscription",
                "update",
                sub,
                "--secret",
                old,
                "--secret-overlap",
                "0",
                "--database-url",
                database_url,
            ]
        )
        == 0
    )
    emit(conn, "order.created", {"n": 2})
    async with running_relay(database_url):
        reqs = await receiver.wait_for(2)
    assert len(reqs[1].headers["webhook-signature"].split(" ")) == 1
    # Bad input names the field and changes nothing.
    assert (
        cli(
            [
                "subscription",
                "update",
                sub,
                "--secret-overlap",
                "1h",
                "--database-url",
                database_url,
            ]
        )
        == 2
    )
    assert "secret_overlap" in capsys.readouterr().err
