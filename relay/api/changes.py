"""Request bodies → :class:`relay.admin.SubscriptionChanges`, and every bad field at once.

The rules are the CLI's: each given field goes through its :mod:`relay.admin.validation`
function here only to report *every* bad field in one 422 (the admin operation stops at the
first); the admin operation then validates again and checks the event-type catalog. Nothing
is decided here that the CLI would decide differently.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from relay import admin
from relay.admin import validation as v
from relay.api.models import SubscriptionCreate, SubscriptionPatch
from relay.api.problems import ApiProblem, api_field
from relay.errors import ValidationError


def _event_names(names: Mapping[str, str]) -> None:
    for event_type, name in names.items():
        v.validate_event_name(event_type, name)


def _secret(secret: str) -> None:
    if secret != admin.GENERATE:
        v.validate_secret(secret)


_CHECKS: dict[str, Callable[[Any], object]] = {
    "url": v.validate_url,
    "method": v.validate_method,
    "headers": v.validate_headers,
    "events": v.validate_event_globs,
    "event_names": _event_names,
    "body_map": v.parse_body_map,
    "secret": _secret,
    "tenant_id": v.validate_tenant,
    "max_retries": v.validate_max_retries,
    "backoff_ms": v.validate_backoff_ms,
    "timeout_ms": v.validate_timeout_ms,
}


def check_fields(values: Mapping[str, Any]) -> None:
    """Raise one 422 naming every field of ``values`` that its CLI rule refuses."""
    errors: list[dict[str, str]] = []
    for name, value in values.items():
        check = _CHECKS.get(name)
        if check is None or value is None:
            continue
        try:
            check(value)
        except ValidationError as exc:
            errors.append({"field": api_field(exc.field), "message": exc.message})
    if errors:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise ApiProblem(422, detail, errors=errors)


def for_create(body: SubscriptionCreate) -> admin.SubscriptionChanges:
    """The admin request of a ``POST /v1/subscriptions``."""
    check_fields(body.model_dump(exclude_unset=True))
    changes = admin.SubscriptionChanges(
        url=body.url,
        method=body.method,
        headers=body.headers,
        events=body.events,
        event_names=body.event_names,
        body_map=body.body_map,
        secret=body.secret,
        tenant_id=body.tenant_id,
        max_retries=body.max_retries,
        backoff_ms=body.backoff_ms,
        timeout_ms=body.timeout_ms,
        enabled=body.enabled,
        ordered=body.ordered,
    )
    return changes


_NOT_NULL = ("url", "method", "max_retries", "backoff_ms", "timeout_ms", "enabled", "ordered")


def for_patch(
    body: SubscriptionPatch, current: Mapping[str, Any]
) -> tuple[admin.SubscriptionChanges, bool | None]:
    """The admin request of a ``PATCH`` (JSON merge patch over ``current``), and the
    ``enabled`` change, which goes through :func:`relay.admin.set_enabled` (it parks or wakes
    pending deliveries)."""
    given = body.model_fields_set
    nulls = [name for name in _NOT_NULL if name in given and getattr(body, name) is None]
    if nulls:
        errors = [{"field": name, "message": "must not be null"} for name in nulls]
        raise ApiProblem(422, "; ".join(f"{n}: must not be null" for n in nulls), errors=errors)
    headers_set = {k: x for k, x in (body.headers or {}).items() if x is not None}
    names_set = {k: x for k, x in (body.event_names or {}).items() if x is not None}
    check_fields(
        {
            "url": body.url,
            "method": body.method,
            "headers": headers_set or None,
            "events": body.events or None,
            "event_names": names_set or None,
            "body_map": body.body_map,
            "secret": body.secret,
            "tenant_id": body.tenant_id,
            "max_retries": body.max_retries,
            "backoff_ms": body.backoff_ms,
            "timeout_ms": body.timeout_ms,
        }
    )
    changes = admin.SubscriptionChanges(
        url=body.url,
        method=body.method,
        max_retries=body.max_retries,
        backoff_ms=body.backoff_ms,
        timeout_ms=body.timeout_ms,
        ordered=body.ordered,  # None (absent) keeps it; null is refused above
    )
    if "headers" in given:
        if body.headers is None:
            changes.clear_headers = list(current["headers"])
        else:
            changes.headers = headers_set or None
            changes.clear_headers = [k for k, x in body.headers.items() if x is None]
    if "events" in given:
        if body.events:
            changes.events = body.events
        else:
            changes.clear_events = True
    if "event_names" in given:
        if body.event_names is None:
            changes.clear_event_names = list(current["event_names"])
        else:
            changes.event_names = names_set or None
            changes.clear_event_names = [k for k, x in body.event_names.items() if x is None]
    if "body_map" in given:
        if body.body_map is None:
            changes.clear_body_map = True
        else:
            changes.body_map = body.body_map
    if "secret" in given:
        if body.secret is None:
            changes.clear_secret = True
        else:
            changes.secret = body.secret
    if "tenant_id" in given:
        if body.tenant_id is None:
            changes.clear_tenant = True
        else:
            changes.tenant_id = body.tenant_id
    return changes, body.enabled
