"""Run a real relay (the daemon's own classes, in this test's event loop) against a test DB."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg

from relay.config import Config
from relay.daemon.service import Relay

# The event types the migrations seed (the product text's catalog).
SEEDED_EVENT_TYPES = (
    "order.created",
    "order.dispatched",
    "order.out_for_delivery",
    "order.received",
    "test.registered",
    "test.lab_accessioned",
    "test.processed",
    "test.validation_success",
    "test.validation_fail",
)

# Tests deliver to the loopback receiver, which the SSRF guard refuses by default.
TEST_ALLOWED = "127.0.0.0/8,::1/128"


def test_config(**overrides: Any) -> Config:
    base = Config(
        metrics_addr="127.0.0.1:0",
        allowed_networks=TEST_ALLOWED,
        poll_interval=1.0,
        gauge_interval=0.5,
        lease_seconds=30.0,
        drain_timeout=2.0,
        concurrency=16,
        pool_size=4,
    )
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def running_relay(url: str, **overrides: Any) -> AsyncIterator[Relay]:
    relay = Relay(test_config(**overrides), url)
    task = asyncio.create_task(relay.run(install_signals=False))
    try:
        for _ in range(200):  # wait until it is claiming (schema checked)
            if relay.schema_ok or task.done():
                break
            await asyncio.sleep(0.02)
        if task.done():
            task.result()
        yield relay
    finally:
        relay.stop()
        assert await asyncio.wait_for(task, 30) == 0


def add_subscription(conn: psycopg.Connection[Any], url: str, **fields: Any) -> int:
    """Insert a subscription row directly (the CLI path is tested in test_cli)."""
    cols = {"url": url, **fields}
    for key in ("headers", "event_names", "body_map"):
        if key in cols and cols[key] is not None and not isinstance(cols[key], str):
            cols[key] = json.dumps(cols[key])
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    row = conn.execute(
        f"INSERT INTO relay.subscriptions ({names}) VALUES ({marks}) RETURNING id",
        list(cols.values()),
    ).fetchone()
    assert row is not None
    return int(row[0])


def emit(
    conn: psycopg.Connection[Any],
    event_type: str,
    payload: dict[str, Any],
    tenant: str | None = None,
) -> int:
    row = conn.execute(
        "SELECT relay.emit(%s, %s::jsonb, NULL, %s)", (event_type, json.dumps(payload), tenant)
    ).fetchone()
    assert row is not None
    return int(row[0])


def deliveries(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM relay.deliveries ORDER BY id")
        return cur.fetchall()


def statuses(conn: psycopg.Connection[Any]) -> list[str]:
    return [str(r[0]) for r in conn.execute("SELECT status FROM relay.deliveries ORDER BY id")]


def attempts(conn: psycopg.Connection[Any], delivery_id: int) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT * FROM relay.delivery_attempts WHERE delivery_id = %s ORDER BY attempt",
            (delivery_id,),
        )
        return cur.fetchall()


async def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if predicate():
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
