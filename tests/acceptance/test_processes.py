"""``relay run --processes N``: one supervisor, N real relay processes, stopped by signals."""

from __future__ import annotations

import os
import signal
import socket
import urllib.request
from collections import Counter
from typing import Any

import psycopg

from tests.acceptance.conftest import count, wait_for
from tests.procs import children, running
from tests.receiver import start_receiver_process
from tests.relayctx import add_subscription

Conn = psycopg.Connection[Any]


def _two_free_ports() -> int:
    """A port p such that p and p + 1 are both free right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = int(probe.getsockname()[1])
        if base >= 65535:
            continue
        try:
            with socket.socket() as second:
                second.bind(("127.0.0.1", base + 1))
        except OSError:
            continue
        return base
    raise AssertionError("no two consecutive free ports")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _delivered(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("relay_deliveries_total{") and 'outcome="delivered"' in line
    )


def test_two_processes_share_the_work_survive_a_kill_and_stop_on_sigterm(
    conn: Conn, database_url: str, relay_process: Any, tmp_path: Any
) -> None:
    n = 600
    port = _two_free_ports()
    with start_receiver_process(tmp_path, delay=0.005) as rx:
        add_subscription(conn, rx.url, timeout_ms=1000)
        supervisor = relay_process(
            database_url, processes=2, metrics_addr=f"127.0.0.1:{port}", lease_seconds=2
        )
        wait_for(lambda: _ready(port) and _ready(port + 1), 60, "both processes ready")
        workers = children(supervisor.proc.pid)
        assert len(workers) == 2, f"expected 2 relay processes, found {workers}"
        wait_for(lambda: count(conn, "SELECT count(*) FROM relay.relays") == 2, 30, "2 relays seen")

        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created', jsonb_build_object('n', g) FROM generate_series(1, %s) g",
            (n,),
        )
        wait_for(lambda: len(rx.records()) >= n // 3, 60, "a third delivered")
        # both processes took part: each one's own /metrics counts deliveries of its own
        assert _delivered(port) > 0 and _delivered(port + 1) > 0

        # kill -9 one process: the supervisor starts another in its place
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not running(victim), 10, "the killed process to be gone")
        wait_for(
            lambda: len([c for c in children(supervisor.proc.pid) if c != victim]) == 2,
            30,
            "a replacement process",
        )
        wait_for(
            lambda: (
                count(conn, "SELECT count(*) FROM relay.deliveries WHERE status='delivered'") == n
            ),
            90,
            "every delivery delivered",
        )
        wait_for(lambda: _ready(port) and _ready(port + 1), 30, "both ready again")

        still = children(supervisor.proc.pid)
        supervisor.signal(signal.SIGTERM)
        assert supervisor.wait(40) == 0
        assert not [pid for pid in still if running(pid)], "no relay process outlives it"
        log = supervisor.log()
        records = rx.records()
    assert "restarting in" in log, log[-2000:]
    ids = Counter(r["webhook_id"] for r in records)
    assert len(ids) == n, "every event reached the receiver"
