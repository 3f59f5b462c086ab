"""The relay error hierarchy: one root, driver errors translated at the boundary.

relay's own code raises these; psycopg's errors are translated here and nowhere else
(:func:`db_errors`, :func:`database_error`, :func:`emit_error`), so callers catch
:class:`RelayError` subclasses only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg


class RelayError(Exception):
    """Root of every error relay raises on purpose."""


class ConfigError(RelayError):
    """A setting has a bad value; the message names the setting."""


class ValidationError(RelayError):
    """User input (a subscription field, an event) is invalid; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFound(RelayError):
    """A subscription, delivery or event type does not exist."""


class Conflict(RelayError):
    """The request cannot be done in the object's current state (a replay of a delivery in
    flight); trying again later may work."""


class EmitError(RelayError):
    """An event could not be written to the outbox (unknown type, bad payload)."""


class DatabaseError(RelayError):
    """Postgres could not be reached or refused a statement relay expected to work.

    ``transient``: the connection failed (worth retrying the same statement); False when
    the database refused the statement itself (its data), which a retry cannot fix.
    """

    def __init__(self, message: str, *, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class MappingError(RelayError):
    """A subscription's body map could not be applied to a notification."""


# -- translating the driver's errors ---------------------------------------------------------

# Errors meaning "the relay schema is not there (yet)": the fix is `relay migrate`.
_SCHEMA_MISSING = (
    psycopg.errors.UndefinedTable,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.InvalidSchemaName,
    psycopg.errors.UndefinedColumn,
)

# What Postgres says about a bad event (unknown type, not an object, too large, text jsonb
# cannot hold such as NUL): all surface as EmitError.
EMIT_REFUSALS = (
    psycopg.errors.ForeignKeyViolation,
    psycopg.errors.CheckViolation,
    psycopg.errors.DataError,
)


def database_error(exc: psycopg.Error) -> DatabaseError:
    """The :class:`DatabaseError` for a psycopg error (the pool's timeouts included): a
    missing schema names the fix, an unreachable server says so, anything else is the
    server's own message."""
    if isinstance(exc, _SCHEMA_MISSING):
        return DatabaseError(
            f"relay schema missing or out of date ({_message(exc)}); run `relay migrate`",
            transient=False,
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return DatabaseError(f"database unavailable: {_message(exc)}")
    # The server refused the statement itself (its data): retrying it as is cannot help.
    return DatabaseError(_message(exc), transient=False)


def emit_error(exc: psycopg.Error) -> EmitError:
    """The :class:`EmitError` for one of :data:`EMIT_REFUSALS` (the message names the field
    where Postgres does not)."""
    message = _message(exc)
    if isinstance(exc, psycopg.errors.DataError):
        message = f"payload: {message}"
    return EmitError(message)


@contextlib.contextmanager
def db_errors() -> Iterator[None]:
    """Translate psycopg errors raised inside the block into :class:`DatabaseError`.

    relay's own errors (validation, not found) pass through untouched.
    """
    try:
        yield
    except psycopg.Error as exc:
        raise database_error(exc) from exc


def _message(exc: psycopg.Error) -> str:
    diag = getattr(exc, "diag", None)
    primary = diag.message_primary if diag is not None else None
    return primary or str(exc).strip() or type(exc).__name__
