"""Which Postgres to use: an explicit URL, ``RELAY_DATABASE_URL``, or an embedded one.

The embedded Postgres (the ``pgserver`` package: real Postgres binaries shipped as a wheel)
lets ``relay demo`` and a first ``relay run`` work on a machine with no database set up. It
keeps its data under the state directory and keeps running after the command exits, so the
next command (or ``relay run``) reuses it instead of paying for a start-up again. Nobody else
migrates such a private database, so the command that resolves it does
(:func:`resolve_database_url` with ``migrate=True``): the one place that auto-migrates.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from relay.config import load
from relay.errors import DatabaseError, db_errors
from relay.masking import mask_url
from relay.pgprepare import prepare_kwargs

_ENV_URL = "RELAY_DATABASE_URL"
_ENV_STATE_DIR = "RELAY_STATE_DIR"


def embedded_url(state_dir: Path) -> str:
    """Start (or reuse) the embedded Postgres under ``state_dir`` and return its URI.

    Raises :class:`DatabaseError` when the server cannot be started.
    """
    pgdata = Path(state_dir) / "pgdata"
    print(
        f"relay: using embedded Postgres at {pgdata} (set RELAY_DATABASE_URL to use your own)",
        file=sys.stderr,
    )
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        # pgserver imports platformdirs, which warns about an unset XDG_RUNTIME_DIR on
        # headless machines: noise for a CLI user, so keep it out of their terminal.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pgserver

            # cleanup_mode=None: leave the server running when this process exits.
            server = pgserver.get_server(pgdata, cleanup_mode=None)  # type: ignore[attr-defined]
            uri: str = server.get_uri()
    except Exception as exc:  # pgserver raises plain exceptions of many kinds
        raise DatabaseError(f"could not start the embedded Postgres at {pgdata}: {exc}") from exc
    return uri


def default_state_dir() -> Path:
    """The state directory from ``RELAY_STATE_DIR`` or the XDG default."""
    # Only the state-dir setting is read: a bad value of an unrelated daemon variable must
    # not break `relay subscription list`.
    raw = os.environ.get(_ENV_STATE_DIR)
    environ = {_ENV_STATE_DIR: raw} if raw else {}
    return load(environ=environ).effective_state_dir


# Seconds a connection attempt may take (unless the URL says): fail fast on a dead host.
CONNECT_TIMEOUT = 10


def resolve_database_url(
    explicit: str | None, state_dir: str | Path | None = None, *, migrate: bool = False
) -> str:
    """The Postgres URL to use: ``explicit``, else ``RELAY_DATABASE_URL``, else embedded.

    ``state_dir`` overrides ``RELAY_STATE_DIR`` for where the embedded server lives; with
    ``migrate``, an embedded database is brought to the current schema first.
    """
    if explicit:
        return explicit
    from_env = os.environ.get(_ENV_URL)
    if from_env:
        return from_env
    url = embedded_url(Path(state_dir) if state_dir else default_state_dir())
    if migrate:
        from relay.sql.migrate import migrate as apply_migrations

        with connect(url) as conn, db_errors():
            apply_migrations(conn)
    return url


def connect(url: str) -> psycopg.Connection[Any]:
    """An autocommit connection that fails fast on an unreachable host (:class:`DatabaseError`
    naming where, password masked)."""
    # RELAY_PREPARE=off (behind a transaction pooler): nothing prepared on the server.
    kwargs: dict[str, Any] = prepare_kwargs()
    with contextlib.suppress(psycopg.ProgrammingError):
        if "connect_timeout" not in conninfo_to_dict(url):
            kwargs["connect_timeout"] = CONNECT_TIMEOUT
    try:
        return psycopg.connect(url, autocommit=True, **kwargs)
    except psycopg.Error as exc:
        where = f" at {mask_url(url)}" if "://" in url else ""
        raise DatabaseError(f"cannot connect to the database{where}: {exc}") from None


def is_embedded(explicit: str | None) -> bool:
    """Whether :func:`resolve_database_url` would pick the embedded Postgres."""
    return not explicit and not os.environ.get(_ENV_URL)
