"""``relay demo`` against a real Postgres: in-process, re-run, failure path and subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from relay import demo
from tests.relayctx import SEEDED_EVENT_TYPES

Conn = psycopg.Connection[Any]

REPO = Path(__file__).resolve().parents[2]
CATALOG = set(SEEDED_EVENT_TYPES)


def demo_args(database_url: str, *extra: str) -> list[str]:
    """Demo options for tests: the given database and an ephemeral metrics port."""
    return ["--database-url", database_url, "--metrics-addr", "127.0.0.1:0", *extra]


def runs(conn: Conn) -> list[dict[str, Any]]:
    """Every recorded demo run, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM relay_demo.runs ORDER BY started_at, run_id")
        return cur.fetchall()


def run_deliveries(conn: Conn, run: dict[str, Any]) -> list[dict[str, Any]]:
    """The deliveries of one demo run (its subscriptions x its events)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """SELECT id, subscription_id, event_type, status, attempts FROM relay.deliveries
               WHERE subscription_id = ANY(%s) AND outbox_id = ANY(%s) ORDER BY id""",
            (run["subscription_ids"], run["outbox_ids"]),
        )
        return cur.fetchall()


def attempt_codes(conn: Conn, delivery_id: int) -> list[int | None]:
    """Status codes of a delivery's attempts, in order."""
    rows = conn.execute(
        "SELECT status_code FROM relay.delivery_attempts WHERE delivery_id = %s ORDER BY attempt",
        (delivery_id,),
    ).fetchall()
    return [r[0] for r in rows]


def assert_run_complete(conn: Conn, run: dict[str, Any]) -> None:
    """All nine catalog types delivered, exactly one of them after a 503 and a retry."""
    rows = run_deliveries(conn, run)
    assert len(rows) == 9
    assert {r["event_type"] for r in rows} == CATALOG
    assert {r["status"] for r in rows} == {"delivered"}
    retried = [r for r in rows if r["attempts"] > 1]
    assert len(retried) == 1
    assert retried[0]["event_type"].startswith("order.")
    assert attempt_codes(conn, retried[0]["id"]) == [503, 204]
    assert run["ok"] is True


def test_demo_delivers_all_nine_with_one_retry(
    database_url: str, conn: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole flow in-process: exit 0, 9 deliveries, one retried, metrics and summary."""
    assert demo.main(demo_args(database_url)) == 0
    (run,) = runs(conn)
    assert_run_complete(conn, run)

    out = capsys.readouterr().out
    assert "metrics: http://127.0.0.1:" in out
    assert "signature ok" in out and "signature BAD" not in out
    assert "TEST.RESULTED" in out  # the event-name override reached the GET receiver
    assert '"customer":{"id":"cust-1042"}' in out  # the body map built a nested object
    assert 'relay_deliveries_total{event_type="order.created",outcome="delivered"} 1.0' in out
    assert 'relay_delivery_attempts_total{result="5xx"} 1.0' in out
    assert "throughput: 9 deliveries in" in out
    assert "relay stopped cleanly" in out
    # the orders subscription is ordered: the retried order.created is applied first
    assert (
        "ordered subscription: /orders applied ORDER.CREATED, ORDER.DISPATCHED, "
        "ORDER.OUT_FOR_DELIVERY, ORDER.RECEIVED: in the order they happened" in out
    ), out
    assert "OUT OF ORDER" not in out
    ordered = conn.execute("SELECT ordered FROM relay.subscriptions ORDER BY id").fetchall()
    assert ordered == [(True,), (False,)]

    # Both subscriptions were created through relay.admin and left disabled afterwards.
    subs = conn.execute(
        "SELECT method, events, backoff_ms, enabled, secret IS NOT NULL FROM relay.subscriptions"
        " ORDER BY id"
    ).fetchall()
    assert subs == [
        ("POST", ["order.*"], 1000, False, True),
        ("GET", ["test.*"], 5000, False, False),
    ]
    # The app's own rows were written in the same transactions as the events.
    assert conn.execute("SELECT status FROM relay_demo.demo_orders").fetchall() == [("received",)]


def test_demo_runs_again_on_the_same_database(
    database_url: str, conn: Conn, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second run removes the first run's subscriptions and counts only its own deliveries."""
    assert demo.main(demo_args(database_url)) == 0
    assert demo.main(demo_args(database_url)) == 0
    first, second = runs(conn)
    assert_run_complete(conn, first)
    assert_run_complete(conn, second)
    removed = conn.execute(
        "SELECT count(*) FROM relay.subscriptions WHERE id = ANY(%s) AND removed_at IS NOT NULL",
        (first["subscription_ids"],),
    ).fetchone()
    assert removed == (2,)
    assert "removed 2 subscription(s) left by an earlier demo run" in capsys.readouterr().out


def test_demo_fails_clearly_when_deliveries_do_not_finish(
    database_url: str,
    conn: Conn,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retry that cannot happen within --timeout: exit 1, a clear message, relay stopped."""
    monkeypatch.setattr(demo, "BACKOFF_MS", 60_000)
    assert demo.main(demo_args(database_url, "--timeout", "0.5")) == 1
    err = capsys.readouterr().err
    # the orders subscription is ordered: the order's three later events wait for the first
    assert "only 5 of 9 deliveries were delivered within 0.5 s" in err
    (run,) = runs(conn)
    assert run["ok"] is None
    pending = [r for r in run_deliveries(conn, run) if r["status"] != "delivered"]
    assert sorted((r["status"], r["attempts"]) for r in pending) == [
        ("pending", 0),
        ("pending", 0),
        ("pending", 0),
        ("pending", 1),
    ]


def test_demo_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad option values exit 2 before touching any database."""
    assert demo.main(["--metrics-addr", "bogus"]) == 2
    assert "metrics_addr" in capsys.readouterr().err
    assert demo.main(["--timeout", "0"]) == 2
    assert demo.main(["--no-such-flag"]) == 2
    assert demo.main(["--help"]) == 0


def test_python_m_relay_demo_subprocess(database_url: str, conn: Conn) -> None:
    """``python -m relay demo --database-url URL`` end to end in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "demo", *demo_args(database_url)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 9 delivered (1 after a retry)" in proc.stdout
    assert "throughput: 9 deliveries in" in proc.stdout
    (run,) = runs(conn)
    assert_run_complete(conn, run)
