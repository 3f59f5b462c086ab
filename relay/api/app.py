"""The ASGI application of ``relay api``: :func:`create_app` wires routers, errors, limits.

The admin operations are synchronous psycopg code shared with the CLI; the routes are
``async def`` and run them in a worker thread (:meth:`relay.api.auth.Ctx.run`, one hop per
request), on a connection of a ``psycopg_pool.ConnectionPool``. One set of operations and
rules, no async copy to keep in step.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from relay import __version__
from relay.api.auth import check_pending_key
from relay.api.limits import BodyLimitMiddleware
from relay.api.metrics import ApiMetrics, MetricsMiddleware
from relay.api.models import Health
from relay.api.problems import PROBLEM_JSON, ApiProblem, install
from relay.api.routes import (
    deliveries,
    error_responses,
    event_types,
    portal_links,
    subscriptions,
)

DEFAULT_MAX_BODY = 1024 * 1024

DESCRIPTION = """\
Subscribe to webhooks, inspect deliveries and replay them.

Authenticate with `Authorization: Bearer <key>` (keys from `relay api-key create`). A key
with a tenant sees and changes only that tenant's subscriptions and their deliveries; any
other object answers 404 exactly as a missing one. Errors are RFC 9457
`application/problem+json`; 422 lists each bad field in `errors`. Lists answer
`{"data": [...], "next_cursor": ...}`: pass `next_cursor` as `?cursor=` for the next page.
"""


def _routers() -> list[APIRouter]:
    # The one place the JSON routers are mounted (the portal's pages are added in create_app:
    # they need the pool, and stay out of the OpenAPI document).
    return [event_types.router, subscriptions.router, deliveries.router, portal_links.router]


def create_app(
    pool: ConnectionPool[Any] | None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    metrics: ApiMetrics | None = None,
) -> FastAPI:
    """The API over ``pool`` (autocommit connections to a migrated database).

    ``pool`` may be None to build the app only for its OpenAPI document.
    """
    app = FastAPI(
        title="relay API",
        version=__version__,
        description=DESCRIPTION,
        docs_url=None,  # a daemon: no UI pulling scripts from a CDN
        redoc_url=None,
    )
    app.state.pool = pool
    app.state.metrics = metrics or ApiMetrics()
    install(app, before_invalid=check_pending_key)

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["health"],
        summary="Liveness and database reachability (no key needed)",
        responses=error_responses(503),
    )
    async def healthz() -> dict[str, str]:
        if app.state.pool is None:
            raise ApiProblem(503, "no database configured")
        try:
            await run_in_threadpool(_ping, app.state.pool)
        except Exception:
            raise ApiProblem(503, "the database is unavailable") from None
        return {"status": "ok"}

    for router in _routers():
        app.include_router(router)
    if pool is not None:
        # The tenant portal (HTML under /portal/), on the same pool and address: the links
        # `relay portal-link` prints point here.
        from relay.portal import create_router

        app.include_router(create_router(pool), include_in_schema=False)

    # Added last = outermost: sizes are checked and every answer is counted, 413s included.
    app.add_middleware(BodyLimitMiddleware, limit=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problem_media_types(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    openapi_version="3.1.0",
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _ping(pool: ConnectionPool[Any]) -> None:
    with pool.connection(timeout=5) as conn:
        conn.execute("SELECT 1")


def _problem_media_types(doc: dict[str, Any]) -> dict[str, Any]:
    """Declare error answers as what they are, ``application/problem+json``."""
    for item in doc.get("paths", {}).values():
        for operation in item.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content")
                if status[:1] in ("4", "5") and content and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")
    return doc
