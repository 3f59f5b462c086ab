"""Graceful lifecycle of a real ``relay run``: SIGTERM drains then releases what is still in
flight; a database that is down at start is waited for, not a crash."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.observability.conftest import RelayProc, wait_for
from tests.proxy import TcpProxy
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription, emit

Conn = psycopg.Connection[Any]

DRAIN_TIMEOUT = 1.0
IN_FLIGHT = 4


def _one(conn: Conn, sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_sigterm_lets_in_flight_requests_finish_past_the_drain_timeout(
    conn: Conn, database_url: str, obs_relay: Callable[..., RelayProc], tmp_path: Path
) -> None:
    """Requests that outlive RELAY_DRAIN_TIMEOUT (receiver takes 3 s, drain 1 s, subscription
    timeout 10 s): on SIGTERM /readyz turns 503 ("stopping"), each request runs out its own
    timeout instead of being cut at the drain timeout (issue 14: that sent it again after the
    restart), its outcome is recorded, and the process exits 0: delivered once each."""
    with start_receiver_process(tmp_path, delay=3.0) as slow:
        add_subscription(conn, slow.url)
        for n in range(IN_FLIGHT):
            emit(conn, "order.created", {"n": n})
        relay = obs_relay(database_url, drain_timeout=DRAIN_TIMEOUT, concurrency=8)
        relay.wait_ready()
        slow.wait_for(IN_FLIGHT, timeout=30)
        leased = _one(
            conn,
            "SELECT count(*) FROM relay.deliveries WHERE status = 'pending'"
            " AND lease_token IS NOT NULL",
        )
        assert leased == IN_FLIGHT

        relay.proc.send_signal(signal.SIGTERM)
        not_ready = None
        deadline = time.monotonic() + DRAIN_TIMEOUT + 10
        while not_ready is None and time.monotonic() < deadline and relay.running:
            try:
                status, body = relay.get_json("/readyz")
            except OSError:
                break
            if status == 503:
                not_ready = body
        assert relay.wait(DRAIN_TIMEOUT + 15) == 0, relay.log()
        assert len(slow.records()) == IN_FLIGHT, "nothing new was claimed while stopping"

    # The endpoint stays up while draining and says why the relay is not ready.
    assert not_ready is not None, "no /readyz 503 seen while draining"
    assert not_ready["checks"]["stopping"]["ok"] is False, not_ready
    rows = conn.execute(
        "SELECT status, lease_token, lease_owner, attempts FROM relay.deliveries ORDER BY id"
    ).fetchall()
    assert rows == [("delivered", None, None, 1)] * IN_FLIGHT, rows
    assert _one(conn, "SELECT count(*) FROM relay.delivery_attempts") == IN_FLIGHT


def test_database_down_at_start_is_retried_not_fatal(
    conn: Conn,
    database_url: str,
    obs_relay: Callable[..., RelayProc],
    tmp_path: Path,
) -> None:
    """A relay started while its database is unreachable (a stopped TCP proxy) keeps running,
    answers /healthz, reports ``database`` on /readyz; when the database comes back 3 s later
    it becomes ready and delivers — the process is still the same one."""
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(database_url)
    with (
        start_receiver_process(tmp_path) as rx,
        TcpProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)) as proxy,
    ):
        add_subscription(conn, rx.url)
        emit(conn, "order.created", {"n": 1})
        proxy.stop()
        relay = obs_relay(proxy.rewrite(database_url))
        started = time.monotonic()
        relay.wait_listening()

        def database_reported() -> Any:
            status, body = relay.get_json("/readyz")
            return body if status == 503 and not body["checks"]["database"]["ok"] else None

        body = wait_for(database_reported, 30, "/readyz 503 naming database")
        assert body["status"] == "not ready", body
        assert relay.get("/healthz")[0] == 200

        time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))  # the outage lasts 3 s
        assert relay.running, f"relay exited during the outage:\n{relay.log()}"
        proxy.start()
        rx.wait_for(1, timeout=60)
        relay.wait_ready(60)
        time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
        assert relay.running, relay.log()
        warnings = [r for r in relay.log_records() if r.get("level") == "warning"]
        assert warnings, "the outage should be logged"
        assert not [r for r in relay.log_records() if "exc" in r and r["level"] == "error"]
        relay.proc.send_signal(signal.SIGTERM)  # while the database is still reachable
        assert relay.wait(30) == 0


def test_closed_database_port_is_reported_and_sigterm_still_exits_zero(
    obs_relay: Callable[..., RelayProc],
) -> None:
    """Pointed at a closed port, relay stays up and alive (/healthz 200) with /readyz 503
    naming ``database``; SIGTERM then ends it with exit 0 before relay.service's
    TimeoutStopSec=30 would SIGKILL it."""
    relay = obs_relay("postgresql://postgres@127.0.0.1:1/relay", drain_timeout=DRAIN_TIMEOUT)
    relay.wait_listening()

    def database_reported() -> Any:
        status, body = relay.get_json("/readyz")
        return body if status == 503 and not body["checks"]["database"]["ok"] else None

    body = wait_for(database_reported, 30, "/readyz 503 naming database")
    assert body["checks"]["database"]["error"], body
    assert relay.get("/healthz")[0] == 200
    assert relay.running
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.wait(25) == 0, relay.log()
