"""Acceptance tier: real ``relay run`` processes, stopped by signals (SIGTERM, SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.procs import terminate


class RelayProcess:
    """``python -m relay run`` in its own process, configured through RELAY_* variables."""

    def __init__(self, database_url: str, log_path: Path, **settings: Any) -> None:
        env = dict(os.environ)
        env.update(
            {
                "RELAY_DATABASE_URL": database_url,
                "RELAY_METRICS_ADDR": "127.0.0.1:0",
                "RELAY_ALLOWED_NETWORKS": "127.0.0.0/8",
                "RELAY_POLL_INTERVAL": "0.5",
                "RELAY_LOG_FORMAT": "json",
            }
        )
        for key, value in settings.items():
            env["RELAY_" + key.upper()] = str(value)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait(10)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        terminate(self.proc)
        self._log.close()


@pytest.fixture
def relay_process(tmp_path: Path) -> Iterator[Any]:
    started: list[RelayProcess] = []

    def start(database_url: str, **settings: Any) -> RelayProcess:
        p = RelayProcess(database_url, tmp_path / f"relay-{len(started)}.log", **settings)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def count(conn: psycopg.Connection[Any], sql: str) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])
