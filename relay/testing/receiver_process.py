"""The receiver as a process: ``python -m relay.testing.receiver_process``.

    python -m relay.testing.receiver_process [--port 0] [--log FILE] [--status 204]
        [--fail-every N] [--fail-event-every N] [--fail-status 500] [--delay S]

prints ``LISTENING <port>`` once it accepts connections. Acceptance tests start it with
:func:`start_receiver_process` and read ``--log`` (one JSON line per request); the benchmark
starts it without a log and reads what it kept in memory over its control endpoints.

It must stay cheap (the benchmark counts its CPU): aiohttp's low-level server, no router, no
access log. For every webhook it keeps in memory the event key ``k`` and emit time ``t`` from
the JSON payload (the benchmark's events carry them), the arrival time (``time.time()`` once
the body is read), the path and whether it answered 2xx.

Failures: ``--fail-every N`` answers ``--fail-status`` to every Nth request (by arrival,
whatever its event: a retry usually succeeds); ``--fail-event-every N`` to every request whose
event key is a multiple of N (the same event fails on every attempt and ends ``dead``).

Control endpoints (never counted, never logged), all under ``/_bench/``:

- ``GET  /_bench/stats``          -> JSON ``{count, ok, failed, first, last, paths}``
- ``POST /_bench/dump?file=PATH`` -> writes the arrays to ``PATH`` (see :func:`write_dump`)
- ``POST /_bench/reset``          -> forgets everything received so far
- ``POST /_bench/config?fail_every=N`` -> changes ``--fail-event-every`` at run time

Only loopback is bound unless ``--host`` says otherwise.

``--lean`` (what the benchmark runs): uvloop and a bare HTTP/1.1 keep-alive protocol instead of
aiohttp; the body is not JSON-decoded (``k`` and ``t`` are found by a byte search), and there
is no ``--log`` or ``--delay``. It costs a fraction of aiohttp's CPU per request, so the
receiver is never the ceiling it is meant to measure. Same control endpoints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import urllib.parse
from array import array
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import IO, Any, cast

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_server import Server

__all__ = [
    "ReceiverProcess",
    "State",
    "main",
    "read_dump",
    "read_line",
    "start_receiver_process",
    "write_dump",
]

CONTROL = "/_bench/"
# Dump file layout: header (magic, count), then count x int64 keys, count x float64 arrival,
# count x float64 payload t, count x int8 ok, count x int16 path index; then the paths as JSON.
MAGIC = b"RLYBENCH1"
# Largest request body read (a webhook carries at most a 256 KiB payload, mapped).
CLIENT_MAX_SIZE = 64 * 1024 * 1024


class State:
    """What the receiver keeps of every webhook, in compact arrays."""

    def __init__(self, fail_every: int, fail_status: int, fail_nth: int = 0) -> None:
        self.fail_every = fail_every  # by event key
        self.fail_status = fail_status
        self.fail_nth = fail_nth  # by arrival
        self.reset()

    def reset(self) -> None:
        self.keys = array("q")
        self.arrivals = array("d")
        self.stamps = array("d")
        self.ok = array("b")
        self.path_ix = array("h")
        self.paths: dict[str, int] = {}
        self.path_counts: list[int] = []
        self.n_ok = 0

    def record(self, path: str, key: int, stamp: float, arrived: float) -> bool:
        """Keep one webhook's arrival; return whether it is to be failed (both modes)."""
        ix = self.paths.get(path)
        if ix is None:
            ix = self.paths[path] = len(self.paths)
            self.path_counts.append(0)
        self.path_counts[ix] += 1
        fail = (self.fail_every > 0 and key % self.fail_every == 0) or (
            self.fail_nth > 0 and (len(self.keys) + 1) % self.fail_nth == 0
        )
        self.keys.append(key)
        self.arrivals.append(arrived)
        self.stamps.append(stamp)
        self.ok.append(0 if fail else 1)
        self.path_ix.append(ix)
        return fail

    def stats(self) -> dict[str, Any]:
        names = {ix: p for p, ix in self.paths.items()}
        counts = self.path_counts
        n = len(self.keys)
        return {
            "count": n,
            "ok": self.n_ok,
            "failed": n - self.n_ok,
            "first": self.arrivals[0] if n else None,
            "last": self.arrivals[-1] if n else None,
            "paths": {names[i]: c for i, c in enumerate(counts)},
        }


def write_dump(state: State, path: str) -> int:
    """Write the arrays to ``path``; return how many requests they hold."""
    n = len(state.keys)
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<q", n))
        state.keys.tofile(f)
        state.arrivals.tofile(f)
        state.stamps.tofile(f)
        state.ok.tofile(f)
        state.path_ix.tofile(f)
        names = [p for p, _ in sorted(state.paths.items(), key=lambda kv: kv[1])]
        f.write(json.dumps(names).encode())
    return n


def read_dump(path: str | Path) -> dict[str, Any]:
    """The arrays written by :func:`write_dump`, as ``array`` objects plus the path names."""
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 8)
        if not head.startswith(MAGIC):
            raise ValueError(f"{path}: not a receiver dump")
        (n,) = struct.unpack("<q", head[len(MAGIC) :])
        out: dict[str, Any] = {}
        for name, code in (
            ("keys", "q"),
            ("arrivals", "d"),
            ("stamps", "d"),
            ("ok", "b"),
            ("path_ix", "h"),
        ):
            arr = array(code)
            arr.fromfile(f, n)
            out[name] = arr
        out["paths"] = json.loads(f.read() or b"[]")
    out["count"] = n
    return out


class ReceiverProcess:
    """A receiver running as ``python -m relay.testing.receiver_process`` in its own process.

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
    """Start the receiver as a process (logging every request to a file) and wait for its
    ``LISTENING`` line.

    It logs to ``log`` (default: a new file in ``tmp_path``) and its stderr goes to a
    file beside it, quoted in the error if it fails to start.
    """
    log_path = log or _fresh(tmp_path, "receiver", ".jsonl")
    err_path = log_path.with_suffix(".stderr")
    args = [
        sys.executable,
        "-m",
        "relay.testing.receiver_process",
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


async def serve(args: argparse.Namespace) -> None:
    """Answer webhooks until SIGTERM/SIGINT (see the module's docstring)."""
    state = State(args.fail_event_every, args.fail_status, args.fail_every)
    answer = args.status
    delay = args.delay
    now = time.time
    loads = json.loads
    # Line-buffered append: each record reaches the OS as one write, with no fsync (which
    # would make the receiver, not the relay, the bottleneck).
    log: IO[str] | None = (
        open(args.log, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        if args.log
        else None
    )

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith(CONTROL):
            return await control(request, path[len(CONTROL) :])
        body = await request.read()
        arrived = now()
        try:
            doc = loads(body)
            key = int(doc.get("k", -1))
            stamp = float(doc.get("t", 0.0))
        except (ValueError, TypeError, AttributeError):
            key, stamp = -1, 0.0
        fail = state.record(path, key, stamp, arrived)
        status = state.fail_status if fail else answer
        if log is not None:
            record = {
                "method": request.method,
                "path": path,
                "query": request.query_string,
                "webhook_id": request.headers.get("webhook-id"),
                "headers": {k.lower(): v for k, v in request.headers.items()},
                "body": body.decode("utf-8", errors="replace"),
                "status": status,
                "received_at": arrived,
            }
            log.write(json.dumps(record) + "\n")
        if delay > 0:
            await asyncio.sleep(delay)
        if not fail:
            state.n_ok += 1
        return web.Response(status=status)

    async def control(request: web.BaseRequest, what: str) -> web.StreamResponse:
        if what == "stats":
            return web.json_response(state.stats())
        if what == "dump":
            n = write_dump(state, request.query["file"])
            return web.json_response({"count": n})
        if what == "reset":
            state.reset()
            return web.json_response({"ok": True})
        if what == "config":
            if "fail_every" in request.query:
                state.fail_every = int(request.query["fail_every"])
            return web.json_response({"fail_every": state.fail_every})
        return web.json_response({"error": f"unknown control {what!r}"}, status=404)

    loop = asyncio.get_running_loop()

    def make_request(
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        # As aiohttp's own factory, with room for a large body (its default is 1 MiB).
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=CLIENT_MAX_SIZE
        )

    server = Server(handle, access_log=None, request_factory=make_request)
    srv = await loop.create_server(server, args.host, args.port, backlog=1024)
    port = srv.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {port}", flush=True)
    try:
        await stop.wait()
    finally:
        srv.close()
        await server.shutdown(1.0)
        if log is not None:
            log.close()


# --------------------------------------------------------------------------- lean mode

_OK_HEAD = b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\n\r\n"
_REASONS = {200: b"OK", 204: b"No Content", 500: b"Internal Server Error"}


def _status_line(status: int) -> bytes:
    return _OK_HEAD % (status, _REASONS.get(status, b"Status"))


def _number_after(body: bytes, marker: bytes) -> bytes:
    """The bytes of the JSON number after ``marker`` (``b'"k":'``), or b"" if absent.

    A byte search, not a JSON parse: the benchmark's bodies are relay's compact JSON and the
    lean receiver must cost far less per request than the relay it measures.
    """
    i = body.find(marker)
    if i < 0:
        return b""
    i += len(marker)
    j = i
    n = len(body)
    while j < n and body[j] in b" ":
        j += 1
    i = j
    while j < n and body[j] in b"0123456789.eE+-":
        j += 1
    return body[i:j]


class LeanProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive on a bare asyncio protocol: read the head and Content-Length, take
    the body as bytes, answer with a fixed status line. No parser objects, no request object,
    no JSON decode; only ``k`` and ``t`` are picked out of the body by a byte search."""

    def __init__(self, state: State, answer: int) -> None:
        self.state = state
        self.ok_line = _status_line(answer)
        self.fail_line = _status_line(state.fail_status)
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end])
            lower = head.lower()
            i = lower.find(b"\r\ncontent-length:")
            size = 0
            if i >= 0:
                eol = head.find(b"\r\n", i + 2)  # -1: the last header line
                size = int(head[i + 17 : eol if eol >= 0 else len(head)])
            total = end + 4 + size
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            sp = head.find(b" ")
            target = head[sp + 1 : head.find(b" ", sp + 1)].decode("latin-1")
            close = b"\r\nconnection: close" in lower
            self._answer(target, body, close)
            if close:
                return

    def _answer(self, target: str, body: bytes, close: bool) -> None:
        transport = self.transport
        assert transport is not None
        path, _, query = target.partition("?")
        if path.startswith(CONTROL):
            payload, status = _lean_control(self.state, path[len(CONTROL) :], query)
            transport.write(
                b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % (status, len(payload))
                + payload
            )
        else:
            state = self.state
            arrived = time.time()
            raw_k = _number_after(body, b'"k":')
            raw_t = _number_after(body, b'"t":')
            try:
                key = int(raw_k) if raw_k else -1
                stamp = float(raw_t) if raw_t else 0.0
            except ValueError:
                key, stamp = -1, 0.0
            fail = state.record(path, key, stamp, arrived)
            if not fail:
                state.n_ok += 1
            transport.write(self.fail_line if fail else self.ok_line)
        if close:
            transport.close()


def _lean_control(state: State, what: str, query: str) -> tuple[bytes, int]:
    params = {k: v[-1] for k, v in urllib.parse.parse_qs(query).items()}
    if what == "stats":
        return json.dumps(state.stats()).encode(), 200
    if what == "dump":
        return json.dumps({"count": write_dump(state, params["file"])}).encode(), 200
    if what == "reset":
        state.reset()
        return b'{"ok": true}', 200
    if what == "config":
        if "fail_every" in params:
            state.fail_every = int(params["fail_every"])
        return json.dumps({"fail_every": state.fail_every}).encode(), 200
    return json.dumps({"error": f"unknown control {what!r}"}).encode(), 404


async def serve_lean(args: argparse.Namespace) -> None:
    """``--lean``: the benchmark's receiver (see :class:`LeanProtocol`), until SIGTERM."""
    state = State(args.fail_event_every, args.fail_status, args.fail_every)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(
        lambda: LeanProtocol(state, args.status), args.host, args.port, backlog=1024
    )
    port = srv.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {port}", flush=True)
    try:
        await stop.wait()
    finally:
        srv.close()


def main(argv: Iterable[str] | None = None) -> None:
    """Entry point of ``python -m relay.testing.receiver_process``."""
    parser = argparse.ArgumentParser(description="A webhook receiver process (loopback).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log", default=None, help="file to append one JSON line per request")
    parser.add_argument("--status", type=int, default=204, help="normal response status")
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        help="answer --fail-status to every Nth request (N, 2N, ... by arrival)",
    )
    parser.add_argument(
        "--fail-event-every",
        type=int,
        default=0,
        help="answer --fail-status to every event whose key k is a multiple of N",
    )
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument(
        "--lean",
        action="store_true",
        help="the benchmark's mode: uvloop, a bare HTTP/1.1 protocol, no JSON parse "
        "(no --log, no --delay)",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.lean:
        if args.log or args.delay:
            parser.error("--lean takes neither --log nor --delay")
        import uvloop

        uvloop.run(serve_lean(args))
    else:
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
