"""A stand-alone app serving only the portal, for tests and until the HTTP API mounts it.

``python -m relay.portal.app --database-url URL --addr 127.0.0.1:8480`` (or
``create_app(url)`` under any ASGI server).
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator, Sequence

from fastapi import FastAPI

from relay.portal import create_pool, create_router


def create_app(database_url: str) -> FastAPI:
    """A FastAPI app with the portal router; opens its pool at startup, closes it at shutdown."""
    pool = create_pool(database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(
        title="relay portal", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.include_router(create_router(pool))
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the portal with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m relay.portal.app")
    parser.add_argument("--database-url", default=os.environ.get("RELAY_DATABASE_URL"))
    parser.add_argument("--addr", default=os.environ.get("RELAY_API_ADDR", "127.0.0.1:8480"))
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("--database-url or RELAY_DATABASE_URL is required")
    host, _, port = args.addr.rpartition(":")
    uvicorn.run(create_app(args.database_url), host=host, port=int(port), proxy_headers=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
