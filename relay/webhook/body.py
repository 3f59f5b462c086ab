"""Turning an outbox row into the request a subscriber receives.

The default body (the *notification*, a contract) is
``{"eventType": <name>, "version": <version>, ...payload}``. A subscription may reshape it
with a *body map*: ``{"outputName": "<JSONPath>"}`` evaluated against the notification.
GET subscriptions receive the (mapped) notification as query parameters instead of a body.

Everything here is pure: no clock, no I/O, so the deliverer can call it per attempt and tests
can pin every case.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

# jsonpath_ng.ext.parse, imported from its module because the package does not re-export it
# for type checkers. The ext dialect adds filters ([?(@.x > 1)]), len, sorted and arithmetic.
from jsonpath_ng.ext.parser import parse as _jsonpath_parse
from jsonpath_ng.jsonpath import JSONPath

from relay.errors import MappingError, ValidationError

__all__ = [
    "BodyMap",
    "build_notification",
    "compile_body_map_cached",
    "default_name",
    "dumps",
    "encode_query",
]

_FIELD = "body_map"

# (output name split on dots, JSONPath text, compiled JSONPath)
_Entry = tuple[tuple[str, ...], str, JSONPath]


def default_name(event_type: str) -> str:
    """The ``eventType`` sent when a subscription has no override: ``order.created`` →
    ``ORDER.CREATED``."""
    return event_type.upper()


def build_notification(
    event_type: str,
    version: str,
    payload: Mapping[str, Any],
    event_names: Mapping[str, str],
) -> dict[str, Any]:
    """The default notification object for one event and one subscription.

    ``{"eventType": name, "version": version, ...payload}`` where ``name`` is
    ``event_names[event_type]`` if the subscription overrides it, else
    :func:`default_name`. ``eventType`` and ``version`` set by relay *win* over payload keys
    of the same name (a payload ``"eventType"`` or ``"version"`` is dropped), so receivers
    can always trust those two fields. ``eventType`` and ``version`` come first.
    """
    name = event_names[event_type] if event_type in event_names else default_name(event_type)
    # One dict display instead of a loop over the payload's keys (about 0.6 us of a delivery,
    # timeit). A payload "eventType" or "version" keeps the first position but would
    # overwrite relay's value: put relay's back.
    notification: dict[str, Any] = {"eventType": name, "version": version, **payload}
    if "eventType" in payload or "version" in payload:
        notification["eventType"] = name
        notification["version"] = version
    return notification


def dumps(obj: Any) -> str:
    """Compact JSON text (``separators=(",", ":")``, UTF-8 kept as is) for POST bodies.

    NaN and infinities are refused (``ValueError``): they are not JSON and jsonb cannot hold
    them, so one appearing means a bug upstream, not something to send to a receiver.
    """
    return "".join(_ENCODE(obj, 0))


# The C encoder behind json.JSONEncoder(separators=(",", ":"), ensure_ascii=False,
# allow_nan=False).encode, built once: encode() builds one per call, with two Python layers
# around it (about 0.7 us of a delivery, timeit). No circular-reference check (markers=None):
# what is sent comes from decoded JSON, which has no cycles; a cycle would end in
# RecursionError, which the sender reports like any body it cannot build.
_ENCODE = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None,
    json.JSONEncoder().default,
    json.encoder.encode_basestring,
    None,
    ":",
    ",",
    False,
    False,
    False,
)


def _query_value(value: Any) -> str:
    # Strings go as-is (no JSON quotes) because that is what a receiver reading a query
    # parameter expects; everything else is its JSON text, so types stay recoverable.
    if isinstance(value, str):
        return value
    return dumps(value)


def encode_query(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query parameters for a GET delivery, in the body's key order.

    Strings are sent as-is; numbers, booleans and null as their JSON text (``1.5``, ``true``,
    ``null``); objects and arrays as compact JSON text.
    """
    return [(str(key), _query_value(value)) for key, value in body.items()]


@functools.lru_cache(maxsize=1024)
def _parse_path(path: str) -> JSONPath:
    # Parsing builds a small parser per call; subscriptions repeat the same few paths.
    return _jsonpath_parse(path)


class BodyMap:
    """A compiled body map: output name → JSONPath over the notification.

    Build one with :meth:`compile` (which validates) and apply it with :meth:`apply`.
    Instances are immutable and safe to share between tasks.
    """

    __slots__ = ("_entries", "_source")

    def __init__(self, entries: tuple[_Entry, ...], source: dict[str, str]) -> None:
        # Use BodyMap.compile(); this constructor trusts its input.
        self._entries = entries
        self._source = source

    @property
    def source(self) -> dict[str, str]:
        """The mapping this was compiled from (a copy), e.g. for ``subscription show``."""
        return dict(self._source)

    def __repr__(self) -> str:
        return f"BodyMap({self._source!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BodyMap) and self._source == other._source

    def __hash__(self) -> int:
        return hash(tuple(self._source.items()))

    @classmethod
    def compile(cls, mapping: Mapping[str, str]) -> BodyMap:
        """Validate ``mapping`` and compile its JSONPaths.

        Raises :class:`ValidationError` (field ``body_map``) when ``mapping`` is not an
        object, a path is not a string or not valid JSONPath, an output name is empty or has
        an empty segment (``a..b``), or two names conflict (``a`` and ``a.b``: one would
        have to be both a value and an object).
        """
        if not isinstance(mapping, Mapping):
            raise ValidationError(_FIELD, "must be a JSON object of outputName → JSONPath")
        entries: list[_Entry] = []
        source: dict[str, str] = {}
        for name, path in mapping.items():
            if not isinstance(name, str):
                raise ValidationError(_FIELD, f"output name {name!r} is not a string")
            if name == "":
                raise ValidationError(_FIELD, "output names must not be empty")
            if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
                # jsonb cannot hold NUL, and no receiver wants control characters in keys.
                raise ValidationError(_FIELD, f"output name {name!r} has a control character")
            segments = tuple(name.split("."))
            if "" in segments:
                raise ValidationError(_FIELD, f"output name {name!r} has an empty segment")
            if not isinstance(path, str):
                raise ValidationError(
                    _FIELD, f"path for {name!r} must be a string, not {type(path).__name__}"
                )
            try:
                expr = _parse_path(path)
            except Exception as exc:
                # jsonpath-ng raises a mix of lexer/parser errors (and, on odd input, plain
                # Python errors from ply); all mean the same thing to the user.
                raise ValidationError(
                    _FIELD, f"path for {name!r} is not valid JSONPath: {path!r} ({exc})"
                ) from None
            entries.append((segments, path, expr))
            source[name] = path
        _check_conflicts(entries)
        return cls(tuple(entries), source)

    def apply(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Evaluate every path against ``doc`` (the default notification).

        No match omits the property, one match gives that value, several matches give a list
        of the values. Dotted output names build nested objects. Values are shared with
        ``doc``, not copied. Evaluation failures raise :class:`MappingError`.
        """
        result: dict[str, Any] = {}
        for segments, path, expr in self._entries:
            try:
                values = [match.value for match in expr.find(doc)]
            except Exception as exc:
                raise MappingError(
                    f"body map path {path!r} for {'.'.join(segments)!r} failed: {exc}"
                ) from exc
            if not values:
                continue
            target = result
            for segment in segments[:-1]:
                # compile() ruled out "a" next to "a.b", so this is always a dict we made.
                target = target.setdefault(segment, {})
            target[segments[-1]] = values[0] if len(values) == 1 else values
        return result


def _check_conflicts(entries: list[_Entry]) -> None:
    names = {segments for segments, _, _ in entries}
    for segments, _, _ in entries:
        for depth in range(1, len(segments)):
            prefix = segments[:depth]
            if prefix in names:
                raise ValidationError(
                    _FIELD,
                    f"output names {'.'.join(prefix)!r} and {'.'.join(segments)!r} conflict "
                    "(one would be both a value and an object)",
                )


@functools.lru_cache(maxsize=1024)
def compile_body_map_cached(mapping_json: str) -> BodyMap:
    """:meth:`BodyMap.compile` of a JSON text, cached (the deliverer calls this per delivery
    with the subscription's stored ``body_map``). Bad JSON raises :class:`ValidationError`."""
    try:
        mapping = json.loads(mapping_json)
    except (TypeError, ValueError) as exc:
        raise ValidationError(_FIELD, f"not valid JSON: {exc}") from None
    return BodyMap.compile(mapping)
