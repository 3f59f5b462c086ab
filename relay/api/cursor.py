"""Opaque keyset cursors: ``next_cursor`` of one page, ``?cursor=`` of the next.

A cursor is base64url of ``<kind>:<id>``, the last id of the page: stable while rows are
added or change status (keyset, not offset). It carries no permission: a tampered cursor can
only move the position, and the tenant scope still applies to every row. A cursor that does
not decode, is of another list, or holds an id out of range is refused with 422.
"""

from __future__ import annotations

import base64
import binascii

from relay.admin import validation as v
from relay.errors import ValidationError

MAX_CURSOR = 100


def encode(kind: str, last_id: int) -> str:
    """The cursor after the row ``last_id`` of a ``kind`` list."""
    return base64.urlsafe_b64encode(f"{kind}:{last_id}".encode()).decode().rstrip("=")


def decode(kind: str, cursor: str | None) -> int | None:
    """The id a cursor of a ``kind`` list points after (None without a cursor)."""
    if cursor is None:
        return None
    bad = ValidationError("cursor", "invalid cursor: pass the next_cursor of a previous page")
    if not cursor or len(cursor) > MAX_CURSOR:
        raise bad
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise bad from None
    prefix, sep, raw = text.partition(":")
    if not sep or prefix != kind or not raw.isdigit():
        raise bad
    try:
        return v.parse_id(raw, "cursor")
    except ValidationError:
        raise bad from None
