"""Retention: `relay prune` and relay.admin.retention against a real Postgres.

Finished history older than the cutoff goes (deliveries delivered/dead, their attempts, and
outbox rows dispatched with no delivery left); pending work never does.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from relay import admin
from relay.admin import retention
from relay.cli import main
from relay.errors import NotFound
from relay.sql import q
from tests.history import DAY, HOUR, delivery, event, ids, scalar, snapshot, subscription

Conn = psycopg.Connection[Any]


@dataclass
class History:
    gone_outbox: set[int]
    kept_outbox: set[int]
    gone_deliveries: set[int]
    kept_deliveries: set[int]


def build(conn: Conn) -> History:
    """Every case the rules distinguish, with a cutoff of one day."""
    a, b = subscription(conn), subscription(conn, "https://example.com/other")
    h = History(set(), set(), set(), set())
    # delivered two days ago, its event's only delivery: all of it goes
    e = event(conn, 3 * DAY)
    h.gone_outbox.add(e)
    h.gone_deliveries.add(delivery(conn, e, a, "delivered", 2 * DAY, attempts=2))
    # dead two days ago, but the same event has a pending delivery: the event stays
    e = event(conn, 3 * DAY)
    h.kept_outbox.add(e)
    h.gone_deliveries.add(delivery(conn, e, a, "dead", 2 * DAY, attempts=1))
    h.kept_deliveries.add(delivery(conn, e, b, "pending", attempts=4))
    # old event, delivery finished an hour ago (a late retry): both stay
    e = event(conn, 3 * DAY)
    h.kept_outbox.add(e)
    h.kept_deliveries.add(delivery(conn, e, a, "delivered", HOUR))
    # old, never dispatched: pending work
    h.kept_outbox.add(event(conn, 3 * DAY, dispatched=False))
    # old, dispatched, matched no subscription: goes
    h.gone_outbox.add(event(conn, 3 * DAY))
    # young, dispatched, no delivery: stays until it is old
    h.kept_outbox.add(event(conn, HOUR))
    # young and done
    e = event(conn, HOUR)
    h.kept_outbox.add(e)
    h.kept_deliveries.add(delivery(conn, e, a, "delivered", HOUR))
    return h


def check(conn: Conn, h: History) -> None:
    assert ids(conn, "outbox") == h.kept_outbox
    assert ids(conn, "deliveries") == h.kept_deliveries
    orphans = scalar(
        conn,
        "SELECT count(*) FROM relay.delivery_attempts a WHERE NOT EXISTS "
        "(SELECT 1 FROM relay.deliveries d WHERE d.id = a.delivery_id)",
    )
    assert orphans == 0
    # the pending delivery kept every attempt
    assert scalar(conn, "SELECT count(*) FROM relay.delivery_attempts") == 4 + 1 + 1


def test_prune_deletes_finished_history_and_never_pending_work(conn: Conn) -> None:
    h = build(conn)
    pruned = retention.prune(conn, 86400)
    assert pruned == {"deliveries": 2, "delivery_attempts": 3, "outbox": 2}
    check(conn, h)
    # nothing left to do: a second prune deletes nothing
    assert retention.prune(conn, 86400) == {"deliveries": 0, "delivery_attempts": 0, "outbox": 0}


@pytest.mark.parametrize("batch", [1, 2])
def test_prune_in_tiny_batches_gives_the_same_result(conn: Conn, batch: int) -> None:
    extra = subscription(conn, "https://example.com/third")
    more_outbox, more_deliveries = set(), set()
    # more finished history than a batch, for the batch loops (created first: the outbox walk
    # goes in id order, and stops at the first rows too young to prune)
    for _ in range(5):
        e = event(conn, 3 * DAY)
        more_outbox.add(e)
        more_deliveries.add(delivery(conn, e, extra, "delivered", 2 * DAY, attempts=0))
    h = build(conn)
    h.gone_outbox |= more_outbox
    h.gone_deliveries |= more_deliveries
    pruned = retention.prune(conn, 86400, batch=batch)
    assert pruned == {"deliveries": 7, "delivery_attempts": 3, "outbox": 7}
    check(conn, h)


def test_preview_counts_what_prune_deletes_and_changes_nothing(conn: Conn) -> None:
    build(conn)
    before = snapshot(conn)
    counts = retention.preview(conn, 86400)
    assert snapshot(conn) == before
    assert counts == retention.prune(conn, 86400)


def test_pruned_delivery_is_not_found(conn: Conn) -> None:
    h = build(conn)
    gone = min(h.gone_deliveries)
    admin.get_delivery(conn, gone)
    retention.prune(conn, 86400)
    with pytest.raises(NotFound, match=f"delivery {gone} not found"):
        admin.get_delivery(conn, gone)


# --- prune racing a replay -----------------------------------------------------------------


def test_replay_that_locks_first_wins(conn: Conn, database_url: str) -> None:
    """A replay holding its row lock (between its check and its write): prune skips the row;
    the replay commits; the delivery is pending again and later prunes leave it alone."""
    sub = subscription(conn)
    dead = delivery(conn, event(conn, 3 * DAY), sub, "dead", 2 * DAY)
    with psycopg.connect(database_url) as replayer:  # one open transaction
        replayer.execute(q("admin_delivery_owners"), {"ids": [dead], "tenant": None})  # FOR UPDATE
        assert retention.prune(conn, 86400)["deliveries"] == 0
        replayer.execute(q("admin_replay_ids"), {"ids": [dead]})
        replayer.commit()
    assert scalar(conn, "SELECT status FROM relay.deliveries WHERE id = %s", (dead,)) == "pending"
    assert retention.prune(conn, 86400)["deliveries"] == 0
    assert dead in ids(conn, "deliveries")


def test_replay_after_a_prune_locked_the_row_fails_cleanly(conn: Conn, database_url: str) -> None:
    """A prune batch holding the row: the replay waits for it, then reports it not found."""
    sub = subscription(conn)
    dead = delivery(conn, event(conn, 3 * DAY), sub, "dead", 2 * DAY)
    outcome: list[BaseException | int] = []

    def replay() -> None:
        with psycopg.connect(database_url, autocommit=True) as c:
            try:
                outcome.append(admin.replay(c, [dead]))
            except BaseException as exc:
                outcome.append(exc)

    with psycopg.connect(database_url) as pruner:  # the batch, not yet committed
        row = pruner.execute(q("prune_deliveries"), {"older_than": 86400.0, "limit": 10})
        assert row.fetchone() == (True, 1, 1)
        t = threading.Thread(target=replay)
        t.start()
        t.join(0.5)
        assert t.is_alive(), "the replay waits for the prune's row lock"
        pruner.commit()
    t.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], NotFound), outcome
    assert dead not in ids(conn, "deliveries")


def test_replay_dead_racing_prune_keeps_every_replayed_row(conn: Conn, database_url: str) -> None:
    """`replay --dead` while a prune batch holds some rows: each dead delivery ends either
    pending (replayed) or pruned, never half of each."""
    sub = subscription(conn)
    dead = [delivery(conn, event(conn, 3 * DAY), sub, "dead", 2 * DAY) for _ in range(6)]
    with psycopg.connect(database_url) as pruner:
        pruner.execute(q("prune_deliveries"), {"older_than": 86400.0, "limit": 3}).fetchone()
        done: list[int] = []
        t = threading.Thread(
            target=lambda: done.append(
                admin.replay_dead(psycopg.connect(database_url, autocommit=True))
            )
        )
        t.start()
        t.join(0.5)
        pruner.commit()
    t.join(10)
    kept = ids(conn, "deliveries")
    assert done == [3] and len(kept) == 3 and kept < set(dead)
    statuses = {r[0] for r in conn.execute("SELECT status FROM relay.deliveries")}
    assert statuses == {"pending"}


# --- the CLI -------------------------------------------------------------------------------


def cli(url: str, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["prune", *argv, "--database-url", url])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prune_json_and_text(
    conn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    h = build(conn)
    code, out, _ = cli(database_url, capsys, "--older-than", "1d", "--dry-run", "--json")
    assert code == 0
    assert json.loads(out) == {
        "older_than": "1d",
        "dry_run": True,
        "deliveries": 2,
        "delivery_attempts": 3,
        "outbox": 2,
    }
    assert ids(conn, "deliveries") == h.kept_deliveries | h.gone_deliveries
    code, out, _ = cli(database_url, capsys, "--older-than", "24h")
    assert code == 0
    assert out.splitlines()[0] == "pruned history older than 24h:"
    assert "deliveries" in out and " 2" in out
    check(conn, h)


def test_cli_prune_defaults_to_the_retention_setting(
    conn: Conn,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h = build(conn)
    monkeypatch.delenv("RELAY_RETENTION", raising=False)
    code, out, _ = cli(database_url, capsys, "--json")
    assert code == 0 and json.loads(out)["older_than"] == "30d"
    assert json.loads(out)["deliveries"] == 0  # nothing is 30 days old
    monkeypatch.setenv("RELAY_RETENTION", "36h")
    code, out, _ = cli(database_url, capsys, "--json")
    assert code == 0 and json.loads(out)["deliveries"] == 2
    check(conn, h)


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--older-than", "5x"], None, "older_than: must be a duration"),
        (["--older-than=-1d"], None, "older_than: must be a duration"),
        (["--older-than", "0s"], None, "older_than: must be between"),
        (["--older-than", ""], None, "older_than: must be a duration"),
        ([], "off", "older_than: RELAY_RETENTION is off"),
        ([], "soon", "RELAY_RETENTION (retention): must be a duration"),
    ],
)
def test_cli_prune_bad_input_exits_2_and_deletes_nothing(
    conn: Conn,
    database_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: str | None,
    message: str,
) -> None:
    build(conn)
    if env is None:
        monkeypatch.delenv("RELAY_RETENTION", raising=False)
    else:
        monkeypatch.setenv("RELAY_RETENTION", env)
    before = snapshot(conn)
    code, out, err = cli(database_url, capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("relay: error: ") and message in err, err
    assert snapshot(conn) == before


def test_cli_delivery_show_of_a_pruned_id_is_not_found(
    conn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    h = build(conn)
    gone = min(h.gone_deliveries)
    assert cli(database_url, capsys, "--older-than", "1d")[0] == 0
    capsys.readouterr()
    code = main(["delivery", "show", str(gone), "--database-url", database_url])
    err = capsys.readouterr().err
    assert code == 1 and f"delivery {gone} not found" in err
