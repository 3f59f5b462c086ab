"""Subscription management: add, update, list, show, enable/disable, remove.

Every write validates all of its input first and then runs in one transaction, so a refused
command changes nothing. Listings never carry secrets or header values: they are masked here,
at the source, so no caller can print them by accident. With ``RELAY_ENCRYPTION_KEY`` set,
secrets and header values are stored encrypted (:mod:`relay.crypto`): sealed in
:func:`_params`, opened only where an update merges into the stored ones.

Tenant scope: every operation takes a keyword-only ``tenant``. ``None`` (the CLI, operator
API keys) sees everything; a tenant id limits it to that tenant's subscriptions, and another
tenant's subscription raises :class:`NotFound` with the same message, from the same
statement, as one that does not exist. The HTTP API (``relay.api``) and the tenant portal
share this one rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg.types.json import Jsonb

from relay import crypto
from relay.admin import validation as v
from relay.admin.db import Conn, db_errors, execute, fetch_all, fetch_one
from relay.errors import NotFound, ValidationError
from relay.masking import mask_url
from relay.webhook.signing import mask_secret

MASKED_HEADER_VALUE = "***"
GENERATE = "generate"  # --secret generate: relay makes one and shows it once
# Rotation: after `update --secret`, the replaced secret also signs for this long (a second
# v1 signature), so receivers can switch without dropping a webhook.
DEFAULT_SECRET_OVERLAP_S = 24 * 3600


@dataclass
class SubscriptionChanges:
    """Requested subscription fields; None / empty means "not given".

    For :func:`add_subscription` these are the new subscription's fields. For
    :func:`update_subscription`, ``headers`` and ``event_names`` merge into the existing ones
    (after ``clear_headers`` / ``clear_event_names`` are removed) and every other given field
    replaces the stored value.
    """

    url: str | None = None
    method: str | None = None
    headers: Mapping[str, str] | None = None
    clear_headers: Sequence[str] = ()
    events: Sequence[str] | None = None
    clear_events: bool = False
    event_names: Mapping[str, str] | None = None
    clear_event_names: Sequence[str] = ()
    body_map: Mapping[str, Any] | str | None = None
    clear_body_map: bool = False
    secret: str | None = None  # a whsec_ secret, or GENERATE
    clear_secret: bool = False
    tenant_id: str | None = None
    clear_tenant: bool = False
    max_retries: int | str | None = None
    backoff_ms: int | str | None = None
    timeout_ms: int | str | None = None
    enabled: bool | None = None
    #: deliveries of one aggregate one at a time, in outbox id order (None = unchanged)
    ordered: bool | None = None
    # update with a new secret: the replaced one keeps signing this long (None = default)
    secret_overlap_s: int | None = None

    def is_empty(self) -> bool:
        """Whether nothing at all was requested."""
        # `is`, not `==`: max_retries=0 is a real change although 0 == False.
        # `enabled=False` (--disabled) and `ordered=False` (--unordered) are changes, unlike
        # the other flags' False.
        return (
            self.enabled is None
            and self.ordered is None
            and all(
                value is None or value is False or (isinstance(value, list | tuple) and not value)
                for key, value in vars(self).items()
                if key not in ("enabled", "ordered")
            )
        )


@dataclass
class SubscriptionResult:
    """What an add/update did: the id, and a generated secret to show once (else None)."""

    id: int
    generated_secret: str | None = None
    changed: list[str] = field(default_factory=list)


_DEFAULTS: dict[str, Any] = {
    "url": None,
    "method": "POST",
    "headers": {},
    "events": [],
    "event_names": {},
    "body_map": None,
    "secret": None,
    "tenant_id": None,
    "max_retries": 3,
    "backoff_ms": 5000,
    "timeout_ms": 10000,
    "ordered": False,
    "enabled": True,
}


def _check_conflicts(c: SubscriptionChanges) -> None:
    pairs = [
        ("event", c.events is not None and c.clear_events, "--event with --clear-events"),
        ("body_map", c.body_map is not None and c.clear_body_map, "--body-map, --clear-body-map"),
        ("secret", c.secret is not None and c.clear_secret, "--secret with --clear-secret"),
        ("tenant", c.tenant_id is not None and c.clear_tenant, "--tenant with --clear-tenant"),
    ]
    for name, clash, what in pairs:
        if clash:
            raise ValidationError(name, f"cannot combine {what}")
    set_names = {n.lower() for n in (c.headers or {})}
    both = [n for n in c.clear_headers if n.lower() in set_names]
    if both:
        raise ValidationError("header", f"{both[0]!r} is both set and cleared")
    named = set(c.event_names or {})
    both = [t for t in c.clear_event_names if t in named]
    if both:
        raise ValidationError("event_name", f"{both[0]!r} is both set and cleared")


def _check_event_types(conn: Conn, globs: Sequence[str], names: Mapping[str, str]) -> None:
    known = [row["name"] for row in fetch_all(conn, "admin_event_type_names")]
    known_set = set(known)
    for pattern in globs:
        if v.is_glob(pattern):
            if not any(v.glob_matches(pattern, name) for name in known):
                raise ValidationError("event", f"glob {pattern!r} matches no known event type")
        elif pattern not in known_set:
            raise ValidationError(
                "event", f"unknown event type {pattern!r} (see `relay event-type list`)"
            )
    for event_type in names:
        if event_type not in known_set:
            raise ValidationError(
                "event_name", f"unknown event type {event_type!r} (see `relay event-type list`)"
            )


def _merged(conn: Conn, c: SubscriptionChanges, current: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``c`` and apply it to ``current``: the full row to store."""
    _check_conflicts(c)
    row = dict(current)
    if c.url is not None:
        row["url"] = v.validate_url(c.url)
    if c.method is not None:
        row["method"] = v.validate_method(c.method)

    headers = dict(row["headers"])
    for name in c.clear_headers:
        matches = [n for n in headers if n.lower() == name.lower()]
        if not matches:
            raise ValidationError("header", f"cannot clear {name!r}: no such header")
        for match in matches:
            del headers[match]
    if c.headers is not None:
        headers = v.validate_headers({**headers, **c.headers})
    row["headers"] = headers

    if c.clear_events:
        row["events"] = []
    elif c.events is not None:
        row["events"] = v.validate_event_globs(c.events)

    event_names = dict(row["event_names"])
    for event_type in c.clear_event_names:
        if event_names.pop(event_type, None) is None:
            raise ValidationError("event_name", f"cannot clear {event_type!r}: no name set")
    new_names = dict(v.validate_event_name(t, n) for t, n in (c.event_names or {}).items())
    event_names.update(new_names)
    row["event_names"] = event_names

    if c.clear_body_map:
        row["body_map"] = None
    elif c.body_map is not None:
        row["body_map"] = v.parse_body_map(c.body_map)

    if c.clear_secret:
        row["secret"] = None
    elif c.secret is not None:
        row["secret"] = v.generate_secret() if c.secret == GENERATE else v.validate_secret(c.secret)

    if c.clear_tenant:
        row["tenant_id"] = None
    elif c.tenant_id is not None:
        row["tenant_id"] = v.validate_tenant(c.tenant_id)

    if c.max_retries is not None:
        row["max_retries"] = v.validate_max_retries(c.max_retries)
    if c.backoff_ms is not None:
        row["backoff_ms"] = v.validate_backoff_ms(c.backoff_ms)
    if c.timeout_ms is not None:
        row["timeout_ms"] = v.validate_timeout_ms(c.timeout_ms)
    if c.enabled is not None:
        row["enabled"] = bool(c.enabled)
    if c.ordered is not None:
        row["ordered"] = bool(c.ordered)

    # Only newly given types are checked against the catalog: a stored glob whose event type
    # was later removed must not block an unrelated update.
    new_globs = row["events"] if c.events is not None and not c.clear_events else []
    _check_event_types(conn, new_globs, new_names)
    return row


def _params(row: Mapping[str, Any], keyring: crypto.Keyring | None) -> dict[str, Any]:
    params = dict(row)
    params["headers"] = Jsonb(crypto.seal_headers(row["headers"], keyring))
    params["secret"] = crypto.seal_value(row["secret"], keyring)
    params["event_names"] = Jsonb(row["event_names"])
    params["events"] = list(row["events"])
    params["body_map"] = None if row["body_map"] is None else Jsonb(row["body_map"])
    return params


def _notify(conn: Conn, subscription_id: int) -> None:
    execute(conn, "admin_notify_subscriptions", {"id": subscription_id})


def _check_tenant_scope(changes: SubscriptionChanges, tenant: str | None) -> None:
    """A tenant-scoped caller may only keep its subscriptions in its own tenant."""
    if tenant is None:
        return
    if changes.clear_tenant or (changes.tenant_id is not None and changes.tenant_id != tenant):
        raise ValidationError("tenant", f"a key of tenant {tenant!r} can only use that tenant")


def add_subscription(
    conn: Conn, changes: SubscriptionChanges, *, tenant: str | None = None
) -> SubscriptionResult:
    """Create a subscription; return its id (and the secret, if one was generated).

    With ``tenant`` (scoped caller) the subscription belongs to that tenant, and asking for
    another one is a :class:`ValidationError`. Raises :class:`ValidationError` naming the field
    for any bad input; nothing is written.
    """
    _check_tenant_scope(changes, tenant)
    if tenant is not None:
        changes = dataclasses.replace(changes, tenant_id=tenant)
    if changes.url is None:
        raise ValidationError("url", "is required")
    clears = (
        changes.clear_headers,
        changes.clear_events,
        changes.clear_event_names,
        changes.clear_body_map,
        changes.clear_secret,
        changes.clear_tenant,
    )
    if any(clears):
        raise ValidationError("options", "--clear-* options only apply to `update`")
    keyring = crypto.load_keyring()
    with db_errors(), conn.transaction():
        row = _merged(conn, changes, _DEFAULTS)
        created = fetch_one(conn, "admin_subscription_insert", _params(row, keyring))
        assert created is not None
        new_id = int(created["id"])
        _notify(conn, new_id)
    generated = row["secret"] if changes.secret == GENERATE else None
    return SubscriptionResult(new_id, generated)


def _locked(conn: Conn, subscription_id: int, tenant: str | None = None) -> dict[str, Any]:
    row = fetch_one(conn, "admin_subscription_lock", {"id": subscription_id, "tenant": tenant})
    if row is None:
        raise NotFound(f"subscription {subscription_id} not found")
    if row["removed_at"] is not None:
        raise NotFound(f"subscription {subscription_id} was removed")
    return row


def update_subscription(
    conn: Conn, subscription_id: int, changes: SubscriptionChanges, *, tenant: str | None = None
) -> SubscriptionResult:
    """Change a subscription's fields (see :class:`SubscriptionChanges` for merge rules).

    Raises :class:`NotFound` for an unknown or removed id (or another tenant's, with
    ``tenant``) and :class:`ValidationError` for bad input; either way nothing is written.
    """
    if changes.is_empty():
        raise ValidationError("options", "nothing to update: give at least one option")
    _check_tenant_scope(changes, tenant)
    keyring = crypto.load_keyring()
    with db_errors(), conn.transaction():
        current = _locked(conn, subscription_id, tenant)
        # Merged and compared in plain text; every credential is sealed afresh on write.
        current["headers"] = crypto.open_headers(current["headers"], keyring)
        current["secret"] = crypto.open_value(current["secret"], keyring)
        row = _merged(conn, changes, current)
        params = _params(row, keyring)
        overlap_s = (
            DEFAULT_SECRET_OVERLAP_S
            if changes.secret_overlap_s is None
            else changes.secret_overlap_s
        )
        if row["tenant_id"] is not None and row["tenant_id"] != current["tenant_id"]:
            # Isolation: the pending work of other tenants' events must not go to the new
            # tenant's endpoint. Refused rather than silently killed: the operator decides.
            foreign = fetch_one(
                conn,
                "admin_subscription_foreign_pending",
                {"id": subscription_id, "tenant_id": row["tenant_id"]},
            )
            if foreign is not None and foreign["n"]:
                raise ValidationError(
                    "tenant",
                    f"subscription {subscription_id} has {foreign['n']} pending deliveries of "
                    f"events that are not tenant {row['tenant_id']!r}'s; let them finish (or "
                    "disable the subscription and remove it) before changing its tenant",
                )
        params["overlap_s"] = overlap_s
        # Decided here, not in SQL: ciphertexts of one secret differ on every write.
        rotate = (
            row["secret"] is not None
            and current["secret"] is not None
            and row["secret"] != current["secret"]
            and overlap_s > 0
        )
        params["rotate"] = rotate
        params["previous_secret"] = (
            crypto.seal_value(current["secret"], keyring) if rotate else None
        )
        execute(conn, "admin_subscription_update", params)
        if row["enabled"] != current["enabled"]:
            execute(conn, "admin_subscription_park", {"id": subscription_id})
        if row["ordered"] != current["ordered"]:
            _reorder_pending(conn, subscription_id, bool(row["ordered"]))
        _notify(conn, subscription_id)
    changed = sorted(k for k in _DEFAULTS if row[k] != current[k])
    generated = row["secret"] if changes.secret == GENERATE else None
    return SubscriptionResult(subscription_id, generated, changed)


def _reorder_pending(conn: Conn, subscription_id: int, ordered: bool) -> None:
    """A switch to ordered parks the waiting deliveries held back by an earlier one of their
    aggregate (in flight ones finish as they started); a switch to unordered makes the parked
    ones due."""
    if ordered:
        execute(conn, "admin_ordered_park", {"ids": [subscription_id]})
    else:
        execute(conn, "admin_ordered_unpark", {"id": subscription_id})
    execute(conn, "admin_notify_deliveries")


def set_enabled(
    conn: Conn, subscription_id: int, enabled: bool, *, tenant: str | None = None
) -> None:
    """Enable or disable a subscription (a disabled one gets no new deliveries and its
    pending ones wait). :class:`NotFound` as for :func:`update_subscription`."""
    with db_errors(), conn.transaction():
        _locked(conn, subscription_id, tenant)
        execute(conn, "admin_subscription_set_enabled", {"id": subscription_id, "enabled": enabled})
        # A statement of its own: it sees the deliveries a dispatch that held the row created.
        execute(conn, "admin_subscription_park", {"id": subscription_id})
        _notify(conn, subscription_id)


def remove_subscription(conn: Conn, subscription_id: int, *, tenant: str | None = None) -> int:
    """Soft-delete a subscription; its pending deliveries end ``dead``. Returns how many.

    The row and its delivery history stay (``subscription show`` and ``delivery list`` still
    see them); ``subscription list`` hides it unless asked for all. :class:`NotFound` as for
    :func:`update_subscription`.
    """
    with db_errors(), conn.transaction():
        _locked(conn, subscription_id, tenant)
        execute(conn, "admin_subscription_remove", {"id": subscription_id})
        killed = execute(conn, "admin_subscription_kill_pending", {"id": subscription_id})
        _notify(conn, subscription_id)
    return killed


def masked(row: Mapping[str, Any]) -> dict[str, Any]:
    """A subscription row as shown to operators: secret, header values and URL
    credentials masked."""
    out = dict(row)
    out["url"] = mask_url(row["url"], hide_user=True)
    out["headers"] = {name: MASKED_HEADER_VALUE for name in row["headers"]}
    out["secret"] = mask_secret(row["secret"])
    out["events"] = list(row["events"])
    return out


def list_subscriptions(
    conn: Conn,
    include_removed: bool = False,
    *,
    tenant: str | None = None,
    after: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Every subscription (masked), oldest first; removed ones only with ``include_removed``.

    ``tenant`` limits it to that tenant's; ``after`` (an id) and ``limit`` give one keyset page.
    """
    params = {"all": include_removed, "tenant": tenant, "after": after, "limit": limit}
    with db_errors():
        rows = fetch_all(conn, "admin_subscription_list", params)
    return [masked(row) for row in rows]


def get_subscription(
    conn: Conn, subscription_id: int, *, tenant: str | None = None
) -> dict[str, Any]:
    """One subscription (masked), removed or not; :class:`NotFound` if it never existed (or,
    with ``tenant``, belongs to another tenant: the same error)."""
    params = {"id": subscription_id, "tenant": tenant}
    with db_errors():
        row = fetch_one(conn, "admin_subscription_get", params)
    if row is None:
        raise NotFound(f"subscription {subscription_id} not found")
    return masked(row)
