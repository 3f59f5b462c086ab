"""A real HTTP webhook receiver on loopback, recording every request: relay's one receiver.

In-process (async tests, ``relay demo``)::

    async with Receiver() as rx:
        rx.script("/hook", [respond(500), hang(30), respond(204)])
        ...  # point a subscription at rx.url("/hook")
        first, second, third = await rx.wait_for(3)

``Receiver(on_request=...)`` lets a caller decide each answer itself (the demo verifies
signatures and prints what arrives). As a process (acceptance tests, the benchmark), see
:mod:`relay.testing.receiver_process`.

Everything here talks real HTTP over loopback on purpose: the relay's client (timeouts,
redirects, resets, oversized bodies) is exactly what the tests are about, so mocks would
hide the bugs worth finding.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = [
    "Behaviour",
    "Received",
    "Receiver",
    "hang",
    "huge",
    "redirect",
    "reset",
    "respond",
]


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it."""

    method: str
    path: str
    #: Query parameters in order, repeats kept (GET deliveries encode the notification here).
    query_pairs: list[tuple[str, str]]
    #: Query parameters as a dict; for a repeated name, the first value wins.
    query: dict[str, str]
    #: Header names lower-cased; repeated headers joined with ", " as HTTP allows.
    headers: dict[str, str]
    body: bytes
    #: The body parsed as JSON, or None when it is empty or not JSON.
    json: Any
    #: ``time.time()`` when the request (body included) had arrived.
    received_at: float
    #: The query string as sent (undecoded).
    query_string: str = ""

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def __str__(self) -> str:
        query = "?" + "&".join(f"{k}={v}" for k, v in self.query_pairs) if self.query_pairs else ""
        return f"{self.method} {self.path}{query} ({len(self.body)} bytes)"


def _parse_json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


async def _record(request: web.Request) -> Received:
    body = await request.read()
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    pairs = list(request.query.items())
    query: dict[str, str] = {}
    for name, value in pairs:
        query.setdefault(name, value)
    return Received(
        method=request.method,
        path=request.path,
        query_pairs=pairs,
        query=query,
        headers=headers,
        body=body,
        json=_parse_json(body),
        received_at=time.time(),
        query_string=request.query_string,
    )


# --------------------------------------------------------------------------- behaviours


class Behaviour:
    """What the receiver does with one request. Build them with the functions below."""

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        """Answer ``request``; ``closing`` is set when the receiver shuts down."""
        raise NotImplementedError


@dataclass(frozen=True)
class _Respond(Behaviour):
    status: int
    body: bytes
    headers: Mapping[str, str] | None
    delay: float

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        if self.delay > 0:
            await _sleep_unless(closing, self.delay)
        return web.Response(status=self.status, body=self.body, headers=self.headers)


@dataclass(frozen=True)
class _Hang(Behaviour):
    seconds: float

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        # Waiting on the closing event (not a bare sleep) lets the receiver shut down at
        # once instead of making every test that scripted a hang wait it out.
        await _sleep_unless(closing, self.seconds)
        return web.Response(status=204)


@dataclass(frozen=True)
class _Reset(Behaviour):
    partial: bool

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        transport = request.transport
        if transport is None:  # the client already went away
            raise web.HTTPInternalServerError
        if self.partial:
            # A status line and headers promising more body than ever comes: a client that
            # trusts the status line without reading the body would see a success.
            transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial")
            await asyncio.sleep(0.05)  # let the bytes leave before the reset
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # SO_LINGER 0 turns close into a TCP RST: the client sees ECONNRESET, the way a
            # crashing load balancer looks, not a polite FIN.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # Nothing more can be sent; aiohttp drops a response for a closed transport quietly.
        return web.Response(status=204)


@dataclass(frozen=True)
class _Redirect(Behaviour):
    location: str
    status: int

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        return web.Response(status=self.status, headers={"Location": self.location})


@dataclass(frozen=True)
class _Huge(Behaviour):
    n_bytes: int
    status: int

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        response = web.StreamResponse(status=self.status)
        response.content_length = self.n_bytes
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        chunk = b"x" * 65536
        left = self.n_bytes
        try:
            while left > 0 and not closing.is_set():
                piece = chunk if left >= len(chunk) else chunk[:left]
                await response.write(piece)
                left -= len(piece)
        except (ConnectionError, RuntimeError):
            # The client stopped reading (as a relay capping response size should).
            return response
        return response


async def _sleep_unless(closing: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closing.wait(), seconds)


def respond(
    status: int = 204,
    body: bytes | str = b"",
    headers: Mapping[str, str] | None = None,
    delay: float = 0.0,
) -> Behaviour:
    """Answer ``status`` with ``body`` and ``headers``, after ``delay`` seconds."""
    data = body.encode() if isinstance(body, str) else body
    return _Respond(status, data, dict(headers) if headers else None, delay)


def hang(seconds: float = 60.0) -> Behaviour:
    """Say nothing for ``seconds`` (choose more than the client's timeout), then 204."""
    return _Hang(seconds)


def reset(partial: bool = False) -> Behaviour:
    """Reset the connection (TCP RST) without answering.

    With ``partial=True``, first send a 200 status line and part of a body.
    """
    return _Reset(partial)


def redirect(location: str, status: int = 302) -> Behaviour:
    """Answer a redirect to ``location`` (a relay must not follow it)."""
    return _Redirect(location, status)


def huge(n_bytes: int, status: int = 200) -> Behaviour:
    """Stream a body of ``n_bytes`` bytes (with a matching Content-Length)."""
    return _Huge(n_bytes, status)


# --------------------------------------------------------------------------- receiver


@dataclass
class _Script:
    steps: deque[Behaviour] = field(default_factory=deque)

    def next(self) -> Behaviour:
        # The last behaviour repeats forever, so "[respond(500), respond(204)]" reads as
        # "fail once, then succeed".
        return self.steps.popleft() if len(self.steps) > 1 else self.steps[0]


class Receiver:
    """An aiohttp server on 127.0.0.1 (ephemeral port) recording every request.

    Use as ``async with Receiver() as rx``; every path answers; unscripted paths get
    ``default`` (204 with no body unless told otherwise). ``on_request(received)``, if
    given, sees each request first and may answer it itself (returning a behaviour) or leave
    it to the scripts (returning None).
    """

    def __init__(
        self,
        default: Behaviour | None = None,
        host: str = "127.0.0.1",
        *,
        on_request: Callable[[Received], Behaviour | None] | None = None,
    ) -> None:
        self.host = host
        self.port = 0
        self.requests: list[Received] = []
        self._default = default or respond(204)
        self._on_request = on_request
        self._scripts: dict[str, _Script] = {}
        self._closing = asyncio.Event()
        self._arrived = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # ---- lifecycle

    async def start(self) -> Receiver:
        """Start listening; returns self."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A short shutdown timeout: tests must not wait for clients that hang up late.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def close(self) -> None:
        """Release hanging handlers and stop the server."""
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- API

    def url(self, path: str = "/hook") -> str:
        """The absolute URL of ``path`` on this receiver."""
        if not path.startswith("/"):
            path = "/" + path
        return f"http://{self.host}:{self.port}{path}"

    def script(self, path: str, behaviours: Sequence[Behaviour]) -> None:
        """Answer requests to ``path`` with ``behaviours`` in turn; the last one repeats."""
        if not behaviours:
            raise ValueError("script() needs at least one behaviour")
        self._scripts[path] = _Script(deque(behaviours))

    def requests_to(self, path: str) -> list[Received]:
        """The requests received on ``path`` so far."""
        return [r for r in self.requests if r.path == path]

    async def wait_for(
        self, n: int, timeout: float = 10.0, path: str | None = None
    ) -> list[Received]:
        """Wait until at least ``n`` requests (to ``path``, if given) have arrived.

        Returns all of them (at least ``n``); raises AssertionError naming what did arrive
        when ``timeout`` seconds pass first.
        """

        def matching() -> list[Received]:
            return self.requests if path is None else self.requests_to(path)

        async with self._arrived:
            try:
                await asyncio.wait_for(
                    self._arrived.wait_for(lambda: len(matching()) >= n), timeout
                )
            except TimeoutError:
                got = matching()
                where = f" on {path}" if path else ""
                listing = "\n  ".join(str(r) for r in got) or "(none)"
                raise AssertionError(
                    f"receiver {self.url('')}: expected {n} request(s){where} within "
                    f"{timeout:g}s, got {len(got)}:\n  {listing}"
                ) from None
            return list(matching())

    # ---- internals

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        received = await _record(request)
        self.requests.append(received)
        async with self._arrived:
            self._arrived.notify_all()
        behaviour = self._on_request(received) if self._on_request is not None else None
        if behaviour is None:
            script = self._scripts.get(request.path)
            behaviour = script.next() if script else self._default
        return await behaviour.run(request, self._closing)
