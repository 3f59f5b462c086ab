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
from relay.api.auth import Context, Ctx
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
async def list_subscriptions(
    ctx: Context,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor_: Annotated[str | None, Query(alias="cursor", max_length=100)] = None,
    include_removed: bool = False,
) -> dict[str, Any]:
    """The key's subscriptions (all of them for an operator key), oldest first."""

    def list_page(c: Ctx) -> dict[str, Any]:
        after = cursor.decode(KIND, cursor_)
        rows = admin.list_subscriptions(
            c.conn, include_removed, tenant=c.tenant, after=after, limit=limit + 1
        )
        return page(rows, limit, KIND)

    return await ctx.run(list_page)


@router.post(
    "",
    status_code=201,
    response_model=Subscription,
    summary="Create a subscription",
)
async def create_subscription(ctx: Context, body: SubscriptionCreate, response: Response) -> Any:
    """Create a subscription; a tenant key's belongs to its tenant. With
    ``"secret": "generate"`` this answer is the only one that shows the new secret."""

    def create(c: Ctx) -> tuple[admin.SubscriptionResult, dict[str, Any]]:
        changes = ch.for_create(body)
        with c.conn.transaction():
            result = admin.add_subscription(c.conn, changes, tenant=c.tenant)
            return result, admin.get_subscription(c.conn, result.id, tenant=c.tenant)

    result, row = await ctx.run(create)
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
async def get_subscription(ctx: Context, subscription_id: int) -> Any:
    """One subscription (removed ones too, with ``removed_at``)."""
    return await ctx.run(
        lambda c: admin.get_subscription(
            c.conn, v.parse_id(subscription_id, "subscription_id"), tenant=c.tenant
        )
    )


@router.patch(
    "/{subscription_id}",
    response_model=Subscription,
    responses=NOT_FOUND,
    summary="Change a subscription",
)
async def update_subscription(ctx: Context, subscription_id: int, body: SubscriptionPatch) -> Any:
    """Change the given fields (JSON merge patch); ``enabled: false`` pauses deliveries."""

    def update(c: Ctx) -> dict[str, Any]:
        sub_id = v.parse_id(subscription_id, "subscription_id")
        with c.conn.transaction():
            current = admin.get_subscription(c.conn, sub_id, tenant=c.tenant)
            changes, enabled = ch.for_patch(body, current)
            generated = None
            if not changes.is_empty() or enabled is None:
                result = admin.update_subscription(c.conn, sub_id, changes, tenant=c.tenant)
                generated = result.generated_secret
            if enabled is not None:
                admin.set_enabled(c.conn, sub_id, enabled, tenant=c.tenant)
            row = admin.get_subscription(c.conn, sub_id, tenant=c.tenant)
        if generated:
            row["secret"] = generated
        return row

    return await ctx.run(update)


@router.delete(
    "/{subscription_id}",
    status_code=204,
    response_class=Response,
    responses=NOT_FOUND,
    summary="Remove a subscription",
)
async def remove_subscription(ctx: Context, subscription_id: int) -> Response:
    """Soft-delete (``relay subscription remove``): its pending deliveries end dead, its
    history stays visible."""
    await ctx.run(
        lambda c: admin.remove_subscription(
            c.conn, v.parse_id(subscription_id, "subscription_id"), tenant=c.tenant
        )
    )
    return Response(status_code=204)
