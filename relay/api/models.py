"""The API's typed models: requests (strict, unknown fields refused) and answers.

Answers have the fields of the CLI's ``--json`` output (``subscription show --json``,
``delivery show --json``); FastAPI checks every answer against them, and the OpenAPI document
is generated from them. Validation rules are not written here: requests are only typed, and
the values go through :mod:`relay.admin.validation` via the admin operations.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

_REQUEST = ConfigDict(extra="forbid", strict=True)


class FieldError(BaseModel):
    """One bad field of a request."""

    field: str = Field(description="The request field (dotted for nested ones).")
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem detail (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = Field(
        default=None, description="On 422 (and malformed JSON): each bad field."
    )


class Health(BaseModel):
    """``GET /healthz``: the process answers and reaches its database."""

    status: Literal["ok"]


class SubscriptionCreate(BaseModel):
    """A new subscription. Only ``url`` is required; the rest default as in the CLI."""

    model_config = _REQUEST

    url: str = Field(description="Target URL, http or https.")
    method: str | None = Field(default=None, description="GET or POST (default POST).")
    headers: dict[str, str] | None = Field(
        default=None, description="Extra HTTP headers; their values are never shown again."
    )
    events: list[str] | None = Field(
        default=None, description="Event types or globs like 'order.*'; none = every type."
    )
    event_names: dict[str, str] | None = Field(
        default=None, description="eventType sent per event type (default: upper-cased)."
    )
    body_map: dict[str, str] | None = Field(
        default=None, description="Request body mapping: outputName → JSONPath."
    )
    secret: str | None = Field(
        default=None,
        description="A whsec_ signing secret, or 'generate' (the new one is shown once, here).",
    )
    tenant_id: str | None = Field(
        default=None, description="Operator keys only; a tenant key's subscriptions are its own."
    )
    max_retries: int | None = None
    backoff_ms: int | None = None
    timeout_ms: int | None = None
    enabled: bool | None = None
    ordered: bool | None = Field(
        default=None, description="Deliver events of one aggregate_id one at a time, in order."
    )


class SubscriptionPatch(BaseModel):
    """Changes to a subscription (JSON merge patch: an absent field is kept; in ``headers``
    and ``event_names`` a key set to null is removed; ``body_map``, ``secret`` and
    ``tenant_id`` set to null are cleared; ``events`` null or [] means every type)."""

    model_config = _REQUEST

    url: str | None = None
    method: str | None = None
    headers: dict[str, str | None] | None = None
    events: list[str] | None = None
    event_names: dict[str, str | None] | None = None
    body_map: dict[str, str] | None = None
    secret: str | None = None
    tenant_id: str | None = None
    max_retries: int | None = None
    backoff_ms: int | None = None
    timeout_ms: int | None = None
    enabled: bool | None = None
    ordered: bool | None = None


class Subscription(BaseModel):
    """A subscription as ``relay subscription show --json`` prints it (values masked)."""

    id: int
    url: str
    method: str
    headers: dict[str, str] = Field(description="Header names; every value is '***'.")
    events: list[str]
    event_names: dict[str, str]
    body_map: dict[str, Any] | None
    secret: str | None = Field(description="Masked, except once in the 201 of 'generate'.")
    tenant_id: str | None
    max_retries: int
    backoff_ms: int
    timeout_ms: int
    ordered: bool = Field(
        description="Events of one aggregate_id are delivered one at a time, in outbox id order."
    )
    enabled: bool
    removed_at: datetime | None
    created_at: datetime
    updated_at: datetime


class Attempt(BaseModel):
    """One HTTP attempt of a delivery."""

    attempt: int
    started_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float
    relay_id: str
    response_body: str | None
    response_truncated: bool | None


class Delivery(BaseModel):
    """A delivery as ``relay delivery list --json`` prints it."""

    id: int
    outbox_id: int
    subscription_id: int
    event_type: str
    tenant_id: str | None
    status: Literal["pending", "delivered", "dead"]
    attempts: int
    failures: int
    next_attempt_at: datetime | None = Field(description="Null while its subscription is paused.")
    lease_owner: str | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    delivered_at: datetime | None
    dead_at: datetime | None


class DeliveryDetail(Delivery):
    """A delivery as ``relay delivery show --json`` prints it: its event and every attempt."""

    event_id: UUID
    aggregate_id: str | None
    version: str
    payload: dict[str, Any]
    event_created_at: datetime
    attempt_history: list[Attempt]


class EventType(BaseModel):
    """One entry of the event-type catalog."""

    id: str
    name: str
    object: str
    description: str
    created_at: datetime


class SubscriptionPage(BaseModel):
    """One page of subscriptions, oldest first."""

    data: list[Subscription]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class DeliveryPage(BaseModel):
    """One page of deliveries, newest first."""

    data: list[Delivery]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null at the end."
    )


class EventTypePage(BaseModel):
    """The event-type catalog (one page)."""

    data: list[EventType]
    next_cursor: str | None


class PortalLinkCreate(BaseModel):
    """``POST /v1/portal-links``: a link that opens ``tenant``'s portal for ``ttl``."""

    model_config = _REQUEST

    tenant: str = Field(description="The tenant whose portal the link opens.")
    ttl: str = Field(default="1h", description="How long the link is valid: 90s, 15m, 2h, 1d.")
    base_url: str | None = Field(
        default=None,
        description="Where customers reach the portal (default: this API's address).",
    )


class PortalLink(BaseModel):
    """A portal link, shown once: the URL is the credential."""

    id: str = Field(description="The link's id, for `relay portal-link revoke`.")
    tenant_id: str
    url: str
    expires_at: datetime
