"""Postgres itself crashes mid-drain (SIGKILL of the postmaster) while relay commits its own
statements with ``synchronous_commit = off`` (the default): the last few hundred ms of relay's
bookkeeping may be lost, so deliveries may be sent again, but no event is lost.

The crash needs a server of the test's own: a private cluster made with the machine's
``initdb`` (run as the ``postgres`` user when the test runs as root, since Postgres refuses
root), started on a free port, killed, and started again (crash recovery replays the WAL).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from relay.sql.migrate import migrate
from tests.acceptance.conftest import RelayProcess, count, wait_for
from tests.procs import children, running
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription

pytestmark = pytest.mark.slow


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or ""]
    return found[-1] or None


class Cluster:
    def __init__(self, root: Path) -> None:
        initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not pg_ctl:
            if os.environ.get("CI"):
                raise AssertionError("initdb/pg_ctl not found: CI must have Postgres installed")
            pytest.skip("initdb/pg_ctl not found (Postgres server binaries)")
        self.pg_ctl = pg_ctl
        self.root = root
        self.data = root / "pgdata"
        root.mkdir(parents=True, exist_ok=True)
        self.user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
            self.user = ["runuser", "-u", "postgres", "--"]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self._run(initdb, "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{root}'\nfsync = on\n"
            )

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self.user, *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}{done.stderr}"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        log = self.data / "log"
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-l", str(log), "-w", "start")
        except AssertionError as exc:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise AssertionError(f"{exc}\nserver log:\n{tail}") from None

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def crash(self) -> None:
        """SIGKILL the postmaster and every backend it started: what a power cut leaves."""
        pid = self.postmaster_pid()
        family = [pid, *children(pid)]
        for member in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while any(running(member) for member in family):
            assert time.monotonic() < deadline, "the killed server's processes did not exit"
            time.sleep(0.05)
        # The killed postmaster may linger as a zombie (not every container's init reaps
        # orphans), and a new postmaster takes a live pid in the lock file for a running
        # server. Every process is dead by now, so the stale lock file goes, as an operator
        # would remove it after a crash.
        (self.data / "postmaster.pid").unlink(missing_ok=True)
        for stale in self.root.glob(".s.PGSQL.*"):  # the socket's own lock file, likewise
            stale.unlink(missing_ok=True)

    def stop(self) -> None:
        subprocess.run(
            [*self.user, self.pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # Not under pytest's tmp_path: its parents are root's alone, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="relay-crashpg-"))
    try:
        c = Cluster(root)
        c.start()
        try:
            yield c
        finally:
            c.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_postgres_killed_mid_drain_with_async_commit_loses_nothing(
    cluster: Cluster, tmp_path: Path
) -> None:
    n = 3000
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        migrate(conn)
        with start_receiver_process(tmp_path, delay=0.002) as rx:
            add_subscription(conn, rx.url, timeout_ms=2000)
            # The app's own commits are synchronous (its connection, its settings).
            conn.execute(
                "INSERT INTO relay.outbox (event_type, payload) SELECT 'order.created',"
                " jsonb_build_object('n', g) FROM generate_series(1, %s) g",
                (n,),
            )
            relay = RelayProcess(cluster.url, tmp_path / "relay.log", lease_seconds=2)
            try:
                wait_for(lambda: len(rx.records()) >= 800, 90, "800 deliveries before the crash")
                cluster.crash()
                time.sleep(1.0)
                cluster.start()
                with psycopg.connect(cluster.url, autocommit=True) as after:
                    wait_for(
                        lambda: (
                            count(
                                after,
                                "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'",
                            )
                            == n
                        ),
                        120,
                        "every delivery delivered after the crash",
                    )
                    assert count(after, "SELECT count(*) FROM relay.outbox") == n
                    undispatched = "SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL"
                    assert count(after, undispatched) == 0
                relay.signal(signal.SIGTERM)
                assert relay.wait(30) == 0
            finally:
                relay.stop()
            records = rx.records()
    ids = Counter(r["webhook_id"] for r in records)
    assert len(ids) == n, "every event reached the receiver at least once"
    assert '"synchronous_commit": "off"' in relay.log(), "the relay under test ran with it off"


def test_relay_connections_commit_asynchronously_and_on_sends_nothing(database_url: str) -> None:
    from relay.daemon.store import connection_kwargs

    off = connection_kwargs(database_url, "off")
    with psycopg.connect(database_url, **off) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("off",)
    assert connection_kwargs(database_url, "on") == {"autocommit": True}
    # options already in the URL are kept
    url = make_conninfo(database_url, options="-c work_mem=8MB")
    kw = connection_kwargs(url, "local")
    with psycopg.connect(url, **kw) as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("local",)
        assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)
