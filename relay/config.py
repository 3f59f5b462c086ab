"""Daemon settings: one table drives flags, ``RELAY_*`` variables, validation and docs.

Each :class:`Setting` is exposed as ``--name-with-dashes`` on ``relay run`` and as
``RELAY_NAME_IN_CAPS`` in the environment (so a systemd ``EnvironmentFile=`` can hold them).
Precedence: flag > environment > default. A bad value raises :class:`ConfigError` naming the
setting, before anything starts.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relay.errors import ConfigError
from relay.masking import mask_url


def _int(raw: str, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        # not int()'s "invalid literal for int() with base 10": say what is wanted
        raise ValueError(f"must be {what}") from None


def _positive_int(raw: str) -> int:
    value = _int(raw, "a positive integer")
    if value <= 0:
        raise ValueError("must be a positive integer")
    return value


def _non_negative_int(raw: str) -> int:
    value = _int(raw, "a whole number, 0 or more")
    if value < 0:
        raise ValueError("must be a whole number, 0 or more")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _bool(raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _addr(raw: str) -> str:
    host, sep, port = raw.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9465")
    return raw


def _networks(raw: str) -> str:
    for part in filter(None, (p.strip() for p in raw.split(","))):
        ipaddress.ip_network(part, strict=False)
    return raw


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


def _text(raw: str) -> str:
    return raw


def _processes(raw: str) -> int:
    """``auto`` (one per core this process may run on) or a positive integer."""
    if raw.strip().lower() == "auto":
        return cpu_count()
    return _positive_int(raw)


def cpu_count() -> int:
    """Cores this process may run on (its CPU affinity, not the host's total)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without affinity
        return max(1, os.cpu_count() or 1)


_DURATION_RE = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Beyond this a duration is a typo (and a timestamp minus it would overflow).
_DURATION_MAX = 100 * 365 * 86400


def duration_seconds(raw: str) -> int:
    """``90s``, ``15m``, ``2h``, ``30d``, ``2w`` in whole seconds; ValueError otherwise."""
    match = _DURATION_RE.match(raw.strip().lower())
    if not match:
        raise ValueError("must be a duration like 90s, 15m, 2h, 30d")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not 0 < seconds <= _DURATION_MAX:
        raise ValueError("must be between 1s and 100 years")
    return seconds


def _retention(raw: str) -> str:
    """``off``, or a duration (kept as written, so --print-config shows what was asked)."""
    value = raw.strip().lower()
    if value != "off":
        try:
            duration_seconds(value)
        except ValueError:
            raise ValueError("must be a duration like 90s, 15m, 2h, 30d, or off") from None
    return value


@dataclass(frozen=True)
class Setting:
    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return "RELAY_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "database_url",
        _text,
        None,
        "Postgres URL. Unset: an embedded Postgres under the state directory.",
        secret=True,
    ),
    Setting(
        "state_dir",
        _text,
        None,
        "Where the embedded Postgres keeps its data (default ~/.local/state/relay).",
    ),
    Setting(
        "metrics_addr", _addr, "127.0.0.1:9465", "HOST:PORT for /metrics, /healthz and /readyz."
    ),
    Setting(
        "processes",
        _processes,
        1,
        "Relay processes to run under one supervisor: a number, or auto (one per core). "
        "Process i serves its metrics on the metrics port + i.",
    ),
    Setting("concurrency", _positive_int, 64, "HTTP requests in flight at once (per process)."),
    Setting(
        "subscription_concurrency",
        _positive_int,
        None,
        "Most requests in flight to one subscription (default 3/4 of concurrency), so a "
        "slow endpoint cannot take every slot.",
    ),
    Setting(
        "prefetch",
        _non_negative_int,
        None,
        "Deliveries leased beyond the request slots, ready to start the moment one frees "
        "(default: as many as concurrency; 0 = none).",
    ),
    Setting(
        "claim_batch",
        _positive_int,
        100,
        "Most deliveries claimed, or leased at fan-out, per statement.",
    ),
    Setting(
        "dispatch_batch",
        _positive_int,
        500,
        "Most outbox rows fanned out per transaction (a relay fans out only as many as it has "
        "free slots, unless a subscription is at its cap).",
    ),
    Setting(
        "poll_interval",
        _positive_float,
        5.0,
        "Seconds between safety-net polls (NOTIFY wakes relay sooner).",
    ),
    Setting(
        "listen",
        _bool,
        True,
        "Use LISTEN/NOTIFY wake-ups; false for PgBouncer transaction pooling (poll only).",
    ),
    Setting(
        "lease_seconds",
        _positive_float,
        60.0,
        "How long a claim is held; a crashed relay's work is retaken after this.",
    ),
    Setting(
        "drain_timeout",
        _positive_float,
        10.0,
        "SIGTERM: each in-flight request gets its own timeout (+2 s), at least this long; "
        "then this long to record outcomes.",
    ),
    Setting(
        "gauge_interval",
        _positive_float,
        5.0,
        "Seconds between refreshes of the backlog/pending/dead gauges.",
    ),
    Setting(
        "allowed_networks",
        _networks,
        "",
        "Comma-separated CIDRs that delivery may reach although private/loopback.",
    ),
    Setting("pool_size", _positive_int, 8, "Database connections in the pool."),
    Setting(
        "synchronous_commit",
        _choice("off", "on", "local", "remote_write", "remote_apply"),
        "off",
        "synchronous_commit of relay's own statements (claims, acks, fan-out; never the "
        "app's emit). off: a Postgres crash may re-send the last few hundred ms of "
        "deliveries, never lose one. Set on behind a transaction pooler.",
    ),
    Setting(
        "prepare",
        _bool,
        True,
        "Let psycopg prepare statements on the server (after 5 runs). Set off behind a "
        "transaction pooler (PgBouncer pool_mode = transaction).",
    ),
    Setting(
        "retention",
        _retention,
        "30d",
        "Finished history (delivered/dead deliveries, their attempts and events) older than "
        "this is pruned in small batches; off keeps everything.",
    ),
    Setting(
        "vacuum",
        _bool,
        True,
        "VACUUM relay's queue tables when dead rows pile up (a fallback for servers where "
        "autovacuum is off or lagging).",
    ),
    Setting("log_level", _choice("debug", "info", "warning", "error"), "info", "Log level."),
    Setting(
        "log_format",
        _choice("auto", "json", "text"),
        "auto",
        "json, text, or auto (text on a TTY, JSON lines otherwise).",
    ),
    Setting("relay_id", _text, None, "This relay's name in leases and logs (default host-pid)."),
)

# Each default is written once, in SETTINGS: Config's fields, the flags' help and the docs'
# table (checked by tests/observability/test_config.py) all read it from there.
_DEFAULT: dict[str, Any] = {s.name: s.default for s in SETTINGS}


@dataclass(frozen=True)
class Config:
    """The effective settings of one ``relay run``. ``repr`` masks the database password."""

    database_url: str | None = _DEFAULT["database_url"]
    state_dir: str | None = _DEFAULT["state_dir"]
    metrics_addr: str = _DEFAULT["metrics_addr"]
    processes: int = _DEFAULT["processes"]
    concurrency: int = _DEFAULT["concurrency"]
    subscription_concurrency: int | None = _DEFAULT["subscription_concurrency"]
    prefetch: int | None = _DEFAULT["prefetch"]
    claim_batch: int = _DEFAULT["claim_batch"]
    dispatch_batch: int = _DEFAULT["dispatch_batch"]
    poll_interval: float = _DEFAULT["poll_interval"]
    listen: bool = _DEFAULT["listen"]
    lease_seconds: float = _DEFAULT["lease_seconds"]
    drain_timeout: float = _DEFAULT["drain_timeout"]
    gauge_interval: float = _DEFAULT["gauge_interval"]
    allowed_networks: str = _DEFAULT["allowed_networks"]
    pool_size: int = _DEFAULT["pool_size"]
    synchronous_commit: str = _DEFAULT["synchronous_commit"]
    prepare: bool = _DEFAULT["prepare"]
    retention: str = _DEFAULT["retention"]
    vacuum: bool = _DEFAULT["vacuum"]
    log_level: str = _DEFAULT["log_level"]
    log_format: str = _DEFAULT["log_format"]
    relay_id: str | None = _DEFAULT["relay_id"]
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __repr__(self) -> str:
        items = ", ".join(f"{k}={v!r}" for k, v in self.masked().items())
        return f"Config({items})"

    def masked(self) -> dict[str, Any]:
        """The settings as a dict, with secrets (the database password) masked."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            value = getattr(self, s.name)
            out[s.name] = mask_url(value) if s.secret and value else value
        return out

    @property
    def metrics_host_port(self) -> tuple[str, int]:
        host, _, port = self.metrics_addr.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def effective_subscription_concurrency(self) -> int:
        if self.subscription_concurrency:
            return min(self.subscription_concurrency, self.concurrency)
        return max(1, self.concurrency * 3 // 4)

    @property
    def effective_prefetch(self) -> int:
        return self.concurrency if self.prefetch is None else self.prefetch

    @property
    def retention_seconds(self) -> int | None:
        """The retention in seconds; None when it is ``off``."""
        return None if self.retention == "off" else duration_seconds(self.retention)

    @property
    def effective_relay_id(self) -> str:
        return self.relay_id or default_relay_id()

    @property
    def effective_state_dir(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir)
        base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(base) / "relay"


def default_relay_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def parse_settings(
    settings: Sequence[Setting],
    flags: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """``{name: value}`` of the ``settings`` given, as flags (first) or ``RELAY_*`` variables.

    ``flags`` maps setting names to the raw strings given on the command line (None = not
    given). Raises :class:`ConfigError` naming the setting (flag and variable) on a bad value
    or an unknown name. Shared by ``relay run`` and ``relay api``.
    """
    flags = flags or {}
    environ = os.environ if environ is None else environ
    unknown = set(flags) - {s.name for s in settings}
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for s in settings:
        raw = flags.get(s.name)
        source = s.flag
        if raw is None:
            raw = environ.get(s.env)
            source = s.env
        if raw is None or (raw == "" and s.default is None):
            continue
        try:
            values[s.name] = s.parse(raw)
        except ValueError as exc:
            shown = "***" if s.secret else repr(raw)
            raise ConfigError(f"{source} ({s.name}): {exc} (got {shown})") from None
    return values


def load(
    flags: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Build a :class:`Config` from raw flag values and the environment (see
    :func:`parse_settings`)."""
    return dataclasses.replace(Config(), **parse_settings(SETTINGS, flags, environ))
