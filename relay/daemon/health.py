"""The relay's own HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/healthz``: the process is alive and its event loop is not stuck (200/503).
- ``/readyz``: the database answers, the LISTEN connection is up (when enabled) and the
  schema is at the version this relay needs (200/503, JSON body naming what failed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from relay.errors import DatabaseError

log = logging.getLogger("relay.health")

# The loop ticks every second; this much silence means it is stuck.
LOOP_STUCK_AFTER = 30.0
READY_DB_TIMEOUT = 2.0


class Probe(Protocol):
    """What the probes read of the running relay (:class:`relay.daemon.service.Relay`)."""

    @property
    def last_loop_tick(self) -> float:
        """Monotonic time the event loop last proved it runs."""
        ...

    @property
    def schema_ok(self) -> bool:
        """Whether the schema is at the version this relay needs."""
        ...

    @property
    def stopped(self) -> bool:
        """Whether the relay is shutting down."""
        ...

    @property
    def listener_connected(self) -> bool | None:
        """Whether the LISTEN connection is up (None: not listening, by configuration)."""
        ...

    @property
    def acks_error(self) -> str | None:
        """Why attempt outcomes are not being recorded (acks keep failing), or None."""
        ...

    async def ping(self) -> None:
        """Raise :class:`DatabaseError` unless the database answers."""
        ...


class Health:
    """The HTTP endpoint: serves ``registry`` on /metrics and what ``probe`` says on the
    probes, at ``host_port``."""

    def __init__(
        self, probe: Probe, registry: CollectorRegistry, host_port: tuple[str, int]
    ) -> None:
        self.probe = probe
        self.registry = registry
        self.host_port = host_port
        self._runner: web.AppRunner | None = None
        self.bound: tuple[str, int] | None = None

    def alive(self) -> bool:
        """Whether the event loop ticked recently (the systemd watchdog asks)."""
        return time.monotonic() - self.probe.last_loop_tick < LOOP_STUCK_AFTER

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = self.host_port
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        if self._runner.addresses:
            sockname = self._runner.addresses[0]
            self.bound = (sockname[0], sockname[1])
        log.info("metrics and health on http://%s:%s/metrics", host, self.bound and self.bound[1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def _healthz(self, request: web.Request) -> web.Response:
        age = time.monotonic() - self.probe.last_loop_tick
        ok = age < LOOP_STUCK_AFTER
        body = {"status": "ok" if ok else "stuck", "loop_tick_age_seconds": round(age, 3)}
        return _json(body, 200 if ok else 503)

    async def _readyz(self, request: web.Request) -> web.Response:
        checks: dict[str, Any] = {}
        try:
            await asyncio.wait_for(self.probe.ping(), READY_DB_TIMEOUT)
            checks["database"] = {"ok": True}
        except (DatabaseError, TimeoutError) as exc:
            checks["database"] = {"ok": False, "error": str(exc) or "timeout"}
        listening = self.probe.listener_connected
        if listening is not None:
            checks["listener"] = {"ok": listening}
            if not listening:
                checks["listener"]["error"] = "LISTEN connection is down (reconnecting)"
        acks_error = self.probe.acks_error
        checks["acks"] = {"ok": acks_error is None}
        if acks_error is not None:
            checks["acks"]["error"] = acks_error
        checks["schema"] = {"ok": self.probe.schema_ok}
        if not self.probe.schema_ok:
            checks["schema"]["error"] = "schema not at the expected version: run `relay migrate`"
        if self.probe.stopped:
            checks["stopping"] = {"ok": False, "error": "relay is shutting down"}
        ok = all(c["ok"] for c in checks.values())
        return _json(
            {"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503
        )


def _json(body: dict[str, Any], status: int) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")
