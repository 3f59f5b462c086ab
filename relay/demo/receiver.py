"""The local webhook receiver of ``relay demo`` (aiohttp, loopback, ephemeral port).

``POST /orders`` verifies the Standard Webhooks signature and the bearer token
(:data:`DEMO_TOKEN`) and fails its first request with 503, so the demo shows a retry;
``GET /tests`` answers 204. Every request is printed as it arrives and recorded in
:attr:`DemoReceiver.requests`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from aiohttp import web
from standardwebhooks import Webhook, WebhookVerificationError

from relay.demo.output import say, stamp

DEMO_TOKEN = "demo-token"


@dataclass
class Received:
    """One request the receiver saw."""

    method: str
    path: str
    event_name: str | None
    webhook_id: str
    signature_ok: bool | None  # None: not signed (GET subscription without a secret)
    status: int


@dataclass
class DemoReceiver:
    """A webhook receiver on loopback: ``POST /orders`` (signed; first request 503) and
    ``GET /tests``."""

    backoff_ms: int  # the orders subscription's backoff, quoted in the 503's text
    secret: str | None = None
    requests: list[Received] = field(default_factory=list)
    _failed_once: bool = False
    _seen_ids: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    base_url: str = ""

    async def start(self) -> str:
        """Listen on 127.0.0.1 with an ephemeral port; return the base URL."""
        app = web.Application()
        app.router.add_post("/orders", self._orders)
        app.router.add_get("/tests", self._tests)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        """Close the listener."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def first_successes(self, path: str) -> list[str | None]:
        """Event names of the first successful request of each webhook-id to ``path``, in
        arrival order: what a receiver keeping state would have applied."""
        seen: set[str] = set()
        names: list[str | None] = []
        for r in self.requests:
            if r.path == path and r.status < 300 and r.webhook_id not in seen:
                seen.add(r.webhook_id)
                names.append(r.event_name)
        return names

    def _retry_note(self, webhook_id: str) -> str:
        if webhook_id in self._seen_ids:
            return "  (a retry: same webhook-id as before)"
        self._seen_ids.add(webhook_id)
        return ""

    async def _orders(self, request: web.Request) -> web.Response:
        body = await request.read()
        webhook_id = request.headers.get("webhook-id", "-")
        try:
            Webhook(self.secret or "").verify(body, dict(request.headers))
            signature_ok = True
        except (WebhookVerificationError, ValueError):
            signature_ok = False
        auth_ok = request.headers.get("Authorization") == f"Bearer {DEMO_TOKEN}"
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        name = doc.get("type") if isinstance(doc, dict) else None
        if not (signature_ok and auth_ok):
            status, text = 401, "bad signature or token"
        elif not self._failed_once:
            self._failed_once = True
            status, text = 503, f"simulated outage (relay retries in {self.backoff_ms / 1000:g} s)"
        else:
            status, text = 204, ""
        note = self._retry_note(webhook_id)
        self.requests.append(Received("POST", "/orders", name, webhook_id, signature_ok, status))
        say(
            f"  {stamp()} receiver <- POST /orders  {name}  webhook-id={webhook_id}  "
            f"signature {'ok' if signature_ok else 'BAD'}  auth {'ok' if auth_ok else 'BAD'}"
            f"  -> {status}{' ' + text if text else ''}{note}"
        )
        say(f"           body {body.decode(errors='replace')}")
        return web.Response(status=status, text=text or None)

    async def _tests(self, request: web.Request) -> web.Response:
        webhook_id = request.headers.get("webhook-id", "-")
        name = request.query.get("eventType")
        note = self._retry_note(webhook_id)
        self.requests.append(Received("GET", "/tests", name, webhook_id, None, 204))
        say(
            f"  {stamp()} receiver <- GET /tests  {name}  webhook-id={webhook_id}  "
            f"unsigned (no secret)  -> 204{note}"
        )
        say(f"           query {request.query_string}")
        return web.Response(status=204)
