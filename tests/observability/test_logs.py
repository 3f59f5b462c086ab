"""Logs of a real ``relay run``: JSON lines, one per delivery outcome, never a secret; the
level is honoured and SIGHUP toggles debug."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from tests.observability.conftest import RelayProc, wait_for
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription, emit

Conn = psycopg.Connection[Any]

BEARER = "hush-123"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
DB_PASSWORD = "hunter2-in-the-url"
OUTCOME_MSGS = {"delivered", "retry scheduled", "dead"}
# DESIGN.md's list, plus what docs/operating.md ("Logs") promises on every outcome line.
FIELDS = (
    "delivery_id",
    "subscription_id",
    "event_type",
    "attempt",
    "status",
    "duration_ms",
    "outcome",
    "error",
    "retry_in_s",
)


def _final(conn: Conn) -> bool:
    return not conn.execute("SELECT 1 FROM relay.deliveries WHERE status = 'pending'").fetchone()


def test_json_lines_one_per_outcome_and_no_secrets(
    conn: Conn, database_url: str, obs_relay: Callable[..., RelayProc], tmp_path: Path
) -> None:
    """RELAY_LOG_FORMAT=json (at debug level, the chattiest): every line is a JSON object;
    each attempt outcome is one line carrying delivery_id, subscription_id, event_type,
    attempt, status and duration_ms, matching the attempt log in the database; neither the
    subscription's Authorization header value, its whsec_ signing secret nor the database
    password appears."""
    with start_receiver_process(tmp_path, fail_every=3) as rx:
        sub = add_subscription(
            conn,
            rx.url,
            headers={"Authorization": f"Bearer {BEARER}"},
            secret=SECRET,
            max_retries=1,
            backoff_ms=10,
        )
        for n in range(5):
            emit(conn, "order.created", {"n": n})
        # A password in the database URL (ignored by the test server's trust auth).
        relay = obs_relay(f"{database_url} password={DB_PASSWORD}", log_level="debug")
        relay.wait_ready()
        wait_for(
            lambda: (
                conn.execute("SELECT count(*) FROM relay.deliveries").fetchone() == (5,)
                and _final(conn)
            ),
            30,
            "every delivery final",
        )
        attempts = conn.execute(
            "SELECT delivery_id, attempt, status_code FROM relay.delivery_attempts"
        ).fetchall()

        def outcome_lines() -> list[dict[str, Any]]:
            lines = [r for r in relay.log_records() if r.get("msg") in OUTCOME_MSGS]
            return lines if len(lines) >= len(attempts) else []

        lines = wait_for(outcome_lines, 15, "one log line per attempt")
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        records = relay.log_records()  # every line, including shutdown, must be JSON
        text = relay.log()

    assert len(lines) == len(attempts), (lines, attempts)
    for line in lines:
        for field in FIELDS:
            assert field in line, (field, line)
        for base in ("ts", "level", "logger", "msg"):
            assert base in line, (base, line)
        assert line["subscription_id"] == sub
        assert line["event_type"] == "order.created"
        assert line["outcome"] == ("retry" if line["msg"] == "retry scheduled" else line["msg"])
        assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    logged = sorted((r["delivery_id"], r["attempt"], r["status"]) for r in lines)
    assert logged == sorted(tuple(a) for a in attempts)
    assert {r["msg"] for r in lines} >= {"delivered", "retry scheduled"}, "scenario check"
    assert len(records) > len(lines)

    assert BEARER not in text, "the Authorization header value leaked into the logs"
    assert DB_PASSWORD not in text, "the database password leaked into the logs"
    assert SECRET not in text and SECRET.removeprefix("whsec_") not in text, "signing secret leaked"
    for record in records:
        assert BEARER not in json.dumps(record)


def test_log_level_and_sighup_toggle(
    conn: Conn, database_url: str, obs_relay: Callable[..., RelayProc], tmp_path: Path
) -> None:
    """RELAY_LOG_LEVEL=warning hides the per-delivery info lines; SIGHUP switches to debug
    (announced by a warning "log level now debug"), after which deliveries are logged; a
    second SIGHUP goes back to warning."""
    with start_receiver_process(tmp_path) as rx:
        add_subscription(conn, rx.url)
        relay = obs_relay(database_url, log_level="warning")
        relay.wait_ready()  # signal handlers are installed by now
        emit(conn, "order.created", {"n": 1})
        rx.wait_for(1, timeout=30)
        wait_for(lambda: _final(conn), 30, "the first delivery")
        assert not [r for r in relay.log_records() if r.get("msg") == "delivered"]
        assert all(r["level"] in ("warning", "error") for r in relay.log_records())

        relay.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any(
                r["level"] == "warning" and "log level now debug" in r["msg"]
                for r in relay.log_records()
            ),
            15,
            "the 'log level now debug' warning",
        )
        emit(conn, "order.created", {"n": 2})
        rx.wait_for(2, timeout=30)
        wait_for(
            lambda: [r for r in relay.log_records() if r.get("msg") == "delivered"],
            15,
            "a 'delivered' line once debug is on",
        )

        relay.proc.send_signal(signal.SIGHUP)
        wait_for(
            lambda: any("log level now warning" in r["msg"] for r in relay.log_records()),
            15,
            "the 'log level now warning' line",
        )
        assert relay.running, "SIGHUP must not stop the relay"
        relay.proc.send_signal(signal.SIGTERM)
        assert relay.wait(30) == 0
