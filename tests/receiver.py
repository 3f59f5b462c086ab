"""A real HTTP webhook receiver for tests, in-process or as a separate process.

In-process (async tests)::

    async with Receiver() as rx:
        rx.script("/hook", [respond(500), hang(30), respond(204)])
        ...  # point a subscription at rx.url("/hook")
        first, second, third = await rx.wait_for(3)

As a process (acceptance tests, benchmarks)::

    python tests/receiver.py --port 0 --log FILE [--status 204] [--fail-every N]

prints ``LISTENING <port>`` once it accepts connections and appends one JSON line per
request to FILE. ``start_receiver_process(tmp_path)`` wraps that for tests.

Everything here talks real HTTP over loopback on purpose: the relay's client (timeouts,
redirects, resets, oversized bodies) is exactly what the tests are about, so mocks would
hide the bugs worth finding.

This file must stay runnable as a plain script (``python tests/receiver.py``), so it
imports nothing from the project or from ``tests``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from aiohttp import web

__all__ = [
    "Behaviour",
    "Received",
    "Receiver",
    "ReceiverProcess",
    "hang",
    "huge",
    "read_line",
    "redirect",
    "reset",
    "respond",
    "start_receiver_process",
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
    ``default`` (204 with no body unless told otherwise).
    """

    def __init__(self, default: Behaviour | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.requests: list[Received] = []
        self._default = default or respond(204)
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
        script = self._scripts.get(request.path)
        behaviour = script.next() if script else self._default
        return await behaviour.run(request, self._closing)


# --------------------------------------------------------------------------- subprocess mode


class ReceiverProcess:
    """A receiver running as ``python tests/receiver.py`` in its own process.

    Started by ``start_receiver_process``; a context manager that stops it on exit.
    """

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    @property
    def url(self) -> str:
        """The URL of ``/hook`` on the receiver."""
        return self.url_for("/hook")

    def url_for(self, path: str) -> str:
        """The URL of ``path`` on the receiver."""
        return f"http://127.0.0.1:{self.port}{path if path.startswith('/') else '/' + path}"

    def records(self) -> list[dict[str, Any]]:
        """Every request logged so far, oldest first."""
        try:
            data = self.log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        records = []
        for line in data.splitlines(keepends=True):
            # A line without its newline is still being written: skip it until complete.
            if line.endswith("\n"):
                records.append(json.loads(line))
        return records

    def wait_for(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Poll the log until it holds at least ``n`` records; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.records()
            if len(records) >= n:
                return records
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"receiver process on port {self.port}: expected {n} request(s) within "
                    f"{timeout:g}s, got {len(records)}: {records[-5:]}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 5 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ReceiverProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_receiver_process(
    tmp_path: Path,
    *,
    port: int = 0,
    status: int = 204,
    fail_every: int | None = None,
    fail_status: int = 500,
    delay: float = 0.0,
    log: Path | None = None,
    startup_timeout: float = 15.0,
) -> ReceiverProcess:
    """Start ``tests/receiver.py`` as a process and wait for its ``LISTENING`` line.

    It logs to ``log`` (default: a new file in ``tmp_path``) and its stderr goes to a
    file beside it, quoted in the error if it fails to start.
    """
    log_path = log or _fresh(tmp_path, "receiver", ".jsonl")
    err_path = log_path.with_suffix(".stderr")
    args = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--port",
        str(port),
        "--log",
        str(log_path),
        "--status",
        str(status),
        "--fail-status",
        str(fail_status),
        "--delay",
        str(delay),
    ]
    if fail_every:
        args += ["--fail-every", str(fail_every)]
    with err_path.open("wb") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    try:
        line = read_line(proc.stdout, startup_timeout)
        if not line.startswith(b"LISTENING "):
            raise RuntimeError(f"unexpected first line {line!r}")
        bound = int(line.split()[1])
    except Exception as exc:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        proc.stdout.close()
        stderr = err_path.read_text(errors="replace")
        raise RuntimeError(f"receiver process failed to start ({exc}); stderr:\n{stderr}") from exc
    return ReceiverProcess(proc, bound, log_path)


def _fresh(directory: Path, stem: str, suffix: str) -> Path:
    for i in range(1000):
        candidate = directory / f"{stem}-{i}{suffix}"
        if not candidate.exists():
            return candidate
    raise RuntimeError(f"no free file name for {stem} in {directory}")


def read_line(stream: IO[bytes], timeout: float) -> bytes:
    """One line from a pipe, or TimeoutError: a child that never starts must not hang a test."""
    deadline = time.monotonic() + timeout
    fd = stream.fileno()
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no line within {timeout:g}s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            # os.read, not stream.read: a buffered read could swallow bytes past the newline
            # or block for more than is there.
            chunk = os.read(fd, 1)
            if not chunk:
                raise EOFError(f"process exited before a full line (got {buf!r})")
            buf += chunk
    return buf


async def _serve(args: argparse.Namespace) -> None:
    """The process mode: log every request as a JSON line, answer by the flags."""
    count = 0
    # Line-buffered append: each record reaches the OS as one write, with no fsync (which
    # would make the receiver, not the relay, the bottleneck in benchmarks).
    log: IO[str] = open(args.log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal count
        count += 1
        body = await request.read()
        failing = bool(args.fail_every) and count % args.fail_every == 0
        status = args.fail_status if failing else args.status
        record = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "webhook_id": request.headers.get("webhook-id"),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body.decode("utf-8", errors="replace"),
            "status": status,
            "received_at": time.time(),
        }
        log.write(json.dumps(record) + "\n")
        if args.delay > 0:
            await asyncio.sleep(args.delay)
        return web.Response(status=status)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        log.close()


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point of ``python tests/receiver.py``."""
    parser = argparse.ArgumentParser(description="A webhook receiver that logs JSON lines.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log", required=True, help="file to append one JSON line per request")
    parser.add_argument("--status", type=int, default=204, help="normal response status")
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        help="answer --fail-status to every Nth request (N, 2N, ...)",
    )
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args(list(argv) if argv is not None else None)
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
