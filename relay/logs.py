"""Logging set-up: JSON lines for journald/log shippers, readable text on a terminal.

Everything goes through the stdlib :mod:`logging` module; callers attach structured context
with ``extra=`` (``log.info("delivered", extra={"delivery_id": d, "status": 200})``) and both
formats show it: JSON as top-level fields, text as trailing ``key=value`` pairs.

Secrets should never reach a log call in the first place, but a stray exception message or a
repr of a subscription can carry one. :class:`RedactingFilter` therefore masks anything that
looks like a signing secret, an ``Authorization``/``Bearer`` value or a URL password in every
record that reaches relay's handler — defense in depth, not the primary control.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "TextFormatter",
    "redact",
    "set_level",
    "setup_logging",
    "toggle_debug",
]

from relay.masking import CONNINFO_PASSWORD, MASK, URL_PASSWORD

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# (pattern, replacement) pairs applied in order. Authorization headers come before the bare
# "Bearer" rule so the whole header value (whatever its scheme) is masked in one go.
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Standard Webhooks signing secrets: whsec_ + base64.
    (re.compile(r"whsec_[A-Za-z0-9+/=_-]+"), "whsec_" + MASK),
    # Header-style credentials, also inside dict reprs / JSON: 'Authorization': 'Basic ...'.
    (
        re.compile(
            r"""(?i)\b((?:proxy-)?authorization|x-api-key|api[-_]key)(["']?\s*[:=]\s*["']?)"""
            r"""[^"'\r\n]+"""
        ),
        r"\1\2" + MASK,
    ),
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), r"\1 " + MASK),
    # Passwords in URLs (postgresql://user:pass@host, https://u:p@host): everything between
    # the user's colon and the last "@" of the URL, so an unencoded "@" in it still hides it.
    (URL_PASSWORD, r"\1" + MASK + "@"),
    # libpq key/value conninfo: "host=db password=secret".
    (CONNINFO_PASSWORD, r"\1" + MASK),
)

# Mapping keys (in ``extra=`` values such as a headers dict) whose value is always a secret.
_SECRET_KEY = re.compile(
    r"(?i)^(?:(?:proxy-)?authorization|x-api-key|api[-_]?key|cookie|set-cookie)$"
    r"|secret|password|passwd|token"
)

# The redacted ``extra=`` fields, as RedactingFilter left them (so formatters need not pick
# them out of the record's attributes again).
_EXTRA = "relay_extra"
# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, __file__, 0, "", None, None)).keys()
) | {"message", "asctime", "taskName", _EXTRA}

# The handler setup_logging installed, so a second call replaces it instead of doubling output.
_handler: logging.Handler | None = None


# Every pattern above needs one of these in the text; most log lines hold none, and one scan
# for them is far cheaper than five regex substitutions (this runs several times per delivery).
_TRIGGERS = re.compile(r"(?i)whsec_|auth|api|bearer|://|password")


def redact(text: str) -> str:
    """``text`` with signing secrets, auth header values and URL passwords masked."""
    if _TRIGGERS.search(text) is None:
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


_PLAIN = (int, float, bool, type(None))


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    """Whether an ``extra=`` field or mapping key names a credential (cached: few names)."""
    return _SECRET_KEY.search(key) is not None


def _redact_value(value: Any) -> Any:
    """Redact strings inside ``extra=`` values, keeping their JSON structure."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {
            k: MASK if isinstance(k, str) and _secret_key(k) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` fields of a record, in the order they were given."""
    known: dict[str, Any] | None = getattr(record, _EXTRA, None)
    if known is not None:
        return known
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}


class RedactingFilter(logging.Filter):
    """Masks secrets in the message, ``extra=`` fields, traceback and stack of every record.

    Attach it to a handler, not a logger: logger filters do not see records that propagate
    up from child loggers, handler filters see everything the handler emits.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            # Bad %-args: let the handler report its usual formatting error.
            return True
        cleaned = redact(message)
        if cleaned != message or record.args:
            # Freeze the rendered message so formatters cannot re-render unredacted args.
            record.msg, record.args = cleaned, None
        fields = extra_fields(record)
        for key, value in fields.items():
            # A field named like a credential is masked whole (extra={"api_key": ...}).
            if value is None or isinstance(value, _PLAIN):
                if value is not None and _secret_key(key):
                    fields[key] = MASK
                    setattr(record, key, MASK)
                continue
            cleaned_value = MASK if _secret_key(key) else _redact_value(value)
            fields[key] = cleaned_value
            setattr(record, key, cleaned_value)
        setattr(record, _EXTRA, fields)
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when set, so this is the traceback that gets printed.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    return dt.datetime.fromtimestamp(whole, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once per second
    (a busy relay writes a line per delivery)."""
    whole = int(record.created)
    millis = min(999, int((record.created - whole) * 1000))
    return f"{_second(whole)}.{millis:03d}Z"


# default=str: an odd extra value (UUID, datetime, Decimal) must not lose the line. Built
# once: json.dumps() with options builds an encoder per call.
_JSON = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, then ``extra=`` fields.

    An extra field that collides with a base key is kept as ``extra_<key>`` rather than
    overwriting the base key or being dropped.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out[f"extra_{key}" if key in out else key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return _JSON.encode(out)


class TextFormatter(logging.Formatter):
    """``2024-05-01T12:00:00.123Z INFO relay.deliver: delivered delivery_id=... status=200``."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = extra_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + record.exc_text
        if record.stack_info:
            line += "\n" + record.stack_info
        return line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    # Quote values with spaces so "key=value" pairs stay splittable by eye and by tools.
    return json.dumps(text) if (not text or any(c.isspace() for c in text)) else text


def _parse_level(level: str) -> int:
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {level!r} (use debug, info, warning or error)"
        ) from None


def setup_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Send all logging to ``stream`` (default stderr, which journald captures).

    ``fmt`` is ``json``, ``text``, or ``auto``: text when the stream is a terminal, JSON lines
    otherwise (under systemd, in containers, piped to a shipper). Calling it again replaces
    the previous set-up. Raises ValueError on an unknown level or format.
    """
    numeric = _parse_level(level)
    out = sys.stderr if stream is None else stream
    choice = fmt.strip().lower()
    if choice == "auto":
        isatty = getattr(out, "isatty", None)
        choice = "text" if isatty is not None and isatty() else "json"
    formatter: logging.Formatter
    if choice == "json":
        formatter = JsonFormatter()
    elif choice == "text":
        formatter = TextFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r} (use json, text or auto)")

    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.addFilter(RedactingFilter())
    root.addHandler(handler)
    root.setLevel(numeric)
    _handler = handler
    # Record fields no formatter here shows, each computed per record otherwise: the caller's
    # file and line (a frame walk), thread, process id (a getpid() call) and process name.
    # (The logging HOWTO's "Optimization" section names these switches.)
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # warnings.warn(...) from libraries then lands in the same stream, redacted and formatted.
    logging.captureWarnings(True)


def set_level(level: str) -> None:
    """Change the level at runtime (the daemon's SIGHUP handler). ValueError if unknown."""
    logging.getLogger().setLevel(_parse_level(level))


def toggle_debug(configured: str) -> str:
    """Switch between ``debug`` and the ``configured`` level; returns the new level's name.

    Meant for the daemon's SIGHUP handler (``systemctl reload relay``): a running process
    cannot re-read its systemd ``EnvironmentFile=``, but an operator chasing a problem only
    needs debug on and, afterwards, off again — without a restart that would drop the state
    being debugged.
    """
    base = _parse_level(configured)
    new = base if logging.getLogger().level == logging.DEBUG else logging.DEBUG
    logging.getLogger().setLevel(new)
    return logging.getLevelName(new).lower()
