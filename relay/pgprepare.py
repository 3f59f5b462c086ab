"""Server-side prepared statements: on (psycopg's default) or off, for every connection relay
opens.

psycopg prepares a statement on the server after it ran five times on a connection
(``prepare_threshold``). Behind a transaction pooler (PgBouncer ``pool_mode = transaction``)
the next transaction may run on another server connection, where that statement does not
exist, or exists under the same name for another client: ``prepared statement "_pg3_7"
already exists``, ``... does not exist``, or, with equal parameter counts, the wrong statement
bound. ``RELAY_PREPARE=off`` sets ``prepare_threshold=None``: nothing is ever prepared.

The daemon reads the setting from its :class:`relay.config.Config` (``--prepare``); the
operator commands, the API and the portal read ``RELAY_PREPARE`` from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from relay.errors import ConfigError

ENV = "RELAY_PREPARE"
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")


def prepare_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """``RELAY_PREPARE`` (default on). A value that is neither on nor off raises
    :class:`ConfigError` naming the variable (exit 2)."""
    raw = (os.environ if environ is None else environ).get(ENV, "").strip().lower()
    if raw == "" or raw in _ON:
        return True
    if raw in _OFF:
        return False
    raise ConfigError(f"{ENV}: must be on or off (true/false), got {raw!r}")


def prepare_kwargs(prepare: bool | None = None) -> dict[str, Any]:
    """Connection arguments for ``prepare`` (None: from the environment): nothing when
    statements may be prepared, ``prepare_threshold=None`` when not."""
    if prepare is None:
        prepare = prepare_from_env()
    return {} if prepare else {"prepare_threshold": None}
