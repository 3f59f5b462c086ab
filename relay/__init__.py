"""relay: a Postgres outbox relay daemon.

Apps write events into ``relay.outbox`` inside their own transactions (``relay.emit``);
``relay run`` turns each row into signed, retried, replayable webhook deliveries.

This module is the app-facing API, and only that: :func:`emit`, :func:`emit_async`, the
errors (:class:`RelayError` and its subclasses) and ``__version__``. The daemon, the CLI and
the operator functions live in subpackages (``relay.daemon``, ``relay.cli``, ``relay.admin``;
see docs/architecture.md) and are not imported here.
"""

from __future__ import annotations

__version__ = "0.1.0"

from relay.errors import (
    ConfigError,
    DatabaseError,
    EmitError,
    MappingError,
    NotFound,
    RelayError,
    ValidationError,
)
from relay.outbox import emit, emit_async

__all__ = [
    "ConfigError",
    "DatabaseError",
    "EmitError",
    "MappingError",
    "NotFound",
    "RelayError",
    "ValidationError",
    "__version__",
    "emit",
    "emit_async",
]
