"""Credentials at rest: with RELAY_ENCRYPTION_KEY, signing secrets and header values are never
in plain text in any table, deliveries still arrive signed with their headers, keys rotate,
plain rows get encrypted; without a key everything works as before, and relay says so."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from typing import Any

import psycopg
import pytest
from psycopg import sql
from standardwebhooks import Webhook

from relay import admin, crypto
from relay.cli import main as cli_main
from tests.receiver import Receiver
from tests.relayctx import attempts, deliveries, emit, running_relay, wait_until

Conn = psycopg.Connection[Any]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NEW_SECRET = "whsec_c2VjcmV0LXR3by1mb3ItdGhlLXJvdGF0aW9uLXRlc3Q="
TOKEN = "Bearer tok-7f3a9c1e"
API_KEY = "k-91b2c3d4e5"
ENV = "RELAY_ENCRYPTION_KEY"


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _needles(*secrets: str) -> list[str]:
    """Every credential, and the base64 part of each secret (what an HMAC key really is)."""
    out = [TOKEN, API_KEY]
    for secret in secrets:
        out += [secret, secret.removeprefix("whsec_")]
    return out


def _plaintext_in_tables(conn: Conn, needles: list[str]) -> list[str]:
    """``schema.table.column`` of every text-like column of every user table that contains a
    needle (all schemas, not only relay's: nothing may copy a credential anywhere)."""
    found: list[str] = []
    columns = conn.execute(
        """
        SELECT c.table_schema, c.table_name, c.column_name
        FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_schema, table_name)
        WHERE t.table_type = 'BASE TABLE'
          AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
          AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb',
                              'ARRAY', 'USER-DEFINED', 'bytea')
        """
    ).fetchall()
    assert columns, "no columns scanned"
    for schema, table, column in columns:
        query = sql.SQL("SELECT {c}::text FROM {t} WHERE {c} IS NOT NULL").format(
            c=sql.Identifier(column), t=sql.Identifier(schema, table)
        )
        for (value,) in conn.execute(query):
            for needle in needles:
                if needle in value:
                    found.append(f"{schema}.{table}.{column}")
    return found


def _plaintext_in_dump(database_url: str, needles: list[str]) -> list[str]:
    """The needles found in a ``pg_dump`` of the whole database (data and definitions)."""
    pg_dump = shutil.which("pg_dump")
    assert pg_dump is not None, "pg_dump is needed (postgresql-client)"
    dump = subprocess.run(
        [pg_dump, "--no-owner", database_url], capture_output=True, text=True, check=True
    ).stdout
    assert "relay.subscriptions" in dump or "subscriptions" in dump
    return [n for n in needles if n in dump]


def _raw(conn: Conn, sub_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT headers, secret, previous_secret FROM relay.subscriptions WHERE id = %s",
            (sub_id,),
        )
        row = cur.fetchone()
    assert row is not None
    return row


def _ring(*keys: str) -> crypto.Keyring:
    ring = crypto.parse_keys(",".join(keys))
    assert ring is not None
    return ring


def _add(database_url: str, url: str, *extra: str) -> int:
    code, out, err = _cli(
        "subscription",
        "add",
        url,
        "--database-url",
        database_url,
        "--header",
        f"Authorization: {TOKEN}",
        "--header",
        f"X-Api-Key: {API_KEY}",
        *extra,
    )
    assert code == 0, err
    return int(out.strip())


def test_with_a_key_no_secret_or_header_value_is_in_any_table(
    conn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secrets (given, generated, and the previous one kept for a rotation overlap) and header
    values, written through the CLI, appear nowhere in the database in plain text: not in any
    text/json column of any table, not in a pg_dump. Listings stay masked."""
    monkeypatch.setenv(ENV, crypto.generate_key())
    first = _add(database_url, "https://example.com/a", "--secret", SECRET)
    code, _, err = _cli(
        "subscription", "update", str(first), "--database-url", database_url,
        "--secret", NEW_SECRET, "--header", "X-Extra: extra-cred-55",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = _cli(
        "subscription", "add", "https://example.com/b", "--database-url", database_url,
        "--secret", "generate", "--header", f"Authorization: {TOKEN}",
    )  # fmt: skip
    assert code == 0, err
    generated = err.split("store it now): ", 1)[1].strip()
    assert generated.startswith("whsec_")
    needles = [*_needles(SECRET, NEW_SECRET, generated), "extra-cred-55"]

    raw = _raw(conn, first)
    assert raw["previous_secret"] is not None  # the rotation overlap kept the old secret...
    for value in [raw["secret"], raw["previous_secret"], *raw["headers"].values()]:
        assert crypto.is_sealed(value)  # ...encrypted, like everything else
    assert set(raw["headers"]) == {"Authorization", "X-Api-Key", "X-Extra"}  # names readable
    assert _plaintext_in_tables(conn, needles) == []
    assert _plaintext_in_dump(database_url, needles) == []

    for argv in (
        ("subscription", "list", "--json"),
        ("subscription", "list"),
        ("subscription", "show", str(first), "--json"),
        ("subscription", "show", str(first)),
        ("status", "--json"),
    ):
        code, out, err = _cli(*argv, "--database-url", database_url)
        assert code == 0, err
        assert [n for n in needles if n in out + err] == []
        assert crypto.PREFIX not in out  # ciphertext is not shown either
    show = ("subscription", "show", str(first), "--json", "--database-url", database_url)
    code, out, _ = _cli(*show)
    shown = json.loads(out)
    assert shown["headers"] == {"Authorization": "***", "X-Api-Key": "***", "X-Extra": "***"}
    assert shown["secret"] == "whsec_****"


def test_the_scan_finds_plain_credentials_without_a_key(
    conn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same scans see the credentials when no key is set (so they can fail), and relay
    keeps storing plain text there, as before."""
    monkeypatch.delenv(ENV, raising=False)
    sub_id = _add(database_url, "https://example.com/a", "--secret", SECRET)
    needles = _needles(SECRET)
    assert "relay.subscriptions.headers" in _plaintext_in_tables(conn, needles)
    assert "relay.subscriptions.secret" in _plaintext_in_tables(conn, needles)
    assert TOKEN in _plaintext_in_dump(database_url, needles)
    assert _raw(conn, sub_id)["secret"] == SECRET


async def test_delivery_with_encrypted_credentials_is_signed_and_carries_the_header(
    conn: Conn, database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon decrypts after loading the job: the receiver gets the plain header and a
    signature that verifies with the secret, and during a rotation overlap with both the new
    and the previous secret (both stored encrypted)."""
    monkeypatch.setenv(ENV, crypto.generate_key())
    result = admin.add_subscription(
        conn,
        admin.SubscriptionChanges(
            url=receiver.url(), headers={"Authorization": TOKEN}, secret=SECRET
        ),
    )
    admin.update_subscription(conn, result.id, admin.SubscriptionChanges(secret=NEW_SECRET))
    assert all(crypto.is_sealed(v) for v in _raw(conn, result.id).values() if isinstance(v, str))
    emit(conn, "order.created", {"userId": "u1"})
    async with running_relay(database_url) as relay:
        (req,) = await receiver.wait_for(1)
        assert relay.metrics.credentials_encrypted._value.get() == 1
    assert req.headers["authorization"] == TOKEN
    Webhook(NEW_SECRET).verify(req.body.decode(), req.headers)
    Webhook(SECRET).verify(req.body.decode(), req.headers)
    assert len(req.headers["webhook-signature"].split()) == 2
    assert crypto.PREFIX not in str(req.headers)


async def test_rotation_old_key_readable_with_new_old_then_rotate_key_then_new_alone(
    conn: Conn, database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = crypto.generate_key(), crypto.generate_key()
    monkeypatch.setenv(ENV, old)
    sub_id = _add(database_url, receiver.url(), "--secret", SECRET)
    before = _raw(conn, sub_id)

    # "new,old": the rows (still under the old key) are delivered with.
    monkeypatch.setenv(ENV, f"{new},{old}")
    emit(conn, "order.created", {"n": 1})
    async with running_relay(database_url):
        (req,) = await receiver.wait_for(1)
    assert req.headers["authorization"] == TOKEN and req.headers["x-api-key"] == API_KEY
    Webhook(SECRET).verify(req.body.decode(), req.headers)
    assert _raw(conn, sub_id) == before  # reading rewrites nothing

    code, out, err = _cli("rotate-key", "--database-url", database_url)
    assert code == 0, err
    assert "re-encrypted 1 subscription(s)" in out and "0 already current" in out
    after = _raw(conn, sub_id)
    for value in [after["secret"], *after["headers"].values()]:
        assert _ring(new).is_current(value)
        with pytest.raises(crypto.CredentialsError):
            crypto.open_value(value, _ring(old))
    code, out, _ = _cli("rotate-key", "--database-url", database_url)
    assert code == 0 and "re-encrypted 0" in out and "1 already current" in out
    assert _raw(conn, sub_id) == after  # current rows are left alone

    # "new" alone now works: delivery and an update.
    monkeypatch.setenv(ENV, new)
    code, _, err = _cli(
        "subscription", "update", str(sub_id), "--database-url", database_url,
        "--header", "X-More: m",
    )  # fmt: skip
    assert code == 0, err
    emit(conn, "order.created", {"n": 2})
    async with running_relay(database_url):
        reqs = await receiver.wait_for(2)
    assert reqs[1].headers["authorization"] == TOKEN and reqs[1].headers["x-more"] == "m"
    Webhook(SECRET).verify(reqs[1].body.decode(), reqs[1].headers)
    assert _plaintext_in_tables(conn, _needles(SECRET)) == []


def test_plain_rows_are_encrypted_when_a_key_is_configured_and_rotate_key_runs(
    conn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Existing installs: rows written without a key are plain; `relay status` says so, with
    the key set it says what is left, and `relay rotate-key` encrypts them (with an update
    in the overlap window: the previous secret too)."""
    monkeypatch.delenv(ENV, raising=False)
    first = _add(database_url, "https://example.com/a", "--secret", SECRET)
    code, _, err = _cli(
        "subscription", "update", str(first), "--database-url", database_url,
        "--secret", NEW_SECRET,
    )  # fmt: skip
    assert code == 0, err
    _add(database_url, "https://example.com/b")
    conn.execute("INSERT INTO relay.subscriptions (url) VALUES ('https://example.com/none')")
    code, out, _ = _cli("status", "--database-url", database_url)
    assert "NOT ENCRYPTED: RELAY_ENCRYPTION_KEY is not set (2 subscription(s)" in out
    code, out, _ = _cli("status", "--json", "--database-url", database_url)
    assert json.loads(out)["credentials"] == {
        "encryption_key": False,
        "keys": 0,
        "subscriptions_encrypted": 0,
        "subscriptions_plaintext": 2,
    }

    key = crypto.generate_key()
    monkeypatch.setenv(ENV, key)
    code, out, _ = _cli("status", "--database-url", database_url)
    assert "2 still in plain text: run `relay rotate-key`" in out
    code, out, err = _cli("rotate-key", "--database-url", database_url)
    assert code == 0, err
    assert "encrypted 2 from plain text" in out
    assert _plaintext_in_tables(conn, _needles(SECRET, NEW_SECRET)) == []
    raw = _raw(conn, first)
    assert crypto.open_value(raw["previous_secret"], _ring(key)) == SECRET
    assert crypto.open_value(raw["secret"], _ring(key)) == NEW_SECRET
    code, out, _ = _cli("status", "--json", "--database-url", database_url)
    assert json.loads(out)["credentials"] == {
        "encryption_key": True,
        "keys": 1,
        "subscriptions_encrypted": 2,
        "subscriptions_plaintext": 0,
    }


@pytest.mark.parametrize("key", ["missing", "wrong"])
async def test_undecryptable_credentials_fail_the_delivery_with_a_reason_and_send_nothing(
    conn: Conn, database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    """A relay that started before the rows were encrypted (or without reaching the database
    for the start-up check) never sends ciphertext or an unsigned request: the attempt fails
    with a reason naming RELAY_ENCRYPTION_KEY; the delivery stays replayable."""
    monkeypatch.setenv(ENV, crypto.generate_key())
    sub_id = _add(database_url, receiver.url(), "--secret", SECRET, "--max-retries", "0")
    if key == "missing":
        monkeypatch.delenv(ENV)
    else:
        monkeypatch.setenv(ENV, crypto.generate_key())
    emit(conn, "order.created", {"n": 1})
    async with running_relay(database_url):
        await wait_until(lambda: [d["status"] for d in deliveries(conn)] == ["dead"])
    assert receiver.requests_to("/hook") == []
    (d,) = deliveries(conn)
    assert d["subscription_id"] == sub_id
    (a,) = attempts(conn, d["id"])
    assert "RELAY_ENCRYPTION_KEY" in a["error"] and a["status_code"] is None
    assert crypto.PREFIX not in a["error"]


def test_cli_key_errors_exit_2_name_the_variable_and_change_nothing(
    conn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = crypto.generate_key()
    monkeypatch.setenv(ENV, key)
    sub_id = _add(database_url, "https://example.com/a", "--secret", SECRET)
    snapshot = _raw(conn, sub_id)

    def count() -> int:
        row = conn.execute("SELECT count(*) FROM relay.subscriptions").fetchone()
        assert row is not None
        return int(row[0])

    # A malformed key: every command refuses before touching anything.
    monkeypatch.setenv(ENV, "not-a-fernet-key")
    for argv in (
        ("subscription", "add", "https://example.com/b"),
        ("subscription", "list"),
        ("status",),
        ("rotate-key",),
    ):
        code, out, err = _cli(*argv, "--database-url", database_url)
        assert code == 2 and out == ""
        assert "RELAY_ENCRYPTION_KEY: key 1 of 1 is not a Fernet key" in err
        assert "not-a-fernet-key" not in err
    assert count() == 1

    # The wrong key: an update (which merges into the stored headers) and rotate-key refuse.
    monkeypatch.setenv(ENV, crypto.generate_key())
    code, _, err = _cli(
        "subscription", "update", str(sub_id), "--database-url", database_url,
        "--header", "X-New: v",
    )  # fmt: skip
    assert code == 2 and "RELAY_ENCRYPTION_KEY" in err
    code, _, err = _cli("rotate-key", "--database-url", database_url)
    assert code == 2 and "RELAY_ENCRYPTION_KEY cannot decrypt" in err
    assert "nothing was changed" in err
    # No key: rotate-key has nothing to encrypt with.
    monkeypatch.delenv(ENV)
    code, _, err = _cli("rotate-key", "--database-url", database_url)
    assert code == 2 and "RELAY_ENCRYPTION_KEY is not set" in err
    # Without a key, a header value that looks encrypted is refused, naming the field.
    code, _, err = _cli(
        "subscription", "add", "https://example.com/c", "--database-url", database_url,
        "--header", "X-Token: enc:v1:abc",
    )  # fmt: skip
    assert code == 2 and "header:" in err
    assert _raw(conn, sub_id) == snapshot and count() == 1


def test_encryption_key_generate_prints_a_new_key_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "broken")  # generating one is how a broken setting gets fixed
    code, out, err = _cli("encryption-key", "generate")
    assert code == 0 and err == ""
    key = out.strip()
    assert out == key + "\n"
    assert crypto.parse_keys(key) is not None
    assert _cli("encryption-key", "generate")[1].strip() != key


async def test_without_a_key_everything_works_and_the_metric_says_so(
    conn: Conn, database_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    _add(database_url, receiver.url(), "--secret", SECRET)
    emit(conn, "order.created", {"n": 1})
    async with running_relay(database_url) as relay:
        (req,) = await receiver.wait_for(1)
        assert relay.metrics.credentials_encrypted._value.get() == 0
    assert req.headers["authorization"] == TOKEN
    Webhook(SECRET).verify(req.body.decode(), req.headers)


def test_an_update_that_keeps_the_secret_starts_no_rotation_overlap(
    conn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ciphertexts of one secret differ on every write: the update must still see that the
    secret did not change (no previous secret kept, 'secret' not reported as changed)."""
    monkeypatch.setenv(ENV, crypto.generate_key())
    sub_id = _add(database_url, "https://example.com/a", "--secret", SECRET)
    for extra in (("--header", "X-New: v"), ("--secret", SECRET)):
        code, out, err = _cli(
            "subscription", "update", str(sub_id), "--database-url", database_url, *extra
        )
        assert code == 0, err
        assert "secret" not in out
        assert _raw(conn, sub_id)["previous_secret"] is None
