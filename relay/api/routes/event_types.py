"""``GET /v1/event-types``: the catalog (the same for every key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from relay import admin
from relay.api.auth import Context
from relay.api.models import EventTypePage
from relay.api.routes import COMMON_ERRORS

router = APIRouter(prefix="/v1/event-types", tags=["event types"], responses=COMMON_ERRORS)


@router.get("", response_model=EventTypePage, summary="List the event types")
async def list_event_types(ctx: Context) -> dict[str, Any]:
    """Every event type a subscription can name. The catalog is small: one page."""
    return {"data": await ctx.run(lambda c: admin.list_event_types(c.conn)), "next_cursor": None}
