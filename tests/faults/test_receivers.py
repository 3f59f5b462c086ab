"""Misbehaving receivers: each has one defined, tested outcome.

In-process relay and receiver over real loopback HTTP. For every case the test asserts the
delivery's status, its attempt rows, the recorded status code / error, and that no stored
response body exceeds 1024 characters.
"""

from __future__ import annotations

import asyncio
import ssl
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.faults._util import Conn, free_port, self_signed_cert
from tests.receiver import Receiver, hang, huge, redirect, reset, respond
from tests.relayctx import add_subscription, attempts, deliveries, emit, running_relay, wait_until

BODY_LIMIT = 1024


def _only(conn: Conn) -> dict[str, Any]:
    (d,) = deliveries(conn)
    return d


def _check_bodies(conn: Conn) -> None:
    longest = conn.execute(
        "SELECT coalesce(max(length(response_body)), 0) FROM relay.delivery_attempts"
    ).fetchone()
    assert longest is not None and longest[0] <= BODY_LIMIT


async def _run_until_final(conn: Conn, url: str, timeout: float = 20.0) -> dict[str, Any]:
    """Run a relay until the single delivery is delivered or dead; return it."""
    async with running_relay(url):
        await wait_until(
            lambda: [d["status"] for d in deliveries(conn)] in (["delivered"], ["dead"]),
            timeout=timeout,
        )
    _check_bodies(conn)
    return _only(conn)


async def test_500_is_retried_then_dead(conn: Conn, database_url: str, receiver: Receiver) -> None:
    """A 500 answer is a failed attempt: retried per the schedule, then dead; the body is
    kept (truncated to 1024 characters) and the error says ``HTTP 500``."""
    receiver.script("/hook", [respond(500, body="boom " * 400)])
    add_subscription(conn, receiver.url(), max_retries=2, backoff_ms=100)
    emit(conn, "order.created", {})
    d = await _run_until_final(conn, database_url)
    assert d["status"] == "dead" and d["attempts"] == 3 and d["last_status_code"] == 500
    assert d["last_error"] == "HTTP 500"
    history = attempts(conn, d["id"])
    assert [a["status_code"] for a in history] == [500, 500, 500]
    assert all(a["response_body"] == ("boom " * 400)[:BODY_LIMIT] for a in history)
    assert len(receiver.requests) == 3


async def test_503_retry_after_is_honoured(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """503 with ``Retry-After: 2`` delays the retry to >= 2 s although backoff_ms is 100."""
    receiver.script("/hook", [respond(503, headers={"Retry-After": "2"}), respond(204)])
    add_subscription(conn, receiver.url(), max_retries=1, backoff_ms=100)
    emit(conn, "order.created", {})
    d = await _run_until_final(conn, database_url)
    first, second = receiver.requests
    assert second.received_at - first.received_at >= 2.0
    assert d["status"] == "delivered" and d["attempts"] == 2
    assert [a["status_code"] for a in attempts(conn, d["id"])] == [503, 204]


async def test_429_retry_after_is_honoured_and_capped(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """429 with ``Retry-After: 1`` delays the retry to >= 1 s (backoff_ms 100); an absurd
    ``Retry-After`` (10 days) is capped at one hour."""
    receiver.script("/ok", [respond(429, headers={"Retry-After": "1"}), respond(200)])
    receiver.script("/far", [respond(429, headers={"Retry-After": "864000"})])
    ok = add_subscription(conn, receiver.url("/ok"), max_retries=1, backoff_ms=100)
    far = add_subscription(conn, receiver.url("/far"), max_retries=1, backoff_ms=100)
    emit(conn, "order.created", {})
    async with running_relay(database_url):
        await wait_until(lambda: any(d["status"] == "delivered" for d in deliveries(conn)), 10)
        await wait_until(
            lambda: any(
                d["subscription_id"] == far and d["attempts"] == 1 for d in deliveries(conn)
            ),
            10,
        )
    by_sub = {d["subscription_id"]: d for d in deliveries(conn)}
    first, second = receiver.requests_to("/ok")
    assert second.received_at - first.received_at >= 1.0
    assert [a["status_code"] for a in attempts(conn, by_sub[ok]["id"])] == [429, 200]
    parked = by_sub[far]
    assert parked["status"] == "pending" and parked["last_status_code"] == 429
    (a,) = attempts(conn, parked["id"])
    wait = parked["next_attempt_at"] - (a["started_at"] + timedelta(milliseconds=a["duration_ms"]))
    assert timedelta(minutes=59) < wait < timedelta(minutes=61), wait
    _check_bodies(conn)


async def test_410_gone_is_retried_like_any_4xx(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """410 Gone gets no special treatment: it is retried like any non-2xx, then dead."""
    receiver.script("/hook", [respond(410, body="gone")])
    add_subscription(conn, receiver.url(), max_retries=2, backoff_ms=50)
    emit(conn, "order.created", {})
    d = await _run_until_final(conn, database_url)
    assert d["status"] == "dead" and d["attempts"] == 3
    assert d["last_status_code"] == 410 and d["last_error"] == "HTTP 410"
    assert [a["response_body"] for a in attempts(conn, d["id"])] == ["gone"] * 3


async def test_302_is_not_followed(conn: Conn, database_url: str, receiver: Receiver) -> None:
    """A redirect is a failure, never followed: the error names the Location."""
    receiver.script("/hook", [redirect(receiver.url("/elsewhere"))])
    add_subscription(conn, receiver.url(), max_retries=0)
    emit(conn, "order.created", {})
    d = await _run_until_final(conn, database_url)
    assert d["status"] == "dead" and d["last_status_code"] == 302
    assert d["last_error"] == f"HTTP 302 redirect to {receiver.url('/elsewhere')} (not followed)"
    assert receiver.requests_to("/elsewhere") == []


async def test_slow_receiver_times_out(conn: Conn, database_url: str, receiver: Receiver) -> None:
    """No answer within timeout_ms: the attempt fails with ``timeout after N ms`` after about
    N ms (not the receiver's 30 s)."""
    receiver.script("/hook", [hang(30)])
    add_subscription(conn, receiver.url(), max_retries=0, timeout_ms=400)
    emit(conn, "order.created", {})
    d = await _run_until_final(conn, database_url)
    assert d["status"] == "dead" and d["last_status_code"] is None
    assert d["last_error"] == "timeout after 400 ms"
    (a,) = attempts(conn, d["id"])
    assert 400 <= a["duration_ms"] < 2000


async def test_connection_refused(conn: Conn, database_url: str) -> None:
    """A closed port: a connect error, retried, then dead."""
    port = free_port()
    add_subscription(conn, f"http://127.0.0.1:{port}/hook", max_retries=1, backoff_ms=50)
    emit(conn, "order.created", {})
    d = await _run_until_final(conn, database_url)
    assert d["status"] == "dead" and d["attempts"] == 2 and d["last_status_code"] is None
    assert d["last_error"].startswith("connect error:"), d["last_error"]
    assert f"127.0.0.1:{port}" in d["last_error"]


async def test_connection_reset_before_answer(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """A TCP reset instead of an answer is a failed attempt (an error, no status code)."""
    receiver.script("/hook", [reset()])
    add_subscription(conn, receiver.url(), max_retries=1, backoff_ms=50)
    emit(conn, "order.created", {})
    d = await _run_until_final(conn, database_url)
    assert d["status"] == "dead" and d["attempts"] == 2 and d["last_status_code"] is None
    assert "reset" in d["last_error"].lower(), d["last_error"]


async def test_connection_reset_mid_response(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """A 200 status line followed by part of the promised body (Content-Length: 1000, 7 bytes
    sent) and a TCP reset is a failure: the response never completed, so the receiver (or the
    proxy in front of it) may not have processed the webhook."""
    receiver.script("/hook", [reset(partial=True)])
    add_subscription(conn, receiver.url(), max_retries=0)
    emit(conn, "order.created", {})
    d = await _run_until_final(conn, database_url)
    assert d["status"] == "dead", d
    assert d["last_error"], d


async def test_huge_response_body_is_truncated(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """A 10 MB 2xx answer is a success; only the first 1024 characters are stored (the rest is
    not even read). A 10 MB 500 is a failure with a truncated body too."""
    receiver.script("/ok", [huge(10 * 1024 * 1024, 200)])
    receiver.script("/bad", [huge(10 * 1024 * 1024, 500)])
    ok = add_subscription(conn, receiver.url("/ok"), max_retries=0)
    add_subscription(conn, receiver.url("/bad"), max_retries=0)
    emit(conn, "order.created", {})
    async with running_relay(database_url):
        await wait_until(
            lambda: sorted(d["status"] for d in deliveries(conn)) == ["dead", "delivered"],
            timeout=20,
        )
    for d in deliveries(conn):
        (a,) = attempts(conn, d["id"])
        assert a["response_body"] == "x" * BODY_LIMIT
        assert d["status"] == ("delivered" if d["subscription_id"] == ok else "dead")
    _check_bodies(conn)


async def test_invalid_tls_certificate(conn: Conn, database_url: str, tmp_path: Path) -> None:
    """An https endpoint with a self-signed certificate: every attempt fails with a TLS error
    and the request never reaches the handler (the body is never sent)."""
    reached: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        with self_signed_cert(tmp_path) as ctx:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
            await site.start()
            port = runner.addresses[0][1]
            # Sanity: the server does speak TLS (an unverified client gets through).
            await _probe_tls(port)
            reached.clear()
            add_subscription(conn, f"https://127.0.0.1:{port}/hook", max_retries=1, backoff_ms=50)
            emit(conn, "order.created", {})
            d = await _run_until_final(conn, database_url)
    finally:
        await runner.cleanup()
    assert d["status"] == "dead" and d["attempts"] == 2 and d["delivered_at"] is None
    assert d["last_error"].startswith("TLS error:"), d["last_error"]
    assert "certificate" in d["last_error"].lower()
    assert all(a["error"].startswith("TLS error:") for a in attempts(conn, d["id"]))
    assert reached == []


async def _probe_tls(port: int) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    writer.write(b"GET /probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    assert (await reader.readline()).startswith(b"HTTP/1.1 204")
    writer.close()


async def test_every_failure_kind_at_once_never_blocks_a_healthy_subscription(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """All the bad receivers above at once, beside a healthy one: the healthy subscription gets
    every event promptly while the others fail."""
    behaviours = {
        "/500": respond(500),
        "/hang": hang(30),
        "/reset": reset(),
        "/huge": huge(10 * 1024 * 1024, 200),
        "/redir": redirect("http://127.0.0.1:1/"),
    }
    for path, behaviour in behaviours.items():
        receiver.script(path, [behaviour])
        add_subscription(conn, receiver.url(path), max_retries=1, backoff_ms=200, timeout_ms=3000)
    add_subscription(conn, receiver.url("/healthy"))
    for i in range(20):
        emit(conn, "order.created", {"i": i})
    async with running_relay(database_url, concurrency=8):
        reqs = await receiver.wait_for(20, path="/healthy", timeout=15)
    assert sorted(r.json["i"] for r in reqs) == list(range(20))
    _check_bodies(conn)
