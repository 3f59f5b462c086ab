"""At info, successes are summarised per subscription; each one is a debug line."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from relay.daemon import summary
from tests.receiver import Receiver, respond
from tests.relayctx import add_subscription, emit, running_relay, statuses, wait_until

Conn = psycopg.Connection[Any]


async def test_info_logs_a_summary_per_subscription_not_a_line_per_delivery(
    conn: Conn, database_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    monkeypatch.setattr(summary, "SUMMARY_SECONDS", 0.5)
    caplog.set_level(logging.INFO, logger="relay.daemon")
    async with Receiver(default=respond(204)) as rx:
        first = add_subscription(conn, rx.url("/a"))
        second = add_subscription(conn, rx.url("/b"))
        for n in range(20):
            emit(conn, "order.created", {"n": n})
        async with running_relay(database_url):
            await wait_until(lambda: statuses(conn).count("delivered") == 40, timeout=30)
    daemon = [r for r in caplog.records if r.name == "relay.daemon"]
    assert not [r for r in daemon if r.getMessage() == "delivered"], "one line per success"
    summaries = [r for r in daemon if getattr(r, "delivered", None) is not None]
    per_sub: dict[int, int] = {}
    for r in summaries:
        assert r.levelno == logging.INFO
        per_sub[r.subscription_id] = per_sub.get(r.subscription_id, 0) + r.delivered  # type: ignore[attr-defined]
    assert per_sub == {first: 20, second: 20}, "every success counted once, per subscription"


async def test_debug_still_logs_each_delivery(
    conn: Conn, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="relay.daemon")
    async with Receiver(default=respond(204)) as rx:
        add_subscription(conn, rx.url("/a"))
        for n in range(3):
            emit(conn, "order.created", {"n": n})
        async with running_relay(database_url):
            await wait_until(lambda: statuses(conn).count("delivered") == 3, timeout=30)
    lines = [r for r in caplog.records if r.getMessage() == "delivered"]
    assert len(lines) == 3 and all(r.levelno == logging.DEBUG for r in lines)
