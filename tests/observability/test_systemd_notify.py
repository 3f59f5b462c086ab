"""``Type=notify`` + ``WatchdogSec=``: a real ``relay run`` speaks sd_notify to a socket
standing in for systemd's (``NOTIFY_SOCKET``)."""

from __future__ import annotations

import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.observability.conftest import RelayProc, http_get, wait_for


class NotifySocket:
    """A unix datagram socket collecting sd_notify messages, with when each arrived."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                break
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))
        return [m for _, m in self.messages]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    # A short path: AF_UNIX paths are limited to ~107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="relay-sd-") as tmp:
        sock = NotifySocket(Path(tmp) / "notify")
        try:
            yield sock
        finally:
            sock.close()


def test_ready_watchdog_and_stopping_are_notified(
    database_url: str,
    obs_relay: Callable[..., RelayProc],
    notify_socket: NotifySocket,
) -> None:
    """With NOTIFY_SOCKET and WATCHDOG_USEC=2 s (no WATCHDOG_PID: the rule in relay.systemd is
    "unset or our own pid"), relay sends READY=1 once its HTTP endpoint answers, WATCHDOG=1
    at least every second afterwards, STOPPING=1 on SIGTERM, and exits 0."""
    relay = obs_relay(
        database_url,
        env={"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "2000000"},
    )

    def ready_sent() -> bool:
        assert relay.running, relay.log()
        return "READY=1" in notify_socket.drain()

    wait_for(ready_sent, 30, f"READY=1\n{relay.log()}")
    # READY=1 means started: the metrics/health endpoint is already listening.
    status, _ = http_get(relay.base_url + "/healthz")
    assert status == 200

    def pings_after_ready() -> bool:
        msgs = notify_socket.drain()
        return msgs[msgs.index("READY=1") :].count("WATCHDOG=1") >= 2

    wait_for(pings_after_ready, 30, "two WATCHDOG=1 after READY=1")

    relay.proc.send_signal(signal.SIGTERM)
    assert relay.wait(30) == 0, relay.log()
    msgs = notify_socket.drain()
    assert "STOPPING=1" in msgs, msgs
    assert msgs.count("READY=1") == 1, msgs
    assert msgs.index("READY=1") < msgs.index("STOPPING=1")
    # Nothing but protocol lines we know.
    for m in msgs:
        assert m.split("=", 1)[0] in {"READY", "WATCHDOG", "STOPPING", "STATUS", "MAINPID"}, m


def test_watchdog_of_another_process_is_not_fed(
    database_url: str,
    obs_relay: Callable[..., RelayProc],
    notify_socket: NotifySocket,
) -> None:
    """WATCHDOG_PID naming another process (variables inherited from a parent) means the
    watchdog is not relay's: READY=1 still goes out, WATCHDOG=1 never does."""
    relay = obs_relay(
        database_url,
        env={
            "NOTIFY_SOCKET": str(notify_socket.path),
            "WATCHDOG_USEC": "400000",
            "WATCHDOG_PID": "1",
        },
    )
    wait_for(lambda: "READY=1" in notify_socket.drain(), 30, f"READY=1\n{relay.log()}")
    relay.wait_ready()  # a little time for pings that must not come (interval 0.2 s)
    time.sleep(1.0)
    assert "WATCHDOG=1" not in notify_socket.drain()
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.wait(30) == 0
