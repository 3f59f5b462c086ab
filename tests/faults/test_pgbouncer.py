"""A real ``relay run`` behind a real PgBouncer in transaction pooling: poll-only
(``--listen false``), no server-side prepared statements (``RELAY_PREPARE=off``) and no
startup options (``RELAY_SYNCHRONOUS_COMMIT=on``), as the README says.

psycopg prepares a statement after five runs on a connection; a transaction pooler hands the
next transaction another server connection, where the statement is missing or belongs to
another client (issue 14: ``prepared statement "_pg3_7" already exists``, or the wrong
statement bound). The drain must log no database error at all.

Debian's ``pgbouncer`` is started here on a free port, as user postgres when the tests run as
root (it refuses to run as root), with its files in a directory of its own. Without the
binary the test skips, except in CI (``CI=true``), where ``.ci/run`` installs it: there it
fails.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.faults._util import free_port, scalar, wait_sync
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription

Conn = psycopg.Connection[Any]
EVENTS = 2000


def _pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None
    )
    if found is None:
        why = "pgbouncer is not installed (apt-get install -y pgbouncer)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why + ": CI must run this test (.ci/run installs it)")
        pytest.skip(why)
    return found


@pytest.fixture
def pgbouncer_url(database_url: str) -> Iterator[str]:
    """A URL of the test's database through a PgBouncer in ``pool_mode = transaction``."""
    binary = _pgbouncer_binary()
    parts = conninfo_to_dict(database_url)
    dbname, user = str(parts["dbname"]), str(parts.get("user") or "postgres")
    host, port = str(parts.get("host") or "127.0.0.1"), str(parts.get("port") or 5432)
    # Not pytest's tmp_path: user postgres cannot reach it.
    workdir = Path(tempfile.mkdtemp(prefix="relay-pgbouncer-"))
    listen = free_port()
    (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"{dbname} = host={host} port={port} dbname={dbname} user={user}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {listen}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {workdir}/userlist.txt\n"
        "pool_mode = transaction\n"
        # Fewer server connections than relay's pool: transactions of different client
        # connections share server connections, as in production.
        "default_pool_size = 3\n"
        "max_client_conn = 100\n"
        f"logfile = {workdir}/pgbouncer.log\n"
        f"pidfile = {workdir}/pgbouncer.pid\n"
    )
    command = [binary, str(workdir / "pgbouncer.ini")]
    if os.geteuid() == 0:
        shutil.chown(workdir, "postgres")
        for f in workdir.iterdir():
            shutil.chown(f, "postgres")
        command = ["runuser", "-u", "postgres", "--", *command]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"postgresql://{user}@127.0.0.1:{listen}/{dbname}"
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"pgbouncer exited ({proc.returncode}): {out}")
            try:
                with psycopg.connect(url, connect_timeout=2, prepare_threshold=None) as c:
                    c.execute("SELECT 1")
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        # Our own process (runuser passes the signal on to pgbouncer).
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def test_drain_through_pgbouncer_transaction_pooling_logs_no_database_error(
    conn: Conn, pgbouncer_url: str, relay_procs: Any, tmp_path: Path
) -> None:
    with start_receiver_process(tmp_path, delay=0.0) as rx:
        add_subscription(conn, rx.url, timeout_ms=5000)
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created', jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (EVENTS,),
        )
        relay = relay_procs(
            pgbouncer_url,
            listen="false",
            prepare="off",
            synchronous_commit="on",
            poll_interval=0.2,
            concurrency=32,
        )
        took = wait_sync(
            lambda: (
                scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
                == EVENTS
            ),
            120,
            f"{EVENTS} deliveries through pgbouncer",
        )
        relay.signal(signal.SIGTERM)
        assert relay.wait(30) == 0
        log = relay.log()
        received = {r["webhook_id"] for r in rx.records()}
    assert len(received) == EVENTS, "every event reached the receiver"
    assert scalar(conn, "SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL") == 0
    errors = [
        line
        for line in log.splitlines()
        if "prepared statement" in line
        or "database error" in line
        or "unexpected error" in line
        or '"level": "error"' in line.lower()
    ]
    assert errors == [], "\n".join(errors[:10])
    print(f"\npgbouncer transaction pooling: {EVENTS} deliveries in {took:.1f}s")
