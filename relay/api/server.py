"""``relay api``: run the API under uvicorn until SIGTERM/SIGINT.

On a signal uvicorn stops accepting connections, lets the requests in flight finish (up to
``--api-drain-timeout``), and the process exits 0. Logs go through :mod:`relay.logs` (JSON
lines under systemd); uvicorn's own loggers are routed there too.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import uvicorn
from prometheus_client import start_http_server
from psycopg_pool import ConnectionPool

from relay.api.app import create_app
from relay.api.config import ApiConfig, split_addr
from relay.api.metrics import ApiMetrics
from relay.pgprepare import prepare_kwargs

log = logging.getLogger("relay.api")


def open_pool(url: str, size: int) -> ConnectionPool[Any]:
    """Autocommit connections (each admin operation runs its own transaction)."""
    pool: ConnectionPool[Any] = ConnectionPool(
        url,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, **prepare_kwargs()},
        timeout=10.0,
        name="relay-api",
        open=False,
    )
    # Not waiting: the API starts (and /healthz says 503) while the database is down.
    pool.open(wait=False)
    return pool


def _drained(signum: int, frame: object) -> None:
    """The signal came back from uvicorn after its graceful shutdown: nothing left to do."""


def main(config: ApiConfig) -> int:
    """Entry point of ``relay api``."""
    from relay.embedded import resolve_database_url
    from relay.logs import setup_logging

    setup_logging(config.log_level, config.log_format)
    url = resolve_database_url(config.database_url, config.state_dir)
    if config.database_url is None:
        import psycopg

        from relay.sql.migrate import migrate

        with psycopg.connect(url, **prepare_kwargs()) as conn:
            migrate(conn)
    metrics = ApiMetrics()
    metrics_server = None
    if config.api_metrics_addr:
        host, port = split_addr(config.api_metrics_addr)
        metrics_server, _thread = start_http_server(port, host, registry=metrics.registry)
    pool = open_pool(url, config.api_pool_size)
    try:
        app = create_app(pool, max_body_bytes=config.api_max_body_bytes, metrics=metrics)
        host, port = config.host_port
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host=host,
                port=port,
                log_config=None,  # keep relay's handlers: JSON lines, secrets redacted
                access_log=True,
                proxy_headers=False,
                server_header=False,
                timeout_graceful_shutdown=max(1, round(config.api_drain_timeout)),
                lifespan="off",
            )
        )
        log.info(
            "relay api listening",
            extra={"api_addr": config.api_addr, "metrics_addr": config.api_metrics_addr},
        )
        # uvicorn drains on SIGTERM/SIGINT, then re-raises the signal to the handler that was
        # installed before it ran; a no-op one makes the drained stop a normal exit 0.
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _drained)
        server.run()
        log.info("relay api stopped")
        return 0 if server.started else 1
    finally:
        pool.close()
        if metrics_server is not None:
            metrics_server.shutdown()
