"""Settings of ``relay api``, in the same style as ``relay run`` (:mod:`relay.config`).

Each setting is a flag ``--name-with-dashes`` and a variable ``RELAY_NAME_IN_CAPS``; flag >
environment > default; a bad value raises :class:`ConfigError` naming the setting. The
database, log and pool settings share their variables with ``relay run``, so one systemd
``EnvironmentFile=`` serves both units.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.config import Setting, parse_settings
from relay.config import _addr as parse_addr
from relay.config import _choice as parse_choice
from relay.config import _positive_float as parse_positive_float
from relay.config import _positive_int as parse_positive_int
from relay.config import _text as parse_text
from relay.masking import mask_url


def _optional_addr(raw: str) -> str:
    return "" if raw.strip().lower() in ("", "off") else parse_addr(raw)


API_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "database_url",
        parse_text,
        None,
        "Postgres URL. Unset: an embedded Postgres under the state directory.",
        secret=True,
    ),
    Setting("state_dir", parse_text, None, "Where the embedded Postgres keeps its data."),
    Setting("api_addr", parse_addr, "127.0.0.1:8480", "HOST:PORT the JSON API listens on."),
    Setting(
        "api_metrics_addr",
        _optional_addr,
        "127.0.0.1:9464",
        "HOST:PORT for the API's Prometheus /metrics ('off' = none). A port of its own, so "
        "the customer-facing address serves no operator data.",
    ),
    Setting("api_pool_size", parse_positive_int, 8, "Database connections of the API."),
    Setting(
        "api_max_body_bytes",
        parse_positive_int,
        1024 * 1024,
        "Largest request body accepted; larger ones get 413.",
    ),
    Setting(
        "api_drain_timeout",
        parse_positive_float,
        10.0,
        "Seconds SIGTERM waits for requests in flight before closing.",
    ),
    Setting("log_level", parse_choice("debug", "info", "warning", "error"), "info", "Log level."),
    Setting(
        "log_format",
        parse_choice("auto", "json", "text"),
        "auto",
        "json, text, or auto (text on a TTY, JSON lines otherwise).",
    ),
)


@dataclass(frozen=True)
class ApiConfig:
    """The effective settings of one ``relay api``."""

    database_url: str | None = None
    state_dir: str | None = None
    api_addr: str = "127.0.0.1:8480"
    api_metrics_addr: str = "127.0.0.1:9464"
    api_pool_size: int = 8
    api_max_body_bytes: int = 1024 * 1024
    api_drain_timeout: float = 10.0
    log_level: str = "info"
    log_format: str = "auto"

    def masked(self) -> dict[str, Any]:
        """The settings as a dict, with the database password masked."""
        out: dict[str, Any] = {}
        for s in API_SETTINGS:
            value = getattr(self, s.name)
            out[s.name] = mask_url(value) if s.secret and value else value
        return out

    @property
    def host_port(self) -> tuple[str, int]:
        return split_addr(self.api_addr)


def split_addr(addr: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets) as ``(host, port)``."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def load_api(
    flags: Mapping[str, str | None] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ApiConfig:
    """Build an :class:`ApiConfig` from raw flag values and the environment."""
    return dataclasses.replace(ApiConfig(), **parse_settings(API_SETTINGS, flags, environ))
