"""relay.systemd against real unix datagram sockets standing in for systemd's notify socket."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.daemon.systemd import SystemdNotifier, watchdog_interval


def _recv(sock: socket.socket) -> bytes:
    sock.settimeout(2.0)
    return sock.recv(4096)


def _nothing_pending(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    return False


@pytest.fixture
def path_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound to a file, like systemd's /run/systemd/notify."""
    # A short directory of our own: sun_path is limited to 108 bytes, pytest's tmp_path isn't.
    with tempfile.TemporaryDirectory(prefix="relay-sd-") as tmp:
        path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        try:
            yield sock, path
        finally:
            sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket in the Linux abstract namespace; NOTIFY_SOCKET spells it ``@name``."""
    name = f"relay-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        yield sock, "@" + name
    finally:
        sock.close()


def test_path_socket_receives_exact_datagrams(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    with SystemdNotifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.enabled
        notifier.ready()
        assert _recv(sock) == b"READY=1"
        notifier.watchdog()
        assert _recv(sock) == b"WATCHDOG=1"
        notifier.status("draining 3 in-flight requests")
        assert _recv(sock) == b"STATUS=draining 3 in-flight requests"
        notifier.stopping()
        assert _recv(sock) == b"STOPPING=1"


def test_abstract_socket_receives_exact_datagrams(
    abstract_socket: tuple[socket.socket, str],
) -> None:
    sock, address = abstract_socket
    with SystemdNotifier({"NOTIFY_SOCKET": address}) as notifier:
        notifier.ready()
        assert _recv(sock) == b"READY=1"
        notifier.watchdog()
        assert _recv(sock) == b"WATCHDOG=1"
        notifier.stopping()
        assert _recv(sock) == b"STOPPING=1"
        notifier.status("ok")
        assert _recv(sock) == b"STATUS=ok"


def test_status_newlines_cannot_inject_fields(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    with SystemdNotifier({"NOTIFY_SOCKET": path}) as notifier:
        notifier.status("line one\nREADY=1")
        assert _recv(sock) == b"STATUS=line one READY=1"


def test_several_fields_go_in_one_datagram(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    with SystemdNotifier({"NOTIFY_SOCKET": path}) as notifier:
        assert notifier.notify("READY=1", "STATUS=started")
        assert _recv(sock) == b"READY=1\nSTATUS=started"
        assert _nothing_pending(sock)


def test_reads_os_environ_by_default(
    path_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with SystemdNotifier() as notifier:
        notifier.ready()
        assert _recv(sock) == b"READY=1"


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier()
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    notifier.status("x")
    notifier.stopping()
    assert notifier.notify("READY=1") is False
    notifier.close()


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_unusable_addresses_disable_notification(value: str) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False


def test_send_error_is_swallowed_and_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with tempfile.TemporaryDirectory(prefix="relay-sd-") as tmp:
        missing = str(Path(tmp) / "nobody-listens")
        notifier = SystemdNotifier({"NOTIFY_SOCKET": missing})
        with caplog.at_level(logging.DEBUG, logger="relay.systemd"):
            notifier.ready()  # must not raise
            assert notifier.notify("WATCHDOG=1") is False
        notifier.close()
    failures = [r for r in caplog.records if r.name == "relay.systemd"]
    assert failures
    assert all(r.levelno == logging.DEBUG for r in failures)


def test_recovers_once_the_socket_appears(path_socket: tuple[socket.socket, str]) -> None:
    sock, path = path_socket
    sock.close()
    os.unlink(path)
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    assert notifier.notify("WATCHDOG=1") is False
    again = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    again.bind(path)
    try:
        assert notifier.notify("WATCHDOG=1") is True
        assert _recv(again) == b"WATCHDOG=1"
    finally:
        notifier.close()
        again.close()


def test_watchdog_interval_is_half_the_period() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert (
        watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    )
    assert watchdog_interval({"WATCHDOG_USEC": "500000"}) == 0.25


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": ""},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"},
        # Inherited from a parent: that process's watchdog, not ours.
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)},
    ],
)
def test_watchdog_interval_none_when_not_ours(env: dict[str, str]) -> None:
    assert watchdog_interval(env) is None


def test_watchdog_interval_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval() == 1.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert watchdog_interval() is None
