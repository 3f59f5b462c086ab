"""The `relay` CLI end to end against a real Postgres: in-process via main(argv), and a few
real subprocesses to prove the console entry point works."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from relay.cli import main

Conn = psycopg.Connection[Any]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Relay:
    """Runs `relay ...` in-process against the test database."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self.capsys = capsys

    def __call__(self, *argv: str, expect: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        code = main([*argv, "--database-url", self.url])
        out, err = self.capsys.readouterr()
        assert code == expect, f"exit {code}, stdout={out!r}, stderr={err!r}"
        return out, err

    def json(self, *argv: str) -> Any:
        out, _ = self(*argv, "--json")
        return json.loads(out)


@pytest.fixture
def relay(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Relay:
    monkeypatch.delenv("RELAY_DATABASE_URL", raising=False)
    return Relay(database_url, capsys)


def scalar(conn: Conn, sql: str, params: tuple[Any, ...] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0]


def snapshot(conn: Conn) -> list[Any]:
    """Everything a refused command must leave untouched."""
    return [
        # (delivery_attempts: keyed by its first two columns)
        conn.execute(f"SELECT * FROM relay.{t} ORDER BY 1, 2").fetchall()
        for t in ("subscriptions", "deliveries", "outbox", "event_types", "delivery_attempts")
    ]


def make_delivery(conn: Conn, sub_id: int, status: str, attempts: int = 0) -> int:
    outbox_id = scalar(conn, "SELECT relay.emit('order.created', '{}')")
    delivery_id = scalar(
        conn,
        "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type, status, attempts,"
        " failures, dead_at, delivered_at) VALUES (%s, %s, 'order.created', %s, %s, %s,"
        " CASE WHEN %s = 'dead' THEN now() END, CASE WHEN %s = 'delivered' THEN now() END)"
        " RETURNING id",
        (outbox_id, sub_id, status, attempts, attempts, status, status),
    )
    for n in range(1, attempts + 1):
        conn.execute(
            "INSERT INTO relay.delivery_attempts (delivery_id, attempt, relay_id, started_at,"
            " duration_ms, status_code, response_body) VALUES (%s, %s, 'r', now(), 3, 503, 'no')",
            (delivery_id, n),
        )
    return int(delivery_id)


def test_migrate(empty_database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate", "--database-url", empty_database_url]) == 0
    assert "applied migrations: 0001" in capsys.readouterr().out
    assert main(["migrate", "--database-url", empty_database_url]) == 0
    assert "up to date" in capsys.readouterr().out


def test_missing_schema_is_a_runtime_error(
    empty_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["subscription", "list", "--database-url", empty_database_url]) == 1
    assert "relay migrate" in capsys.readouterr().err


def test_add_prints_id_alone_and_masks_everywhere(relay: Relay, conn: Conn) -> None:
    out, err = relay(
        "subscription", "add", "https://bob:pa55word@example.com/hook",
        "--method", "get", "--header", "Authorization: Bearer t0psecret",
        "--header", "X-Team: ops", "--event", "order.*", "--event-name", "order.created=OC",
        "--body-map", '{"type": "$.eventType"}', "--secret", SECRET, "--tenant", "acme",
        "--max-retries", "2", "--backoff-ms", "100", "--timeout-ms", "3000",
    )  # fmt: skip
    assert re.fullmatch(r"\d+\n", out) and err == ""
    sub_id = int(out)
    stored = conn.execute(
        "SELECT method, headers, events, secret, tenant_id, max_retries FROM relay.subscriptions"
        " WHERE id = %s",
        (sub_id,),
    ).fetchone()
    assert stored == (
        "GET", {"Authorization": "Bearer t0psecret", "X-Team": "ops"}, ["order.*"], SECRET,
        "acme", 2,
    )  # fmt: skip

    outputs = [
        relay("subscription", "list")[0],
        relay("subscription", "list", "--json")[0],
        relay("subscription", "show", str(sub_id))[0],
        relay("subscription", "show", str(sub_id), "--json")[0],
    ]
    for text in outputs:
        assert "t0psecret" not in text and SECRET not in text and "pa55word" not in text
        assert "whsec_****" in text
    listed = relay.json("subscription", "list")
    assert listed[0]["id"] == sub_id
    assert listed[0]["headers"] == {"Authorization": "***", "X-Team": "***"}
    assert listed[0]["secret"] == "whsec_****"
    assert listed[0]["url"] == "https://bob:***@example.com/hook"
    shown = relay.json("subscription", "show", str(sub_id))
    assert shown["event_names"] == {"order.created": "OC"} and shown["tenant_id"] == "acme"


def test_generated_secret_goes_to_stderr_once(relay: Relay, conn: Conn) -> None:
    out, err = relay("subscription", "add", "http://x.io", "--secret", "generate")
    secret = re.search(r"whsec_\S+", err)
    assert secret is not None and "whsec_" not in out
    stored = scalar(conn, "SELECT secret FROM relay.subscriptions WHERE id = %s", (int(out),))
    assert stored == secret.group(0)
    assert secret.group(0) not in relay("subscription", "show", out.strip(), "--json")[0]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["add", "ftp://x.io"], "url"),
        (["add", "http://x .io"], "url"),
        (["add", "http://x.io", "--method", "PATCH"], "method"),
        (["add", "http://x.io", "--header", "X-A: a\r\nX-B: b"], "header"),
        (["add", "http://x.io", "--header", "webhook-id: x"], "header"),
        (["add", "http://x.io", "--header", "X-Good: 1", "--header", "Bad Name: 2"], "header"),
        (["add", "http://x.io", "--event", "order.nope"], "event"),
        (["add", "http://x.io", "--event", "billing.*"], "event"),
        (["add", "http://x.io", "--event-name", "order.nope=X"], "event_name"),
        (["add", "http://x.io", "--body-map", "[]"], "body_map"),
        (["add", "http://x.io", "--body-map", '{"a": "$..["}'], "body_map"),
        (["add", "http://x.io", "--secret", "whsec_nope"], "secret"),
        (["add", "http://x.io", "--tenant", ""], "tenant"),
        (["add", "http://x.io", "--max-retries", "-1"], "max_retries"),
        (["add", "http://x.io", "--backoff-ms", "x"], "backoff_ms"),
        (["add", "http://x.io", "--timeout-ms", "0"], "timeout_ms"),
        (["update", "1", "--url", "mailto:a@b"], "url"),
        (["update", "1", "--method", "GET", "--event", "nope.*"], "event"),
        (["update", "1", "--clear-secret", "--secret", SECRET], "secret"),
        (["update", "1", "--clear-header", "X-Missing"], "header"),
        (["update", "1"], "options"),
    ],
)
def test_validation_errors_name_the_field_and_change_nothing(
    relay: Relay, conn: Conn, args: list[str], field: str
) -> None:
    relay("subscription", "add", "http://existing.io", "--header", "X-A: 1")
    before = snapshot(conn)
    _, err = relay("subscription", *args, expect=2)
    assert err.startswith(f"relay: error: {field}: "), err
    assert snapshot(conn) == before


def test_update_enable_disable_remove(relay: Relay, conn: Conn) -> None:
    sub_id = relay("subscription", "add", "http://x.io", "--header", "X-A: 1")[0].strip()
    out, _ = relay(
        "subscription", "update", sub_id, "--header", "X-B: 2", "--clear-header", "X-A",
        "--event", "test.*", "--secret", SECRET,
    )  # fmt: skip
    assert "headers" in out and "events" in out
    shown = relay.json("subscription", "show", sub_id)
    assert shown["headers"] == {"X-B": "***"} and shown["events"] == ["test.*"]
    relay("subscription", "update", sub_id, "--clear-secret", "--clear-events")
    shown = relay.json("subscription", "show", sub_id)
    assert shown["secret"] is None and shown["events"] == []

    relay("subscription", "disable", sub_id)
    assert relay.json("subscription", "show", sub_id)["enabled"] is False
    relay("subscription", "enable", sub_id)
    assert relay.json("subscription", "show", sub_id)["enabled"] is True

    pending = make_delivery(conn, int(sub_id), "pending")
    out, _ = relay("subscription", "remove", sub_id)
    assert "1 pending" in out
    assert relay.json("subscription", "list") == []
    everything = relay.json("subscription", "list", "--all")
    assert [s["id"] for s in everything] == [int(sub_id)]
    assert everything[0]["removed_at"] is not None
    assert relay.json("delivery", "show", str(pending))["last_error"] == "subscription removed"
    _, err = relay("subscription", "remove", sub_id, expect=1)
    assert "removed" in err


def test_not_found_exits_1(relay: Relay, conn: Conn) -> None:
    before = snapshot(conn)
    for args in (
        ["subscription", "show", "999"],
        ["subscription", "update", "999", "--method", "GET"],
        ["subscription", "disable", "999"],
        ["subscription", "remove", "999"],
        ["delivery", "show", "999"],
        ["replay", "999", "998"],
    ):
        _, err = relay(*args, expect=1)
        assert err.startswith("relay: error: ") and "999" in err
    assert snapshot(conn) == before


def test_delivery_list_show_and_replay(relay: Relay, conn: Conn) -> None:
    sub_id = int(relay("subscription", "add", "http://x.io")[0])
    dead = make_delivery(conn, sub_id, "dead", attempts=4)
    delivered = make_delivery(conn, sub_id, "delivered", attempts=1)
    rows = relay.json("delivery", "list")
    assert [r["id"] for r in rows] == [delivered, dead]
    for row in rows:
        assert {"id", "status", "subscription_id", "event_type", "attempts"} <= set(row)
    assert [r["id"] for r in relay.json("delivery", "list", "--status", "dead")] == [dead]
    assert len(relay.json("delivery", "list", "--limit", "1")) == 1
    assert relay.json("delivery", "list", "--subscription", "12345") == []
    assert relay.json("delivery", "list", "--event-type", "test.processed") == []
    assert "STATUS" in relay("delivery", "list")[0]

    shown = relay.json("delivery", "show", str(dead))
    assert [a["attempt"] for a in shown["attempt_history"]] == [1, 2, 3, 4]
    assert shown["attempt_history"][0]["status_code"] == 503
    text, _ = relay("delivery", "show", str(dead))
    assert "attempts:" in text and "503" in text

    out, _ = relay("replay", str(dead), str(delivered))
    assert out == "replayed 2 deliveries\n"
    after = relay.json("delivery", "show", str(dead))
    assert after["status"] == "pending" and after["failures"] == 0 and after["attempts"] == 4
    assert len(after["attempt_history"]) == 4

    conn.execute("UPDATE relay.deliveries SET status = 'dead', dead_at = now() - interval '3h'")
    assert relay("replay", "--dead", "--since", "1h")[0] == "replayed 0 deliveries\n"
    assert relay("replay", "--dead", "--subscription", str(sub_id), "--since", "1d")[0] == (
        "replayed 2 deliveries\n"
    )
    _, err = relay("replay", "--dead", "--since", "soon", expect=2)
    assert err.startswith("relay: error: since: ")


def test_emit(relay: Relay, conn: Conn) -> None:
    out, _ = relay("emit", "order.created", '{"orderId": 5}', "--aggregate-id", "o-5",
                   "--tenant", "acme", "--version", "v2")  # fmt: skip
    row = conn.execute(
        "SELECT event_type, payload, aggregate_id, tenant_id, version FROM relay.outbox"
        " WHERE id = %s",
        (int(out),),
    ).fetchone()
    assert row == ("order.created", {"orderId": 5}, "o-5", "acme", "v2")
    before = snapshot(conn)
    for args, needle in (
        (["order.created", "[1]"], "payload"),
        (["order.created", "{oops"], "payload"),
        (["order.nope", "{}"], "unknown event type"),
    ):
        _, err = relay("emit", *args, expect=2)
        assert needle in err
    assert snapshot(conn) == before


def test_status(relay: Relay, conn: Conn) -> None:
    sub_id = int(relay("subscription", "add", "http://x.io")[0])
    make_delivery(conn, sub_id, "dead")
    info = relay.json("status")
    assert info["outbox_backlog"] == 1 and info["deliveries_dead"] == 1
    assert info["relays"] == []
    assert "outbox backlog" in relay("status")[0]


def test_event_types(relay: Relay, conn: Conn) -> None:
    names = [r["id"] for r in relay.json("event-type", "list")]
    assert "order.created" in names
    assert relay("event-type", "add", "shop.item_added", "--object", "Shop")[0] == (
        "shop.item_added\n"
    )
    assert "shop.item_added" in relay("event-type", "list")[0]
    before = snapshot(conn)
    for name in ("Shop.Bad", "nodot", "shop.item_added"):
        _, err = relay("event-type", "add", name, expect=2)
        assert err.startswith("relay: error: name: ")
    assert snapshot(conn) == before


def test_unreachable_database_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "--database-url", "postgresql://nobody:pw@127.0.0.1:1/none"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("relay: error: cannot connect") and ":pw@" not in err


def test_database_url_from_environment(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RELAY_DATABASE_URL", database_url)
    assert main(["subscription", "add", "http://env.io"]) == 0
    assert capsys.readouterr().out.strip().isdigit()


# Real subprocesses ------------------------------------------------------------------------------


def run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *argv],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def test_python_dash_m_relay(database_url: str) -> None:
    added = run("subscription", "add", "http://sub.io", "--database-url", database_url)
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip().isdigit()
    listed = run("subscription", "list", "--json", "--database-url", database_url)
    assert json.loads(listed.stdout)[0]["id"] == int(added.stdout)
    bad = run("subscription", "add", "http://x.io", "--method", "PUT", "--database-url",
              database_url)  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.startswith("relay: error: method: ")


def test_console_script(database_url: str) -> None:
    script = shutil.which("relay", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("relay console script not installed in this environment")
    done = subprocess.run(
        [script, "status", "--json", "--database-url", database_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["outbox_backlog"] == 0


@pytest.mark.slow
def test_embedded_postgres_when_nothing_configured(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "RELAY_DATABASE_URL"}
    env["RELAY_STATE_DIR"] = str(tmp_path / "state")
    pgdata = tmp_path / "state" / "pgdata"
    try:
        added = run("subscription", "add", "http://embedded.io", env=env)
        assert f"using embedded Postgres at {pgdata}" in added.stderr
        assert added.returncode == 0, added.stderr
        listed = run("subscription", "list", "--json", env=env)  # reuses the running server
        assert listed.returncode == 0, listed.stderr
        assert [s["url"] for s in json.loads(listed.stdout)] == ["http://embedded.io"]
    finally:
        pidfile = pgdata / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 15)  # the server the test started: stop it (smart shutdown)
