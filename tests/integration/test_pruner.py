"""Retention inside `relay run` (relay/daemon/pruner.py): a real relay on a real Postgres."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pytest

from relay.daemon import pruner
from relay.daemon.service import Relay
from tests.history import DAY, HOUR, delivery, event, ids, scalar, subscription
from tests.relayctx import running_relay, wait_until

Conn = psycopg.Connection[Any]


@pytest.fixture(autouse=True)
def fast_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pruner, "PRUNE_INTERVAL", 0.2)


def pruned(relay: Relay, table: str) -> float:
    value = relay.metrics.registry.get_sample_value("relay_pruned_rows_total", {"table": table})
    return value or 0.0


def history_bytes(relay: Relay, table: str) -> float | None:
    return relay.metrics.registry.get_sample_value("relay_history_bytes", {"table": table})


def old_history(conn: Conn, n: int) -> tuple[set[int], set[int]]:
    """``n`` events delivered two days ago (one attempt each); (outbox ids, delivery ids)."""
    sub = subscription(conn)
    conn.execute("UPDATE relay.subscriptions SET enabled = false WHERE id = %s", (sub,))
    outbox, deliveries = set(), set()
    for _ in range(n):
        e = event(conn, 3 * DAY)
        outbox.add(e)
        deliveries.add(delivery(conn, e, sub, "delivered", 2 * DAY))
    return outbox, deliveries


async def test_running_relay_prunes_by_itself_and_keeps_pending_work(
    conn: Conn, database_url: str
) -> None:
    gone_outbox, gone_deliveries = old_history(conn, 3)
    sub = subscription(conn)
    # kept: an old event whose delivery is still pending (parked: its subscription is off)
    conn.execute("UPDATE relay.subscriptions SET enabled = false WHERE id = %s", (sub,))
    needed = event(conn, 3 * DAY)
    pending = delivery(conn, needed, sub, "pending", attempts=2)
    # kept: finished within the retention
    young = event(conn, HOUR)
    recent = delivery(conn, young, sub, "dead", HOUR)
    async with running_relay(database_url, retention="1d") as relay:
        await wait_until(lambda: not (ids(conn, "outbox") & gone_outbox), timeout=20)
        assert pruned(relay, "deliveries") == 3
        assert pruned(relay, "delivery_attempts") == 3
        assert pruned(relay, "outbox") == 3
        for table in ("outbox", "deliveries", "delivery_attempts"):
            assert (history_bytes(relay, table) or 0) > 0
    assert ids(conn, "deliveries") == {pending, recent}
    assert ids(conn, "outbox") == {needed, young}
    assert not ids(conn, "deliveries") & gone_deliveries
    assert scalar(conn, "SELECT count(*) FROM relay.delivery_attempts") == 2 + 1


async def test_retention_off_keeps_everything_and_still_reports_sizes(
    conn: Conn, database_url: str
) -> None:
    outbox, deliveries = old_history(conn, 2)
    async with running_relay(database_url, retention="off") as relay:
        await wait_until(lambda: history_bytes(relay, "deliveries") is not None, timeout=10)
        passes = 0

        def several_passes() -> bool:
            nonlocal passes
            passes += 1
            return passes > 20  # 20 x 50 ms: five prune intervals

        await wait_until(several_passes, timeout=10)
        assert pruned(relay, "deliveries") == 0
    assert ids(conn, "outbox") == outbox and ids(conn, "deliveries") == deliveries


async def test_two_relays_pruning_at_once_delete_each_row_once(
    conn: Conn,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(pruner, "PRUNE_BATCH", 7)
    monkeypatch.setattr(pruner, "PRUNE_PAUSE", 0.0)
    old_history(conn, 120)
    caplog.set_level(logging.WARNING)
    async with (
        running_relay(database_url, retention="1d", pool_size=3) as one,
        running_relay(database_url, retention="1d", pool_size=3) as two,
    ):
        await wait_until(lambda: not ids(conn, "outbox"), timeout=30)
        counts = {t: pruned(one, t) + pruned(two, t) for t in ("deliveries", "outbox")}
    assert counts == {"deliveries": 120, "outbox": 120}
    assert not ids(conn, "deliveries")
    problems = [r.getMessage() for r in caplog.records if r.name.startswith("relay")]
    assert not [p for p in problems if "pruner" in p], problems
