"""Bearer-key authentication: each request's principal and its database connection.

``Authorization: Bearer rk_...``: a missing header, another scheme, a wrong key and a revoked
key all get the same 401 (with ``WWW-Authenticate: Bearer``), so an answer tells a caller
nothing about which keys exist. The key is checked with :func:`relay.admin.authenticate`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import PoolTimeout

from relay import admin
from relay.admin.db import Conn
from relay.api.problems import ApiProblem

bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="rk_...",
    description="An API key from `relay api-key create`, as `Authorization: Bearer <key>`.",
)

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="relay"'}


@dataclass(frozen=True)
class Ctx:
    """What a route works with: a pooled connection and the caller's tenant scope."""

    conn: Conn
    tenant: str | None
    key_id: int


def unauthorized(detail: str) -> ApiProblem:
    return ApiProblem(401, detail, headers=_CHALLENGE)


def api_context(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Iterator[Ctx]:
    """The request's :class:`Ctx`; 401 before any route code runs if the key is not good."""
    if credentials is None:
        raise unauthorized("missing API key: send Authorization: Bearer <key>")
    try:
        connection = request.app.state.pool.connection()
        conn = connection.__enter__()
    except PoolTimeout:
        raise ApiProblem(503, "the database is unavailable, try again later") from None
    with contextlib.ExitStack() as stack:
        stack.push(connection)
        principal = admin.authenticate(conn, credentials.credentials)
        if principal is None:
            raise unauthorized("invalid or revoked API key")
        yield Ctx(conn, principal.tenant, principal.key_id)


Context = Annotated[Ctx, Depends(api_context)]
