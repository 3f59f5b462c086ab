"""``relay run --processes N|auto``: one relay process per core, under one supervisor.

One relay process keeps one core busy (its Python is the bottleneck, not Postgres), so a host
with more cores runs several. They need nothing from each other: claims are ``SKIP LOCKED``
with leases, so N relays on one database are as safe as one. The supervisor only:

- resolves the database once (and starts/migrates an embedded one) and hands the URL down;
- starts N ``relay run`` children, child *i* serving its metrics on the base port + *i*
  (scrape them as one Prometheus job with N targets; docs/operating.md);
- restarts a child that dies while nobody asked it to stop, with a growing pause;
- forwards SIGTERM/SIGINT (drain and exit) and SIGHUP (log level) to every child, then
  exits 0 once they have all exited 0;
- speaks for them to systemd: READY=1 once every child answers ``/readyz``, WATCHDOG=1
  while they run (children get no ``NOTIFY_SOCKET``: ``NotifyAccess=main`` hears only us).

The loop is synchronous and polls: it waits on processes and signals, nothing else.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import FrameType

from relay.config import SETTINGS, Config
from relay.daemon.systemd import SystemdNotifier, watchdog_interval

log = logging.getLogger("relay.supervisor")

# Tunables (module constants, so tests can shrink them).
POLL_SECONDS = 0.2
RESTART_PAUSE_MIN = 1.0
RESTART_PAUSE_MAX = 30.0
# A child that ran this long before dying starts the pause sequence again from the minimum.
HEALTHY_RUN_SECONDS = 60.0
STOP_GRACE_EXTRA = 15.0  # on top of each child's own stop bound, before SIGKILL
# The longest request a child may have in flight at a stop (the largest timeout_ms the schema
# allows: 300 s); a child lets each one run out its own timeout (relay.daemon.attempts.drain).
LONGEST_REQUEST_SECONDS = 300.0

_SYSTEMD_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _raw(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def child_metrics_addr(base: str, index: int) -> str:
    """Child ``index``'s metrics address: the base port + index (port 0 stays 0: any free)."""
    host, _, port = base.rpartition(":")
    number = int(port)
    return f"{host}:{number + index if number else 0}"


def child_environ(
    config: Config, database_url: str, index: int, environ: Mapping[str, str]
) -> dict[str, str]:
    """The environment of child ``index``: every setting spelled out, one process each.

    Every ``RELAY_*`` setting is written from the parent's effective config (so flags given
    to the supervisor reach the children, and the children cannot read anything else), with
    the database resolved once, its own metrics port and relay id, and no systemd socket.
    """
    env = {k: v for k, v in environ.items() if k not in _SYSTEMD_VARS}
    for s in SETTINGS:
        value = getattr(config, s.name)
        if value is None:
            env.pop(s.env, None)
        else:
            env[s.env] = _raw(value)
    env["RELAY_DATABASE_URL"] = database_url
    env["RELAY_PROCESSES"] = "1"
    env["RELAY_METRICS_ADDR"] = child_metrics_addr(config.metrics_addr, index)
    if config.relay_id:
        env["RELAY_RELAY_ID"] = f"{config.relay_id}-{index}"
    return env


def restart_pause(previous: float, ran_for: float) -> float:
    """The pause before restarting a child that died after ``ran_for`` seconds.

    Doubles from RESTART_PAUSE_MIN up to RESTART_PAUSE_MAX while children keep dying quickly
    (a crash loop: bad config, database gone); back to the minimum after a healthy run.
    """
    if ran_for >= HEALTHY_RUN_SECONDS or previous <= 0:
        return RESTART_PAUSE_MIN
    return min(previous * 2, RESTART_PAUSE_MAX)


@dataclass
class Child:
    index: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    pause: float = 0.0
    restart_at: float | None = None
    ready: bool = False
    restarts: int = field(default=0)

    def start(self, now: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "relay", "run"], env=self.env)
        self.started_at = now
        self.restart_at = None
        self.ready = False
        log.info(
            "started relay process %d (pid %d, metrics %s)",
            self.index,
            self.proc.pid,
            self.env["RELAY_METRICS_ADDR"],
        )

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)


def _answers_ready(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    if port == "0":  # an ephemeral port the supervisor cannot know: take its start as ready
        return True
    try:
        with urllib.request.urlopen(f"http://{host}:{port}/readyz", timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


class Supervisor:
    """Runs ``processes`` relay children until a signal asks them all to stop."""

    def __init__(self, config: Config, database_url: str, processes: int) -> None:
        self.config = config
        self.children = [
            Child(i, child_environ(config, database_url, i, os.environ)) for i in range(processes)
        ]
        self.stopping = False
        self.pending_signals: list[int] = []
        self.notifier = SystemdNotifier()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.pending_signals.append(signum)

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_signal)
        now = time.monotonic()
        for child in self.children:
            child.start(now)
        announced = False
        watchdog = watchdog_interval()
        last_ping = 0.0
        while True:
            self._handle_signals()
            now = time.monotonic()
            alive = self._reap_and_restart(now)
            if self.stopping and not alive:
                break
            if not announced and not self.stopping:
                announced = self._announce_ready()
            if watchdog and now - last_ping >= watchdog and alive:
                self.notifier.watchdog()
                last_ping = now
            time.sleep(POLL_SECONDS)
        codes = [c.proc.returncode if c.proc else 0 for c in self.children]
        log.info("all relay processes stopped (exit codes %s)", codes)
        return 0 if all(code == 0 for code in codes) else 1

    def _handle_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            if signum == signal.SIGHUP:
                for child in self.children:
                    child.signal(signal.SIGHUP)
                continue
            if not self.stopping:
                log.info("stopping: asking %d relay processes to drain", len(self.children))
                self.notifier.stopping()
                self.stopping = True
                # A child may wait for its requests' own timeouts, then for the drain
                # timeout to record their outcomes: only past that is it wedged.
                self._stop_deadline = time.monotonic() + (
                    max(self.config.drain_timeout, LONGEST_REQUEST_SECONDS)
                    + self.config.drain_timeout
                    + STOP_GRACE_EXTRA
                )
            for child in self.children:
                child.signal(signal.SIGTERM)

    def _reap_and_restart(self, now: float) -> int:
        """Restart children that died unasked; return how many are still running."""
        alive = 0
        for child in self.children:
            proc = child.proc
            if proc is None:
                continue
            code = proc.poll()
            if code is None:
                alive += 1
                if self.stopping and now > self._stop_deadline:
                    log.error("relay process %d did not stop in time: killing it", child.index)
                    proc.kill()
                continue
            if self.stopping:
                continue
            if child.restart_at is None:
                child.pause = restart_pause(child.pause, now - child.started_at)
                child.restart_at = now + child.pause
                log.error(
                    "relay process %d (pid %d) exited with %s; restarting in %.0fs",
                    child.index,
                    proc.pid,
                    code,
                    child.pause,
                )
            elif now >= child.restart_at:
                child.restarts += 1
                child.start(now)
                alive += 1
        return alive

    def _announce_ready(self) -> bool:
        for child in self.children:
            if not child.ready:
                child.ready = (
                    child.proc is not None
                    and child.proc.poll() is None
                    and (_answers_ready(child.env["RELAY_METRICS_ADDR"]))
                )
        if all(child.ready for child in self.children):
            log.info("%d relay processes ready", len(self.children))
            self.notifier.ready()
            return True
        return False


def supervise(config: Config, processes: int) -> int:
    """Entry point of ``relay run --processes N`` (N > 1)."""
    from relay.embedded import resolve_database_url
    from relay.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    # An embedded database is started and migrated here, once, not by each process.
    url = resolve_database_url(config.database_url, config.state_dir, migrate=True)
    return Supervisor(config, url, processes).run()
