"""The portal's web plumbing: templates, sessions, CSRF, security headers, error pages.

Everything is attached to the router itself (a custom route class, dependencies), not to an
application middleware, so the guarantees hold in whatever app mounts the router.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jinja2
from fastapi import Depends, Form, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from psycopg_pool import ConnectionPool

from relay.admin.db import Conn
from relay.errors import DatabaseError, NotFound
from relay.portal import links
from relay.portal.links import LinkRefused, Session

log = logging.getLogger("relay.portal")

COOKIE = "relay_portal"
COOKIE_PATH = "/portal"
PREFIX = "/portal"

# Strict: scripts and styles only from the portal's own static files, never inline; no
# framing; forms post only back here.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("relay.portal", "templates"),
    autoescape=True,  # every value is escaped unless a template says otherwise (none does)
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class CsrfRefused(Exception):
    """A POST without the session's CSRF token."""


def _fmt_time(value: Any) -> str:
    return "" if value is None else value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _pretty(value: Any) -> str:
    # Not Jinja's tojson: that escapes <, > and & as \u003c..., unreadable in a page; the
    # text here is autoescaped like every other value instead.
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


_templates.filters["time"] = _fmt_time
_templates.filters["pretty"] = _pretty


def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
    """Render a template into a page (security headers are added by :class:`PortalRoute`)."""
    context.setdefault("ctx", None)
    context.setdefault("prefix", PREFIX)
    context.setdefault("notice", None)
    html = _templates.get_template(name).render(request=request, **context)
    return HTMLResponse(html, status_code=status)


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    """A plain error page (403 refused link/CSRF, 404 not found, 503 database down)."""
    return render(request, "error.html", status, title=title, message=message)


def secure_headers(response: Response, static: bool = False) -> None:
    """Add the portal's security headers; pages are never cached (they may hold secrets)."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    response.headers["Cache-Control"] = "public, max-age=3600" if static else "no-store"


@dataclass
class Portal:
    """What the routes share: the connection pool."""

    pool: ConnectionPool[Any]


class PortalRoute(APIRoute):
    """Every portal route: turns refusals into error pages and adds the security headers.

    :func:`relay.portal.create_router` subclasses it with the router's :class:`Portal`, which
    each request then carries in its scope for the dependencies below.
    """

    portal: Portal | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()
        static = self.path.startswith(PREFIX + "/static/")

        async def handler(request: Request) -> Response:
            request.scope["relay_portal"] = self.portal
            try:
                response = await inner(request)
            except LinkRefused as exc:
                response = error_page(request, 403, "This link cannot be used", str(exc))
            except CsrfRefused:
                response = error_page(
                    request,
                    403,
                    "Request refused",
                    "The form's security token is missing or wrong (CSRF). Reload the page "
                    "and try again.",
                )
            except (NotFound, RequestValidationError):
                # A malformed id is as unknown as a missing one or another tenant's.
                response = error_page(request, 404, "Not found", "There is nothing here.")
            except DatabaseError:
                response = error_page(
                    request, 503, "Unavailable", "The service cannot reach its database."
                )
            except Exception:
                # A bug: logged with its traceback for the operator, a plain page for the
                # tenant (never the exception text, which could hold data).
                log.exception("portal: %s %s failed", request.method, request.url.path)
                response = error_page(request, 500, "Something went wrong", "Please try again.")
            secure_headers(response, static=static and response.status_code == 200)
            return response

        return handler


@dataclass
class Ctx:
    """One request of a signed-in tenant: its connection, session and CSRF token."""

    conn: Conn
    session: Session
    csrf: str

    @property
    def tenant(self) -> str:
        return self.session.tenant


def portal_of(request: Request) -> Portal:
    portal: Portal = request.scope["relay_portal"]
    return portal


def connection(request: Request) -> Iterator[Conn]:
    """A pooled autocommit connection for the request (admin operations open transactions)."""
    with portal_of(request).pool.connection() as conn:
        yield conn


def signed_in(request: Request, conn: Annotated[Conn, Depends(connection)]) -> Ctx:
    """The request's tenant session, from the cookie; :class:`LinkRefused` when there is none."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        raise LinkRefused(
            "You are not signed in to the portal (or your session ended). Open the portal "
            "from your application again to get a new link."
        )
    session = links.verify_session(conn, cookie)
    return Ctx(conn, session, links.csrf_token(links.signing_key(conn), session))


def posted(ctx: Annotated[Ctx, Depends(signed_in)], csrf: Annotated[str, Form()] = "") -> Ctx:
    """A signed-in POST carrying the session's CSRF token (every POST route depends on this)."""
    if not csrf or not hmac.compare_digest(csrf, ctx.csrf):
        raise CsrfRefused()
    return ctx


SignedIn = Annotated[Ctx, Depends(signed_in)]
Posted = Annotated[Ctx, Depends(posted)]
Connection = Annotated[Conn, Depends(connection)]


def set_session_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, path /portal, Secure over https.

    Behind a TLS-terminating proxy the app must see the original scheme (uvicorn
    ``--proxy-headers``), or the cookie goes out without Secure.
    """
    response.set_cookie(
        COOKIE,
        value,
        max_age=max(1, max_age),
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


STATIC_DIR = Path(__file__).parent / "static"
