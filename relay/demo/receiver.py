"""The local webhook receiver of ``relay demo``: relay's test receiver
(:class:`relay.testing.receiver.Receiver`, loopback, ephemeral port), answering as the demo
tells.

``POST /orders`` verifies the Standard Webhooks signature and the bearer token
(:data:`DEMO_TOKEN`) and fails its first request with 503, so the demo shows a retry;
``GET /tests`` answers 204. Every request is printed as it arrives and recorded in
:attr:`DemoReceiver.requests`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from standardwebhooks import Webhook, WebhookVerificationError

from relay.demo.output import say, stamp
from relay.testing.receiver import Behaviour, Receiver, respond
from relay.testing.receiver import Received as Request

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
    _receiver: Receiver | None = None
    base_url: str = ""

    async def start(self) -> str:
        """Listen on 127.0.0.1 with an ephemeral port; return the base URL."""
        self._receiver = await Receiver(on_request=self._answer).start()
        self.base_url = self._receiver.url("").rstrip("/")
        return self.base_url

    async def stop(self) -> None:
        """Close the listener."""
        if self._receiver is not None:
            await self._receiver.close()
            self._receiver = None

    def _answer(self, request: Request) -> Behaviour:
        if request.method == "POST" and request.path == "/orders":
            return self._orders(request)
        if request.method == "GET" and request.path == "/tests":
            return self._tests(request)
        return respond(404)

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

    def _orders(self, request: Request) -> Behaviour:
        body = request.body
        webhook_id = request.headers.get("webhook-id", "-")
        try:
            Webhook(self.secret or "").verify(body, request.headers)
            signature_ok = True
        except (WebhookVerificationError, ValueError):
            signature_ok = False
        auth_ok = request.headers.get("authorization") == f"Bearer {DEMO_TOKEN}"
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
        return respond(status, text)

    def _tests(self, request: Request) -> Behaviour:
        webhook_id = request.headers.get("webhook-id", "-")
        name = request.query.get("eventType")
        note = self._retry_note(webhook_id)
        self.requests.append(Received("GET", "/tests", name, webhook_id, None, 204))
        say(
            f"  {stamp()} receiver <- GET /tests  {name}  webhook-id={webhook_id}  "
            f"unsigned (no secret)  -> 204{note}"
        )
        say(f"           query {request.query_string}")
        return respond(204)
