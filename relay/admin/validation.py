"""Validation of operator input: subscription fields, event types, ids and times.

Every function either returns the normalized value or raises
:class:`relay.errors.ValidationError` naming the field, so ``relay subscription add`` can
refuse bad input before anything is written. Checks that need the database (does an event
type exist?) live in :mod:`relay.admin_subscriptions`; these are pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from relay.errors import ValidationError
from relay.webhook import signing
from relay.webhook.body import BodyMap

MAX_URL_LENGTH = 2048
MAX_HEADER_NAME = 256
MAX_HEADER_VALUE = 8192
MAX_HEADERS = 64
MAX_EVENT_NAME = 200
MAX_TENANT = 200

# Mirrors the CHECK on relay.event_types.name: `area.event_name`, lowercase.
_EVENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
# Globs use the event-type alphabet plus the two wildcards relay.glob_match understands.
_GLOB_RE = re.compile(r"^[a-z0-9_.*?]+$")
# RFC 7230 `token`.
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_DURATION_RE = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

# Headers relay sets itself (signing, framing, identity): a subscription may not override
# them, or it could forge a signature or break the request framing.
RESERVED_HEADERS = frozenset(
    {"content-length", "content-type", "host", "transfer-encoding", "connection", "user-agent"}
)


def validate_url(url: str) -> str:
    """An absolute ``http``/``https`` URL with a host; returned unchanged."""
    if not isinstance(url, str) or not url:
        raise ValidationError("url", "must not be empty")
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError("url", f"longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() for ch in url) or _CONTROL_RE.search(url):
        raise ValidationError("url", "must not contain whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - evaluated for its ValueError on a bad port
    except ValueError as exc:
        raise ValidationError("url", f"not a valid URL ({exc})") from None
    if parts.scheme.lower() not in ("http", "https"):
        got = parts.scheme or "none"
        raise ValidationError("url", f"scheme must be http or https, got {got!r}")
    if not parts.hostname:
        raise ValidationError("url", "has no host")
    return url


def validate_method(method: str) -> str:
    """``GET`` or ``POST`` in any case; returned upper-case."""
    upper = method.strip().upper() if isinstance(method, str) else ""
    if upper not in ("GET", "POST"):
        raise ValidationError("method", f"must be GET or POST, got {method!r}")
    return upper


def parse_header(raw: str) -> tuple[str, str]:
    """Split and validate a ``'Name: value'`` command-line header."""
    name, sep, value = raw.partition(":")
    if not sep:
        # Never echo the input: a mistyped 'Authorization Bearer <token>' is a credential.
        raise ValidationError(
            "header", f"expected 'Name: value' (no ':' after {_first_word(raw)!r})"
        )
    return validate_header(name, value)


def _first_word(text: str) -> str:
    words = text.split()
    return words[0] if words else ""


def validate_header(name: str, value: str) -> tuple[str, str]:
    """A header a subscription may set: token name, printable-ASCII value, not reserved."""
    if not name or not _TOKEN_RE.match(name) or len(name) > MAX_HEADER_NAME:
        raise ValidationError(
            "header",
            f"invalid header name {_first_word(name)!r}... (RFC 7230 token)"
            if len(name.split()) > 1
            else f"invalid header name {name!r} (RFC 7230 token)",
        )
    low = name.lower()
    if low in RESERVED_HEADERS or low.startswith("webhook-"):
        raise ValidationError("header", f"{name!r} is set by relay and cannot be overridden")
    if not isinstance(value, str):
        raise ValidationError("header", f"value of {name!r} must be a string")
    if any(ch in value for ch in "\r\n\x00"):
        # The classic header-injection vector: refuse rather than strip.
        raise ValidationError("header", f"value of {name!r} contains CR, LF or NUL")
    value = value.strip(" \t")
    if any(not " " <= ch <= "~" for ch in value):
        raise ValidationError("header", f"value of {name!r} must be printable ASCII")
    if len(value) > MAX_HEADER_VALUE:
        raise ValidationError("header", f"value of {name!r} longer than {MAX_HEADER_VALUE}")
    return name, value


def validate_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Validate a ``{name: value}`` mapping; a later name wins over an earlier one of any case."""
    out: dict[str, str] = {}
    for raw_name, raw_value in headers.items():
        name, value = validate_header(raw_name, raw_value)
        for existing in [n for n in out if n.lower() == name.lower()]:
            del out[existing]
        out[name] = value
    if len(out) > MAX_HEADERS:
        raise ValidationError("header", f"at most {MAX_HEADERS} headers")
    return out


def validate_event_type_name(name: str, field: str = "name") -> str:
    """An event-type name like ``order.created`` (lowercase, dotted)."""
    if not isinstance(name, str) or not _EVENT_TYPE_RE.match(name) or len(name) > MAX_EVENT_NAME:
        raise ValidationError(
            field,
            f"invalid event type {name!r}: expected lowercase 'area.event_name' "
            "(letters, digits, '_', at least one '.')",
        )
    return name


def is_glob(pattern: str) -> bool:
    """Whether an ``--event`` value has a wildcard (else it names one event type)."""
    return "*" in pattern or "?" in pattern


def validate_event_glob(pattern: str) -> str:
    """An ``--event`` value: an event type or a glob with ``*`` and ``?``."""
    if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_EVENT_NAME:
        raise ValidationError("event", f"invalid event pattern {pattern!r}")
    if not is_glob(pattern):
        return validate_event_type_name(pattern, field="event")
    if not _GLOB_RE.match(pattern):
        raise ValidationError(
            "event",
            f"invalid event glob {pattern!r}: use lowercase letters, digits, '_', '.', '*', '?'",
        )
    return pattern


def validate_event_globs(patterns: Iterable[str]) -> list[str]:
    """Validate and de-duplicate ``--event`` values, keeping their order."""
    out: list[str] = []
    for pattern in patterns:
        checked = validate_event_glob(pattern)
        if checked not in out:
            out.append(checked)
    return out


def glob_matches(pattern: str, name: str) -> bool:
    """Python twin of ``relay.glob_match``: ``*`` any run, ``?`` one character."""
    regex = "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern)
    return re.fullmatch(regex, name, flags=re.DOTALL) is not None


def validate_event_name(event_type: str, name: str) -> tuple[str, str]:
    """A per-event-type ``eventType`` override (the type's existence is checked in the DB)."""
    validate_event_type_name(event_type, field="event_name")
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("event_name", f"name for {event_type!r} must not be empty")
    if len(name) > MAX_EVENT_NAME:
        raise ValidationError("event_name", f"name for {event_type!r} longer than 200 characters")
    if _CONTROL_RE.search(name):
        raise ValidationError("event_name", f"name for {event_type!r} has control characters")
    return event_type, name


def parse_event_name(raw: str) -> tuple[str, str]:
    """Split and validate a ``TYPE=NAME`` command-line value."""
    event_type, sep, name = raw.partition("=")
    if not sep:
        raise ValidationError("event_name", f"expected TYPE=NAME, got {raw!r}")
    return validate_event_name(event_type.strip(), name)


def parse_body_map(raw: str | Mapping[str, Any]) -> dict[str, Any]:
    """A body map from JSON text or a mapping: a JSON object of output name → JSONPath."""
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValidationError("body_map", f"not valid JSON: {exc}") from None
    else:
        value = raw
    if not isinstance(value, Mapping):
        raise ValidationError("body_map", "must be a JSON object of outputName: JSONPath")
    mapping = dict(value)
    BodyMap.compile(mapping)  # raises ValidationError("body_map", ...) naming the bad path
    return mapping


def validate_secret(secret: str) -> str:
    """A Standard Webhooks signing secret (``whsec_<base64>``)."""
    if not isinstance(secret, str):
        raise ValidationError("secret", "must be a string")
    signing.validate_secret(secret)
    return secret


def generate_secret() -> str:
    """A fresh ``whsec_`` signing secret."""
    return signing.generate_secret()


def validate_tenant(tenant: str) -> str:
    """A tenant id: 1..200 characters, no control characters."""
    if not isinstance(tenant, str) or not tenant:
        raise ValidationError("tenant", "must not be empty")
    if len(tenant) > MAX_TENANT:
        raise ValidationError("tenant", f"longer than {MAX_TENANT} characters")
    if _CONTROL_RE.search(tenant):
        raise ValidationError("tenant", "must not contain control characters")
    return tenant


def validate_int(field: str, value: int | str, low: int, high: int) -> int:
    """An integer in ``low..high`` from an int or its decimal text."""
    if isinstance(value, bool):
        raise ValidationError(field, "must be an integer")
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise ValidationError(field, f"must be an integer, got {value!r}") from None
    if not isinstance(value, int):
        raise ValidationError(field, "must be an integer")
    if not low <= value <= high:
        raise ValidationError(field, f"must be between {low} and {high}, got {value}")
    return value


def validate_max_retries(value: int | str) -> int:
    """Retries after the first attempt: 0..100."""
    return validate_int("max_retries", value, 0, 100)


def validate_backoff_ms(value: int | str) -> int:
    """Backoff base in milliseconds (retry n waits n x base): 0..86 400 000."""
    return validate_int("backoff_ms", value, 0, 86_400_000)


def validate_timeout_ms(value: int | str) -> int:
    """HTTP timeout in milliseconds: 1..300 000."""
    return validate_int("timeout_ms", value, 1, 300_000)


def parse_id(value: int | str, field: str = "id") -> int:
    """A positive bigint id."""
    return validate_int(field, value, 1, 2**63 - 1)


def validate_text(field: str, value: str, max_length: int) -> str:
    """Free text (event-type object/description): bounded, no control characters."""
    if len(value) > max_length:
        raise ValidationError(field, f"longer than {max_length} characters")
    if _CONTROL_RE.search(value):
        raise ValidationError(field, "must not contain control characters")
    return value


def parse_since(raw: str, now: datetime) -> datetime:
    """``--since``: ISO 8601 (naive = local time) or a duration back from ``now`` (``2h``)."""
    text = raw.strip()
    match = _DURATION_RE.match(text)
    if match:
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        try:
            return now - timedelta(seconds=seconds)
        except OverflowError:
            raise ValidationError("since", f"duration {raw!r} is too long") from None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValidationError(
            "since", f"expected ISO 8601 time or a duration like 30m, 2h, 1d; got {raw!r}"
        ) from None
    return when if when.tzinfo is not None else when.astimezone()


def parse_duration(field: str, raw: str) -> int:
    """A duration like ``0``, ``90s``, ``30m``, ``24h``, ``7d`` in whole seconds."""
    text = raw.strip()
    if text == "0":
        return 0
    match = _DURATION_RE.match(text)
    if not match:
        raise ValidationError(field, f"expected a duration like 0, 30m, 24h, 7d; got {raw!r}")
    seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds > 365 * 86400:
        raise ValidationError(field, "longer than a year")
    return seconds
