"""``POST /v1/portal-links``: the application's "Webhooks" page asks for its customer's link.

Operator keys only: a link opens a tenant's portal, so handing one out is the platform's
decision, not the tenant's. The link's rules (TTL, signing, revocation) are the portal's own
(:mod:`relay.portal.links`), shared with ``relay portal-link``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from relay.api.auth import Context, Ctx
from relay.api.models import PortalLink, PortalLinkCreate
from relay.api.problems import ApiProblem
from relay.api.routes import COMMON_ERRORS, error_responses
from relay.portal import links

router = APIRouter(prefix="/v1/portal-links", tags=["portal"], responses=COMMON_ERRORS)


@router.post(
    "",
    status_code=201,
    response_model=PortalLink,
    responses=error_responses(403),
    summary="Create a link to a tenant's portal",
)
async def create_portal_link(
    ctx: Context, body: PortalLinkCreate, request: Request, response: Response
) -> Any:
    """A URL that opens ``tenant``'s portal in a browser until it expires (operator key).
    Redirect the customer to it; it is shown only in this answer."""
    base = body.base_url if body.base_url is not None else str(request.base_url).rstrip("/")

    def create(c: Ctx) -> tuple[str, dict[str, Any]]:
        if c.tenant is not None:
            raise ApiProblem(403, "portal links are created with an operator key")
        return links.create_portal_link_row(c.conn, body.tenant, body.ttl, base)

    url, row = await ctx.run(create)
    response.headers["Cache-Control"] = "no-store"
    return {
        "id": str(row["id"]),
        "tenant_id": body.tenant,
        "url": url,
        "expires_at": row["expires_at"],
    }
