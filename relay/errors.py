"""The relay error hierarchy: one root, driver errors translated at the boundary."""

from __future__ import annotations


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
