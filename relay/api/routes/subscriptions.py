"""``/v1/subscriptions``: list, create, show, change (merge patch), remove.

Every call goes through the admin operations with the key's tenant scope, so the CLI's rules
and the tenant rule hold here unchanged.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from relay import admin
from relay.admin import validation as v
from relay.api import changes as ch
from relay.api import cursor
from relay.api.auth import Context
from relay.api.models import Subscription, SubscriptionCreate, SubscriptionPage, SubscriptionPatch
from relay.api.routes import COMMON_ERRORS, error_responses

DEFAULT_PAGE = 100
MAX_PAGE = 1000
KIND = "s"

router = APIRouter(prefix="/v1/subscriptions", tags=["subscriptions"], responses=COMMON_ERRORS)
NOT_FOUND = error_responses(404)


def page(rows: list[dict[str, Any]], limit: int, kind: str) -> dict[str, Any]:
    """A list answer from ``limit + 1`` fetched rows: the extra row means there is more."""
    more = len(rows) > limit
    data = rows[:limit]
    return {"data": data, "next_cursor": cursor.encode(kind, data[-1]["id"]) if more else None}


@router.get("", response_model=SubscriptionPage, summary="List subscriptions")
def list_subscriptions(
    ctx: Context,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor_: Annotated[str | None, Query(alias="cursor", max_length=100)] = None,
    include_removed: bool = False,
) -> dict[str, Any]:
    """The key's subscriptions (all of them for an operator key), oldest first."""
    after = cursor.decode(KIND, cursor_)
    rows = admin.list_subscriptions(
        ctx.conn, include_removed, tenant=ctx.tenant, after=after, limit=limit + 1
    )
    return page(rows, limit, KIND)


@router.post(
    "",
    status_code=201,
    response_model=Subscription,
    summary="Create a subscription",
)
def create_subscription(ctx: Context, body: SubscriptionCreate, response: Response) -> Any:
    """Create a subscription; a tenant key's belongs to its tenant. With
    ``"secret": "generate"`` this answer is the only one that shows the new secret."""
    changes = ch.for_create(body)
    with ctx.conn.transaction():
        result = admin.add_subscription(ctx.conn, changes, tenant=ctx.tenant)
        row = admin.get_subscription(ctx.conn, result.id, tenant=ctx.tenant)
    if result.generated_secret:
        row["secret"] = result.generated_secret
    response.headers["Location"] = f"/v1/subscriptions/{result.id}"
    return row


@router.get(
    "/{subscription_id}",
    response_model=Subscription,
    responses=NOT_FOUND,
    summary="Show a subscription",
)
def get_subscription(ctx: Context, subscription_id: int) -> Any:
    """One subscription (removed ones too, with ``removed_at``)."""
    return admin.get_subscription(
        ctx.conn, v.parse_id(subscription_id, "subscription_id"), tenant=ctx.tenant
    )


@router.patch(
    "/{subscription_id}",
    response_model=Subscription,
    responses=NOT_FOUND,
    summary="Change a subscription",
)
def update_subscription(ctx: Context, subscription_id: int, body: SubscriptionPatch) -> Any:
    """Change the given fields (JSON merge patch); ``enabled: false`` pauses deliveries."""
    sub_id = v.parse_id(subscription_id, "subscription_id")
    with ctx.conn.transaction():
        current = admin.get_subscription(ctx.conn, sub_id, tenant=ctx.tenant)
        changes, enabled = ch.for_patch(body, current)
        generated = None
        if not changes.is_empty() or enabled is None:
            result = admin.update_subscription(ctx.conn, sub_id, changes, tenant=ctx.tenant)
            generated = result.generated_secret
        if enabled is not None:
            admin.set_enabled(ctx.conn, sub_id, enabled, tenant=ctx.tenant)
        row = admin.get_subscription(ctx.conn, sub_id, tenant=ctx.tenant)
    if generated:
        row["secret"] = generated
    return row


@router.delete(
    "/{subscription_id}",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
    summary="Remove a subscription",
)
def remove_subscription(ctx: Context, subscription_id: int) -> Response:
    """Soft-delete (``relay subscription remove``): its pending deliveries end dead, its
    history stays visible."""
    admin.remove_subscription(
        ctx.conn, v.parse_id(subscription_id, "subscription_id"), tenant=ctx.tenant
    )
    return Response(status_code=204)
