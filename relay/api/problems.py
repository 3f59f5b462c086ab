"""RFC 9457 problem details: every error the API answers is ``application/problem+json``.

FastAPI's own handlers (422 for request validation, ``HTTPException``) are replaced here, and
relay's errors are mapped once: :class:`ValidationError` → 422 with ``errors`` naming the
field, :class:`NotFound` → 404, :class:`Conflict` → 409, :class:`DatabaseError` → 503.
Messages come from relay's own errors or from fixed text here; nothing echoes a secret.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from relay.errors import Conflict, DatabaseError, NotFound, ValidationError

log = logging.getLogger("relay.api")

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://relay.dev/problems/"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TYPES = {
    400: "bad-request",
    401: "unauthorized",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "too-large",
    415: "unsupported-media-type",
    422: "invalid",
    503: "unavailable",
}

# Admin errors name fields as the CLI does (its flags); the API names its JSON fields.
_FIELD_NAMES = {
    "header": "headers",
    "event": "events",
    "event_name": "event_names",
    "tenant": "tenant_id",
    "options": "body",
}


class ApiProblem(StarletteHTTPException):
    """An error answer. A Starlette ``HTTPException`` so it also passes through FastAPI's
    request-body reading untouched (the body-size limit raises it from there)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Sequence[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.errors = list(errors) if errors is not None else None


def problem_body(
    status: int, detail: str, errors: Sequence[dict[str, str]] | None = None
) -> dict[str, Any]:
    """The JSON object of one problem."""
    body: dict[str, Any] = {
        "type": TYPE_BASE + _TYPES.get(status, "error"),
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = list(errors)
    return body


def problem(
    status: int,
    detail: str,
    errors: Sequence[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A ``application/problem+json`` response."""
    return JSONResponse(
        problem_body(status, detail, errors),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


def api_field(field: str) -> str:
    """The API's name for a field an admin :class:`ValidationError` names."""
    return _FIELD_NAMES.get(field, field)


def validation_problem(exc: ValidationError) -> ApiProblem:
    """A relay validation error as a 422 naming the field."""
    field = api_field(exc.field)
    return ApiProblem(
        422, f"{field}: {exc.message}", errors=[{"field": field, "message": exc.message}]
    )


def _loc_field(loc: Sequence[Any]) -> str:
    # ("body", "headers", "X-A") → "headers.X-A"; ("query", "limit") → "limit".
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def request_validation_errors(exc: RequestValidationError) -> tuple[int, str, list[dict[str, str]]]:
    """pydantic's errors as (status, detail, field list); malformed JSON is a 400."""
    errors: list[dict[str, str]] = []
    status = 422
    for err in exc.errors():
        kind = err.get("type", "")
        if kind == "json_invalid":
            ctx = err.get("ctx") or {}
            return (
                400,
                f"malformed JSON: {ctx.get('error', 'cannot parse the body')}",
                [{"field": "body", "message": "malformed JSON"}],
            )
        field = _loc_field(err.get("loc", ()))
        message = str(err.get("msg", "invalid"))
        if kind == "extra_forbidden":
            message = "unknown field"
        elif kind == "missing" and field == "body":
            message = "a JSON body is required"
        errors.append({"field": field, "message": message})
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
    return status, detail, errors


def install(
    app: FastAPI, before_invalid: Callable[[Request], Awaitable[None]] | None = None
) -> None:
    """Register the handlers that turn every error into problem+json.

    ``before_invalid`` runs before FastAPI's own 422 (or 400) is answered; an error it raises
    is answered instead (the API checks a request's key there: key first).
    """

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        errors = exc.errors if isinstance(exc, ApiProblem) else None
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(exc.status_code, "")
        return problem(exc.status_code, detail, errors, dict(exc.headers or {}) or None)

    async def on_request_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        if before_invalid is not None:
            try:
                await before_invalid(request)
            except StarletteHTTPException as first:
                return await on_problem(request, first)
            except DatabaseError as first:
                return await on_database(request, first)
        status, detail, errors = request_validation_errors(exc)
        return problem(status, detail, errors)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValidationError)
        p = validation_problem(exc)
        return problem(422, str(p.detail), p.errors)

    async def on_not_found(request: Request, exc: Exception) -> JSONResponse:
        return problem(404, str(exc))

    async def on_conflict(request: Request, exc: Exception) -> JSONResponse:
        return problem(409, str(exc))

    async def on_database(request: Request, exc: Exception) -> JSONResponse:
        # The driver's message may name tables or values: log it, answer a fixed text.
        log.error("database error", extra={"error": str(exc), "path": request.url.path})
        return problem(503, "the database is unavailable, try again later")

    app.add_exception_handler(StarletteHTTPException, on_problem)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(ValidationError, on_validation)
    app.add_exception_handler(NotFound, on_not_found)
    app.add_exception_handler(Conflict, on_conflict)
    app.add_exception_handler(DatabaseError, on_database)
