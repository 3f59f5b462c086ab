"""A live API per test: uvicorn in this process (a thread) on a free port, over the test's
own database, with an operator key and keys of two tenants."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn

from relay import admin
from relay.api.app import create_app
from relay.api.metrics import ApiMetrics
from relay.api.server import open_pool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Api:
    """A running API and keys for it."""

    url: str
    database_url: str
    operator_key: str
    keys: dict[str, str]  # tenant -> key
    metrics: ApiMetrics

    def client(self, key: str | None) -> httpx.Client:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)

    def key(self, tenant: str | None = None, name: str = "") -> str:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            key, _ = admin.create_api_key(conn, tenant=tenant, name=name)
        return key


@contextlib.contextmanager
def serve(database_url: str, max_body_bytes: int = 64 * 1024) -> Iterator[tuple[str, ApiMetrics]]:
    pool = open_pool(database_url, 4)
    metrics = ApiMetrics()
    app = create_app(pool, max_body_bytes=max_body_bytes, metrics=metrics)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", metrics
    finally:
        server.should_exit = True
        thread.join(15)
        pool.close()


@pytest.fixture
def api(database_url: str) -> Iterator[Api]:
    """A live API (1 MiB → 64 KiB body limit, to keep the 413 tests cheap)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        operator, _ = admin.create_api_key(conn, name="operator")
        keys = {t: admin.create_api_key(conn, tenant=t)[0] for t in ("acme", "globex")}
    with serve(database_url) as (url, metrics):
        yield Api(url, database_url, operator, keys, metrics)


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """Assert ``response`` is a problem+json of ``status``; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"]
    return body
