"""Secrets never leak: signing secrets and header credentials stay out of logs, metrics, CLI
output and error messages; a rotated secret keeps signing during its overlap."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from relay.cli import main as cli_main
from tests.faults._util import Conn, free_port, http_get, report, scalar, settled, wait_sync
from tests.faults.conftest import StartRelay
from tests.receiver import Receiver, respond, start_receiver_process
from tests.relayctx import add_subscription, emit, running_relay, wait_until

TOKEN = "s3cr3t-value"


def _secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def _needles(*secrets: str) -> list[str]:
    """What must never appear: each secret, its base64 part, and the bearer token."""
    out = [TOKEN]
    for secret in secrets:
        out += [secret, secret.removeprefix("whsec_")]
    return out


def _leaks(text: str, needles: list[str]) -> list[str]:
    return [n for n in needles if n in text]


def _cli(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(argv)
    return code, out.getvalue() + err.getvalue()


def test_secrets_never_appear_in_logs_metrics_cli_or_errors(
    conn: Conn, database_url: str, relay_procs: StartRelay, tmp_path: Path
) -> None:
    """A relay process (debug logging) delivers for a subscription with a ``whsec_`` secret and
    an ``Authorization: Bearer`` header, some attempts failing (500s, a closed port): neither
    secret, nor its base64, nor the token appears in the relay's log, /metrics, any
    ``subscription``/``delivery``/``status`` output (JSON or table) or any error message."""
    secret, previous = _secret(), _secret()
    needles = _needles(secret, previous)
    db = ["--database-url", database_url]
    outputs: dict[str, str] = {}
    with start_receiver_process(tmp_path, fail_every=2) as rx:
        add = ["subscription", "add", "--header", f"Authorization: Bearer {TOKEN}"]
        add += ["--secret", secret, "--max-retries", "3", "--backoff-ms", "100"]
        code, text = _cli([*add, rx.url, *db])
        assert code == 0, text
        outputs["add ok"] = text
        dead_url = f"http://127.0.0.1:{free_port()}/closed"
        code, text = _cli([*add, dead_url, *db])
        assert code == 0, text
        conn.execute(
            "UPDATE relay.subscriptions SET previous_secret = %s,"
            " previous_secret_expires_at = now() + interval '1 hour'",
            (previous,),
        )
        port = free_port()
        relay = relay_procs(database_url, log_level="debug", metrics_addr=f"127.0.0.1:{port}")
        for i in range(6):
            emit(conn, "order.created", {"i": i})
        wait_sync(
            lambda: (
                scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status <> 'pending'")
                == 12
            ),
            30,
            "every delivery to be delivered or dead",
        )
        status, outputs["metrics"] = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and "relay_delivery_attempts_total" in outputs["metrics"]
        relay.signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        received = rx.records()
    # The credentials really were in play: sent to the receiver, signed with both secrets.
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in received)
    assert all(len(r["headers"]["webhook-signature"].split()) == 2 for r in received)
    failed = scalar(conn, "SELECT count(*) FROM relay.delivery_attempts WHERE error IS NOT NULL")
    assert failed > 0
    outputs["relay log"] = relay.log()
    assert "delivered" in outputs["relay log"]

    dead_id = scalar(conn, "SELECT min(id) FROM relay.deliveries WHERE status = 'dead'")
    ok_id = scalar(conn, "SELECT min(id) FROM relay.deliveries WHERE status = 'delivered'")
    sub_id = scalar(conn, "SELECT min(id) FROM relay.subscriptions")
    commands = [
        ["subscription", "list", "--json"],
        ["subscription", "list"],
        ["subscription", "list", "--all", "--json"],
        ["subscription", "show", str(sub_id), "--json"],
        ["subscription", "show", str(sub_id)],
        ["delivery", "list", "--json"],
        ["delivery", "list"],
        ["delivery", "show", str(dead_id), "--json"],
        ["delivery", "show", str(dead_id)],
        ["delivery", "show", str(ok_id), "--json"],
        ["status", "--json"],
        ["subscription", "update", str(sub_id), "--header", f"Authorization: Bearer {TOKEN}"],
    ]
    for argv in commands:
        code, outputs[" ".join(argv)] = _cli([*argv, *db])
        assert code == 0, outputs[" ".join(argv)]
    # Error paths that are handed a secret or the token.
    broken = secret[:-8] + "!!!!!!!!"
    errors = {
        "bad secret": ["subscription", "add", rx.url, "--secret", broken, *db],
        "short secret": ["subscription", "add", rx.url, "--secret", secret[:20], *db],
        "update bad secret": ["subscription", "update", str(sub_id), "--secret", broken, *db],
        "header CRLF": [
            *("subscription", "add", rx.url),
            f"--header=Authorization: Bearer {TOKEN}\r\nX: y",
            *db,
        ],
        "header non-ASCII": [
            *("subscription", "add", rx.url),
            f"--header=Authorization: Bearer {TOKEN}é",
            *db,
        ],
        "reserved header": ["subscription", "add", rx.url, f"--header=Host: {TOKEN}", *db],
        "db password": [
            *("subscription", "list"),
            *("--database-url", f"postgresql://postgres:{TOKEN}@127.0.0.1:1/x"),
        ],
    }
    for name, argv in errors.items():
        code, outputs[name] = _cli(argv)
        assert code != 0, (name, outputs[name])
    leaked = {name: _leaks(text, needles) for name, text in outputs.items()}
    leaked = {name: found for name, found in leaked.items() if found}
    report(
        "secrets",
        places_checked=len(outputs),
        log_bytes=len(outputs["relay log"]),
        attempts=scalar(conn, "SELECT count(*) FROM relay.delivery_attempts"),
        failed_attempts=failed,
        leaks=leaked,
    )
    assert not leaked, leaked


def test_malformed_header_error_does_not_echo_the_credential(conn: Conn, database_url: str) -> None:
    """``--header 'Authorization Bearer <token>'`` (colon forgotten) is refused naming the
    field, without repeating the credential it was handed."""
    code, text = _cli(
        [
            *("subscription", "add", "http://127.0.0.1:9/"),
            f"--header=Authorization Bearer {TOKEN}",
            *("--database-url", database_url),
        ]
    )
    assert code == 2 and text.startswith("relay: error: header: "), text
    assert TOKEN not in text, text


def _get(url: str) -> tuple[int, str]:
    return asyncio.run(http_get(url))


async def test_in_process_log_records_carry_no_secret(
    conn: Conn, database_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Every log record of an in-process relay (messages, arguments, extra fields, exception
    text), at DEBUG, with failing and succeeding attempts: no secret, no token."""
    secret = _secret()
    needles = _needles(secret)
    receiver.script("/hook", [respond(500, body=f"echo {TOKEN}"), respond(204)])
    add_subscription(
        conn,
        receiver.url(),
        secret=secret,
        headers={"Authorization": f"Bearer {TOKEN}"},
        max_retries=2,
        backoff_ms=50,
    )
    add_subscription(
        conn, f"http://127.0.0.1:{free_port()}/", secret=secret, max_retries=1, backoff_ms=50
    )
    caplog.set_level(logging.DEBUG)
    emit(conn, "order.created", {"n": 1})
    async with running_relay(database_url, log_level="debug"):
        await wait_until(lambda: settled(conn, 2), 10)
    dumped = []
    for record in caplog.records:
        dumped.append(record.getMessage())
        dumped.append(json.dumps(record.__dict__, default=str))
    text = "\n".join(dumped)
    # The receiver echoed the token in its 500 body: that body is the receiver's data, kept
    # in the attempt row, and must not be logged either.
    assert not _leaks(text, needles), _leaks(text, needles)
    assert len(caplog.records) > 5


async def test_rotation_overlap_signs_with_both_secrets(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """During a rotation overlap (``previous_secret`` + ``previous_secret_expires_at`` in the
    future; set with SQL: the CLI has no rotation command) each request carries two v1
    signatures, one verifying with the new secret and one with the old; after the overlap only
    the new secret signs and the old one no longer verifies."""
    new, old = _secret(), _secret()
    sub = add_subscription(conn, receiver.url(), secret=new)
    conn.execute(
        "UPDATE relay.subscriptions SET previous_secret = %s,"
        " previous_secret_expires_at = %s WHERE id = %s",
        (old, datetime.now(UTC) + timedelta(hours=1), sub),
    )
    emit(conn, "order.created", {"phase": "overlap"})
    async with running_relay(database_url):
        (during,) = await receiver.wait_for(1)
        conn.execute(
            "UPDATE relay.subscriptions SET previous_secret_expires_at = now() - interval '1 s'"
        )
        emit(conn, "order.created", {"phase": "after"})
        _, after = await receiver.wait_for(2)
    signatures = during.headers["webhook-signature"].split()
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    verified = []
    for secret in (new, old):
        ok = []
        for signature in signatures:
            headers = {**during.headers, "webhook-signature": signature}
            with contextlib.suppress(WebhookVerificationError):
                Webhook(secret).verify(during.body.decode(), headers)
                ok.append(signature)
        verified.append(ok)
    assert verified[0] and verified[1] and verified[0] != verified[1], verified
    assert len(after.headers["webhook-signature"].split()) == 1
    Webhook(new).verify(after.body.decode(), after.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(after.body.decode(), after.headers)
