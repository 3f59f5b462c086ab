"""The API's routers, one module per resource; :func:`relay.api.app.create_app` mounts them."""

from __future__ import annotations

from typing import Any

from relay.api.models import Problem

_DESCRIPTIONS = {
    400: "Malformed request (e.g. JSON that does not parse).",
    401: "Missing, wrong or revoked API key.",
    403: "The key may not do this (an operator key is needed).",
    404: "No such object, or not one this key may see.",
    409: "The object's state does not allow it now (a delivery in flight).",
    413: "Request body over the size limit.",
    422: "Invalid input: `errors` names each bad field.",
    503: "The database is unavailable.",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI declarations of problem+json answers (the media type is set in app.py)."""
    return {code: {"model": Problem, "description": _DESCRIPTIONS[code]} for code in codes}


# Every authenticated operation can answer these.
COMMON_ERRORS = error_responses(400, 401, 413, 422, 503)
