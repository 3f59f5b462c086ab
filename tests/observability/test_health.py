"""``/healthz`` and ``/readyz``: liveness always, readiness naming the check that fails.

A relay whose database has no schema, or whose database goes away, stays up (no crash, no
restart loop), answers /healthz, and reports the failing check on /readyz until it recovers.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import psycopg

from relay.sql.migrate import migrate
from tests.observability.conftest import (
    RelayProc,
    Served,
    async_wait_for,
    serving_relay,
    value,
    wait_for,
)
from tests.proxy import TcpProxy
from tests.receiver import Receiver, ReceiverProcess
from tests.relayctx import add_subscription, emit

Conn = psycopg.Connection[Any]


def _target(url: str) -> tuple[str, int]:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


async def _readyz(served: Served) -> tuple[int, dict[str, Any]]:
    return await served.get_json("/readyz")


async def test_healthz_and_readyz_when_ready(database_url: str) -> None:
    """A healthy relay: /healthz 200 JSON ``{"status": "ok"}``, /readyz 200 JSON with every
    check (database, listener, schema) ok."""
    async with serving_relay(database_url) as served:

        async def ready() -> Any:
            status, body = await _readyz(served)
            return (status, body) if status == 200 else None

        status, body = await async_wait_for(ready, 20, "/readyz 200")
        assert body["status"] == "ready"
        checks = body["checks"]
        for name in ("database", "schema", "listener"):
            assert checks[name]["ok"] is True, (name, body)
        status, health = await served.get_json("/healthz")
        assert status == 200 and health["status"] == "ok", health


async def test_missing_schema_is_reported_not_fatal(
    empty_database_url: str, receiver: Receiver
) -> None:
    """Against a database nobody migrated, the relay keeps running and alive (/healthz 200)
    while /readyz answers 503 naming ``schema``; once ``relay migrate`` has run it becomes
    ready by itself and delivers."""
    async with serving_relay(empty_database_url) as served:

        async def schema_reported() -> Any:
            status, body = await _readyz(served)
            return body if status == 503 and "schema" in body.get("checks", {}) else None

        body = await async_wait_for(schema_reported, 20, "/readyz 503 naming schema")
        assert body["status"] == "not ready"
        assert body["checks"]["schema"]["ok"] is False
        assert "migrate" in body["checks"]["schema"]["error"]
        assert body["checks"]["database"]["ok"] is True, body
        status, _ = await served.get("/healthz")
        assert status == 200
        assert not served.task.done(), "the relay must not exit on a missing schema"

        with psycopg.connect(empty_database_url, autocommit=True) as conn:
            migrate(conn)
            add_subscription(conn, receiver.url("/after-migrate"))
            emit(conn, "order.created", {"n": 1})

            async def ready() -> bool:
                return (await _readyz(served))[0] == 200

            await async_wait_for(ready, 60, "/readyz 200 after the migration")
            await receiver.wait_for(1, timeout=30, path="/after-migrate")


def test_database_outage_is_reported_then_recovered(
    conn: Conn,
    database_url: str,
    obs_relay: Callable[..., RelayProc],
    receiver_process: ReceiverProcess,
) -> None:
    """A real ``relay run`` whose database connection is cut (TCP proxy stopped) stays up:
    /healthz 200, /readyz 503 naming ``database``, ``relay_db_connected`` 0. When the proxy
    is back, /readyz returns to 200 and events are delivered again."""
    add_subscription(conn, receiver_process.url)
    with TcpProxy(*_target(database_url)) as proxy:
        relay = obs_relay(proxy.rewrite(database_url))
        relay.wait_ready()
        emit(conn, "order.created", {"n": 1})
        receiver_process.wait_for(1, timeout=30)

        proxy.stop()

        def database_reported() -> Any:
            status, body = relay.get_json("/readyz")
            return body if status == 503 and not body["checks"]["database"]["ok"] else None

        body = wait_for(database_reported, 30, "/readyz 503 naming database")
        assert body["status"] == "not ready"
        assert body["checks"]["database"]["error"], body
        assert relay.get("/healthz")[0] == 200
        wait_for(
            lambda: value(relay.metrics(), "relay_db_connected", connection="pool") == 0,
            30,
            "relay_db_connected{connection=pool} 0",
        )
        assert relay.running, relay.log()

        emit(conn, "order.created", {"n": 2})  # committed while the relay cannot see it
        proxy.start()
        relay.wait_ready(60)
        receiver_process.wait_for(2, timeout=60)
        wait_for(
            lambda: value(relay.metrics(), "relay_db_connected", connection="pool") == 1,
            30,
            "relay_db_connected{connection=pool} 1",
        )
        assert relay.running
        relay.proc.send_signal(signal.SIGTERM)  # while the database is still reachable
        assert relay.wait(30) == 0
