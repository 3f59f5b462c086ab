"""The customer portal: a tenant manages its webhooks and sees every attempt, in a browser.

Mounted by the HTTP API (``app.include_router(create_router(...))``); all routes live under
``/portal/``. A tenant gets in through a signed, expiring, revocable link made by
:func:`relay.portal.links.create_portal_link` (``relay portal-link``). Pages are server-rendered
Jinja2 with htmx for the live body preview; see docs/operating.md for cookies and TLS.

FastAPI is imported lazily, so ``relay portal-link`` (which only needs :mod:`.links`) stays
as light as the other CLI commands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import APIRouter
    from psycopg_pool import ConnectionPool

__all__ = ["create_pool", "create_router"]


def create_pool(database_url: str, max_size: int = 8) -> ConnectionPool[Any]:
    """A connection pool for the portal: autocommit connections, as relay.admin expects.

    Synchronous on purpose: relay.admin is synchronous psycopg, and FastAPI runs the portal's
    plain ``def`` handlers in its thread pool. The caller opens and closes it.
    """
    from psycopg_pool import ConnectionPool

    from relay.pgprepare import prepare_kwargs

    return ConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        kwargs={"autocommit": True, **prepare_kwargs()},
        open=False,
        name="relay-portal",
    )


def create_router(pool: ConnectionPool[Any]) -> APIRouter:
    """The portal's routes (``/portal/...``) over ``pool`` (see :func:`create_pool`).

    Security headers, error pages, sessions and CSRF checks are part of the router itself,
    so they hold in whatever application includes it.
    """
    from fastapi import APIRouter

    from relay.portal.routes import add_routes
    from relay.portal.web import Portal, PortalRoute

    # One route class per router, carrying its pool: no module-level state, so two portals
    # (two databases) could live in one process.
    route_class = type("PortalRoute", (PortalRoute,), {"portal": Portal(pool)})
    router = APIRouter(route_class=route_class)
    add_routes(router)
    return router
