"""``/v1/deliveries``: the history of the key's subscriptions, and replay."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from pydantic_core import to_json

from relay import admin
from relay.admin import validation as v
from relay.api import cursor
from relay.api.auth import Context, Ctx
from relay.api.models import DeliveryDetail, DeliveryPage
from relay.api.routes import COMMON_ERRORS, error_responses
from relay.api.routes.subscriptions import DEFAULT_PAGE, MAX_PAGE, page

KIND = "d"

router = APIRouter(prefix="/v1/deliveries", tags=["deliveries"], responses=COMMON_ERRORS)


@router.get("", response_model=DeliveryPage, summary="List deliveries")
async def list_deliveries(
    ctx: Context,
    status: Annotated[str | None, Query(description="pending, delivered or dead")] = None,
    subscription_id: int | None = None,
    event_type: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
    cursor_: Annotated[str | None, Query(alias="cursor", max_length=100)] = None,
) -> Response:
    """Deliveries of the key's subscriptions, newest first, filtered by every given field."""

    def list_page(c: Ctx) -> bytes:
        before = cursor.decode(KIND, cursor_)
        sub_id = None if subscription_id is None else v.parse_id(subscription_id, "subscription_id")
        rows = admin.list_deliveries(
            c.conn,
            status=status,
            subscription_id=sub_id,
            event_type=event_type,
            limit=limit + 1,
            tenant=c.tenant,
            before=before,
        )
        # The dashboard's most frequent request, a page of up to 1000 rows: serialized
        # straight from the rows, without FastAPI validating each into a Delivery first (half
        # the CPU of the answer). The query's columns are the model's fields, in its order,
        # each of its JSON type, so the bytes are the ones DeliveryPage would give (a test
        # holds the answers to that).
        return to_json(page(rows, limit, KIND))

    return Response(await ctx.run(list_page), media_type="application/json")


@router.get(
    "/{delivery_id}",
    response_model=DeliveryDetail,
    responses=error_responses(404),
    summary="Show a delivery with its attempts",
)
async def get_delivery(ctx: Context, delivery_id: int) -> Any:
    """One delivery, its event and every attempt (``attempt_history``)."""
    return await ctx.run(
        lambda c: admin.get_delivery(
            c.conn, v.parse_id(delivery_id, "delivery_id"), tenant=c.tenant
        )
    )


@router.post(
    "/{delivery_id}/replay",
    status_code=202,
    response_model=DeliveryDetail,
    responses=error_responses(404, 409),
    summary="Replay a delivery",
)
async def replay_delivery(ctx: Context, delivery_id: int) -> Any:
    """Give the delivery a fresh retry budget, due now (``relay replay``); its history is
    kept. A delivery in flight is refused with 409 rather than sent twice."""

    def replay(c: Ctx) -> dict[str, Any]:
        d_id = v.parse_id(delivery_id, "delivery_id")
        with c.conn.transaction():
            admin.replay(c.conn, [d_id], tenant=c.tenant)
            return admin.get_delivery(c.conn, d_id, tenant=c.tenant)

    return await ctx.run(replay)
