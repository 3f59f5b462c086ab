"""`relay run` and RELAY_ENCRYPTION_KEY at start: a warning without a key; a clear refusal
(exit 2) when stored credentials are encrypted and the key cannot decrypt them, or the key
is malformed."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest

from relay import admin, crypto
from tests.acceptance.conftest import wait_for

pytestmark = pytest.mark.acceptance

Conn = psycopg.Connection[Any]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _log_lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _ready(text: str) -> bool:
    return any(line.get("msg", "").endswith(" ready") for line in _log_lines(text))


def _encrypted_subscription(conn: Conn, monkeypatch: pytest.MonkeyPatch, key: str) -> int:
    monkeypatch.setenv("RELAY_ENCRYPTION_KEY", key)
    result = admin.add_subscription(
        conn,
        admin.SubscriptionChanges(
            url="https://example.com/hook", headers={"Authorization": "Bearer t"}, secret=SECRET
        ),
    )
    monkeypatch.delenv("RELAY_ENCRYPTION_KEY")
    return result.id


def test_run_without_a_key_warns_at_start_and_runs(
    conn: Conn, database_url: str, relay_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RELAY_ENCRYPTION_KEY", raising=False)
    proc = relay_process(database_url)
    wait_for(lambda: _ready(proc.log()), 30, "relay ready")
    warnings = [
        line
        for line in _log_lines(proc.log())
        if line.get("level") == "warning" and "RELAY_ENCRYPTION_KEY is not set" in line["msg"]
    ]
    assert len(warnings) == 1, proc.log()
    assert proc.proc.poll() is None


@pytest.mark.parametrize("given", ["missing", "wrong"])
def test_run_refuses_to_start_when_it_cannot_decrypt_stored_credentials(
    conn: Conn,
    database_url: str,
    relay_process: Any,
    monkeypatch: pytest.MonkeyPatch,
    given: str,
) -> None:
    key = crypto.generate_key()
    sub_id = _encrypted_subscription(conn, monkeypatch, key)
    settings = {} if given == "missing" else {"encryption_key": crypto.generate_key()}
    proc = relay_process(database_url, **settings)
    assert proc.wait(30) == 2
    log = proc.log()
    assert f"the credentials of 1 subscription(s) ({sub_id})" in log
    assert "RELAY_ENCRYPTION_KEY" in log
    assert key not in log and SECRET not in log


def test_run_starts_with_the_right_key_among_several(
    conn: Conn, database_url: str, relay_process: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = crypto.generate_key()
    _encrypted_subscription(conn, monkeypatch, old)
    proc = relay_process(database_url, encryption_key=f"{crypto.generate_key()},{old}")
    wait_for(lambda: _ready(proc.log()), 30, "relay ready")
    assert "RELAY_ENCRYPTION_KEY is not set" not in proc.log()
    assert proc.proc.poll() is None


def test_run_with_a_malformed_key_exits_2(database_url: str, relay_process: Any) -> None:
    proc = relay_process(database_url, encryption_key="nope")
    assert proc.wait(30) == 2
    assert "RELAY_ENCRYPTION_KEY: key 1 of 1 is not a Fernet key" in proc.log()
