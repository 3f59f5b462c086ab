"""Bearer-key authentication: each request's principal and its database connection.

``Authorization: Bearer rk_...``: a missing header, another scheme, a wrong key and a revoked
key all get the same 401 (with ``WWW-Authenticate: Bearer``), so an answer tells a caller
nothing about which keys exist. The key is checked with :func:`relay.admin.authenticate` on
every request: no verified key is remembered, so a revoked key fails on its next request.

Threads: the admin operations are synchronous psycopg code, so the database work of a request
runs in a worker thread. A hop to a worker and back costs the event loop a wake-up and a GIL
hand-over (more CPU than a short query), so a request makes one: :meth:`Ctx.run` takes a pooled
connection, checks the key, runs the route's work and puts the connection back, all in the
same thread. The routes are ``async def`` so that FastAPI adds no hop of its own (for the
route, or for checking and serializing its answer).

The order of answers stays "key first": a missing key is refused by the dependency before
FastAPI checks the parameters, and a request whose parameters or body FastAPI refuses (422)
has its key checked before that answer (:func:`check_pending_key`), so a caller without a
good key learns nothing about what the API would accept. Route code that can refuse input
runs inside :meth:`Ctx.run`, after the key.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool, PoolTimeout
from starlette.concurrency import run_in_threadpool

from relay import admin
from relay.admin.db import Conn
from relay.api.problems import ApiProblem

bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="rk_...",
    description="An API key from `relay api-key create`, as `Authorization: Bearer <key>`.",
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="relay"'}
# Where the dependency leaves the request's Ctx for check_pending_key.
_SCOPE_KEY = "relay.api.ctx"

T = TypeVar("T")


class Ctx:
    """What a route works with: inside :meth:`run`, a pooled connection (``conn``) and the
    caller's scope (``tenant``, ``key_id``), known once the key is checked there."""

    __slots__ = ("_key", "_pool", "conn", "key_id", "tenant", "verified")

    def __init__(self, pool: ConnectionPool[Any], key: str) -> None:
        self._pool = pool
        self._key = key
        self.verified = False
        self.tenant: str | None = None
        self.key_id = 0
        self.conn: Conn

    def _authenticate(self, conn: Conn) -> None:
        principal = admin.authenticate(conn, self._key)
        if principal is None:
            raise unauthorized("invalid or revoked API key")
        self.tenant, self.key_id, self.verified = principal.tenant, principal.key_id, True

    def _checkout(self) -> Any:
        try:
            held = self._pool.connection()
            self.conn = held.__enter__()
        except PoolTimeout:
            raise ApiProblem(503, "the database is unavailable, try again later") from None
        return held

    def _in_worker(self, work: Callable[[Ctx], T]) -> T:
        # Checkout, key, work, connection back (rolled back first after an exception).
        held = self._checkout()
        try:
            self._authenticate(self.conn)
            result = work(self)
        except BaseException:
            held.__exit__(*sys.exc_info())
            raise
        held.__exit__(None, None, None)
        return result

    async def run(self, work: Callable[[Ctx], T]) -> T:
        """Check the key, then ``work(ctx)``, in one worker thread on one pooled connection;
        401 (wrong or revoked key) or 503 (no connection) before ``work`` runs. Exceptions
        propagate to the problem handlers."""
        return await run_in_threadpool(self._in_worker, work)

    async def check_key(self) -> None:
        """Only check the key, if :meth:`run` has not (401 or 503 if it is not good)."""
        if not self.verified:
            await run_in_threadpool(self._in_worker, _nothing)


def _nothing(ctx: Ctx) -> None:
    return None


def unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, detail, headers=_CHALLENGE)


async def api_context(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Ctx:
    """The request's :class:`Ctx`; 401 at once without a key (the key itself is checked in
    :meth:`Ctx.run`, before any route work)."""
    if credentials is None:
        raise unauthorized("missing API key: send Authorization: Bearer <key>")
    ctx = Ctx(request.app.state.pool, credentials.credentials)
    request.scope[_SCOPE_KEY] = ctx
    return ctx


async def check_pending_key(request: Request) -> None:
    """Before a 422 from FastAPI's own checks: the key the request came with, if it has not
    been checked yet (401 or 503 in place of the 422)."""
    ctx = request.scope.get(_SCOPE_KEY)
    if isinstance(ctx, Ctx):
        await ctx.check_key()


Context = Annotated[Ctx, Depends(api_context)]
