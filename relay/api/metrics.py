"""Prometheus metrics of the API and the ASGI middleware that records them.

``relay_api_requests_total{route,status}`` and ``relay_api_request_duration_seconds{route}``,
where ``route`` is the matched path template (``/v1/deliveries/{delivery_id}``), never the raw
path, so ids cannot blow up the series count; unmatched paths share ``route="unmatched"``.
Each app has its own registry (served on ``RELAY_API_METRICS_ADDR`` by :mod:`relay.api.server`).
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    """The API's collectors, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "relay_api_requests_total",
            "API requests answered, by route template and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "relay_api_request_duration_seconds",
            "API request latency, from the request line to the last byte of the answer.",
            ["route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the answer started is answered 500 by Starlette

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(template, str(status)).inc()
            self.metrics.duration.labels(template).observe(time.perf_counter() - started)
