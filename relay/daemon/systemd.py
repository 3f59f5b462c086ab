"""systemd integration: ``sd_notify`` readiness/watchdog messages, without libsystemd.

The protocol (``man sd_notify``) is small enough to speak directly: one ``AF_UNIX``
``SOCK_DGRAM`` datagram per message, newline-separated ``KEY=VALUE`` lines, sent to the path in
``$NOTIFY_SOCKET`` (an ``@`` prefix names a Linux abstract socket). Outside systemd the
variable is unset and every method is a no-op, so the daemon calls them unconditionally.

Notification is best effort by design: a lost ``WATCHDOG=1`` is covered by the next one (they
go out at half the watchdog period), and a daemon must never die because its supervisor's
socket hiccuped. Send errors are therefore logged at debug level and swallowed.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("relay.systemd")

__all__ = ["SystemdNotifier", "watchdog_interval"]


def _socket_address(raw: str | None) -> bytes | None:
    """The ``sendto`` address for a ``$NOTIFY_SOCKET`` value, or None if unusable.

    Bytes rather than str so an abstract name (leading NUL) and non-UTF-8 paths both survive.
    """
    if not raw:
        return None
    if raw.startswith("@"):
        # Abstract namespace: the kernel name starts with a NUL byte instead of "@".
        return b"\0" + os.fsencode(raw[1:])
    if raw.startswith("/"):
        return os.fsencode(raw)
    # systemd >= 254 can also hand out "vsock:CID:PORT" (for VMs); relay runs on the host, and
    # guessing at other forms could send datagrams somewhere unintended.
    log.debug("NOTIFY_SOCKET %r is not a unix socket path; systemd notification disabled", raw)
    return None


class SystemdNotifier:
    """Sends ``sd_notify`` messages to the service manager named by ``$NOTIFY_SOCKET``.

    ``environ`` defaults to :data:`os.environ`; tests pass their own mapping. The socket is
    opened lazily on the first message and reused; :meth:`close` releases it.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """True when running under a service manager that listens for notifications."""
        return self._address is not None

    def ready(self) -> None:
        """Startup finished: ``Type=notify`` units count as started from now on."""
        self.notify("READY=1")

    def watchdog(self) -> None:
        """Keep-alive ping; must arrive within ``WatchdogSec=`` or systemd restarts relay."""
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun (draining), so systemd shows "deactivating" rather than a hang."""
        self.notify("STOPPING=1")

    def status(self, text: str) -> None:
        """One line of free text shown by ``systemctl status``."""
        # The protocol is line-based: a newline in the text would start a bogus KEY=VALUE.
        self.notify("STATUS=" + " ".join(text.splitlines()))

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields as one datagram. True if it was sent, never raises."""
        if self._address is None or not fields:
            return False
        payload = "\n".join(fields).encode("utf-8")
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Non-blocking: this is called from the event loop, and a full receive queue
                # on systemd's side must drop a ping rather than stall deliveries.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify %r failed: %s", fields, exc)
            return False
        return True

    def close(self) -> None:
        """Close the socket (idempotent); a later message reopens it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings, or None when no watchdog is configured.

    systemd sets ``WATCHDOG_USEC`` (the ``WatchdogSec=`` period) and ``WATCHDOG_PID``; pinging
    at half the period (as ``sd_watchdog_enabled`` recommends) leaves room for one late or lost
    ping. A ``WATCHDOG_PID`` naming another process means the variables were inherited from a
    parent and the watchdog is not ours to feed.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC")
    if not raw_usec:
        return None
    raw_pid = env.get("WATCHDOG_PID")
    if raw_pid:
        try:
            if int(raw_pid) != os.getpid():
                return None
        except ValueError:
            log.debug("ignoring malformed WATCHDOG_PID %r", raw_pid)
            return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.debug("ignoring malformed WATCHDOG_USEC %r", raw_usec)
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000
