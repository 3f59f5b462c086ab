"""Request-body size limit, enforced before a body is read into memory.

A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted as
it streams in and refused the moment it passes the limit. Either way: 413 problem+json.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.api.problems import ApiProblem, problem


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _too_large(self) -> str:
        return f"request body over {self.limit} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.limit or declared < 0:
                    detail = self._too_large() if declared > 0 else "invalid Content-Length"
                    status = 413 if declared > 0 else 400
                    await problem(status, detail)(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # An HTTPException passes through FastAPI's body reading to the problem
                    # handler unchanged (any other exception there becomes a bare 400).
                    raise ApiProblem(413, self._too_large())
            return message

        await self.app(scope, counted, send)
