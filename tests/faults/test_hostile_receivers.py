"""Hostile receivers: response bodies Postgres cannot store as they are, bodies that never
end, broken HTTP. Each one beside a healthy subscription that must keep getting its
deliveries, and each attempt recorded with its status and a valid, bounded, NUL-free text
excerpt, its slot freed within the subscription's timeout.

In-process relay and receivers over real loopback HTTP (tests/receiver.py, plus a raw
asyncio server for answers aiohttp's server refuses to produce).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web

from tests.faults._util import Conn
from tests.receiver import Behaviour, Receiver, huge, respond
from tests.relayctx import add_subscription, attempts, deliveries, emit, running_relay, wait_until

BODY_LIMIT = 1024
EVENTS = 3


# ----------------------------------------------------------------------------- behaviours


@dataclass(frozen=True)
class _Endless(Behaviour):
    """200, chunked, and body bytes forever (until the client goes away)."""

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_type = "text/plain"
        await response.prepare(request)
        chunk = b"endless " * 1024
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not closing.is_set():
                await response.write(chunk)
                # the receiver shares the test's event loop with the relay: let it run
                await asyncio.sleep(0)
        return response


@dataclass(frozen=True)
class _Silent(Behaviour):
    """A 200 status line and headers promising a body, then nothing at all."""

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_length = 100
        await response.prepare(request)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(closing.wait(), 60)
        return response


@dataclass(frozen=True)
class _ResetAfterHeaders(Behaviour):
    """A 200 status line and chunked headers, then a TCP reset before any body."""

    async def run(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        transport = request.transport
        if transport is None:
            raise web.HTTPInternalServerError
        transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await asyncio.sleep(0.05)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        return web.Response(status=204)


@contextlib.asynccontextmanager
async def raw_server(answer: bytes) -> AsyncIterator[str]:
    """A TCP server on 127.0.0.1 that reads a request head and writes ``answer`` verbatim
    (an invalid status line, which no HTTP server library would send), then closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        server.close()
        await server.wait_closed()


def _brotli(data: bytes) -> bytes:
    brotli = pytest.importorskip("brotli", reason="br body needs the brotli package")
    compressed: bytes = brotli.compress(data)
    return compressed


# ----------------------------------------------------------------------------- checks


def _check_excerpts(conn: Conn) -> list[dict[str, Any]]:
    """Every stored excerpt is valid, bounded, NUL-free text; returns every attempt row."""
    rows = conn.execute(
        "SELECT delivery_id, status_code, error, response_body FROM relay.delivery_attempts"
    ).fetchall()
    for _, _, error, body in rows:
        for text in (error, body):
            if text is not None:
                assert "\x00" not in text and len(text) <= 2000
                text.encode("utf-8")  # no lone surrogate
        assert body is None or len(body) <= BODY_LIMIT
    return [
        {"delivery_id": r[0], "status_code": r[1], "error": r[2], "response_body": r[3]}
        for r in rows
    ]


def _all_final(conn: Conn, expected: int) -> bool:
    # One read: two would race the fan-out (no rows yet, then every row still pending).
    rows = deliveries(conn)
    return len(rows) == expected and all(d["status"] != "pending" for d in rows)


async def _beside_healthy(
    conn: Conn,
    database_url: str,
    receiver: Receiver,
    bad_url: str,
    *,
    timeout_ms: int = 1000,
) -> tuple[int, list[dict[str, Any]]]:
    """Run a relay with the hostile subscription (no retries) beside a healthy one until
    every delivery is final; the healthy one must have all its events. Returns the hostile
    subscription's id and its deliveries."""
    bad = add_subscription(conn, bad_url, max_retries=0, timeout_ms=timeout_ms)
    ok = add_subscription(conn, receiver.url("/ok"), max_retries=0)
    for i in range(EVENTS):
        emit(conn, "order.created", {"n": i})
    async with running_relay(database_url):
        await wait_until(lambda: _all_final(conn, 2 * EVENTS), timeout=40)
    healthy = [d for d in deliveries(conn) if d["subscription_id"] == ok]
    assert [d["status"] for d in healthy] == ["delivered"] * EVENTS
    assert len(receiver.requests_to("/ok")) == EVENTS
    hostile = [d for d in deliveries(conn) if d["subscription_id"] == bad]
    for d in hostile:
        assert d["attempts"] == 1, d
    _check_excerpts(conn)
    return bad, hostile


def _bodies(conn: Conn, hostile: list[dict[str, Any]]) -> list[str | None]:
    return [attempts(conn, d["id"])[0]["response_body"] for d in hostile]


# ----------------------------------------------------------------------------- tests


async def test_gzip_body_is_recorded_and_acked(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """The issue's reproduction: a receiver (nginx with gzip on) answers a compressed body
    whatever the request asked. Before the fix the raw gzip bytes (with NULs) went into the
    ack, Postgres refused the whole batch, and every delivery stayed pending forever."""
    body = gzip.compress(b'{"ok": true}')
    receiver.script("/gz", [respond(200, body=body, headers={"Content-Encoding": "gzip"})])
    add_subscription(conn, receiver.url("/gz"), max_retries=0)
    for i in range(3):
        emit(conn, "order.created", {"n": i})
    async with running_relay(database_url):
        await wait_until(lambda: [d["status"] for d in deliveries(conn)] == ["delivered"] * 3, 10)
    for d in deliveries(conn):
        (a,) = attempts(conn, d["id"])
        assert a["status_code"] == 200
        assert a["response_body"] == '{"ok": true}'
    assert len(receiver.requests_to("/gz")) == 3
    # relay asks for an uncompressed answer (the server above ignores it)
    assert all(r.headers.get("accept-encoding") == "identity" for r in receiver.requests)


@pytest.mark.parametrize(
    ("encoding", "compress", "status"),
    [
        ("gzip", gzip.compress, 500),
        ("deflate", zlib.compress, 200),
        ("deflate", lambda b: zlib.compress(b, wbits=-15), 200),  # raw deflate, seen in the wild
        ("br", _brotli, 200),
    ],
    ids=["gzip-500", "deflate", "raw-deflate", "br"],
)
async def test_compressed_bodies(
    conn: Conn,
    database_url: str,
    receiver: Receiver,
    encoding: str,
    compress: Callable[[bytes], bytes],
    status: int,
) -> None:
    """gzip and deflate bodies are stored decoded (an excerpt, the decompression capped, so a
    bomb costs nothing); br is named, not stored as bytes. The status is recorded."""
    plain = b"hello \x00 world " * 2000  # a NUL inside, and far over the excerpt once decoded
    receiver.script(
        "/bad", [respond(status, body=compress(plain), headers={"Content-Encoding": encoding})]
    )
    _, hostile = await _beside_healthy(conn, database_url, receiver, receiver.url("/bad"))
    want = "delivered" if status == 200 else "dead"
    assert [d["status"] for d in hostile] == [want] * EVENTS
    assert [d["last_status_code"] for d in hostile] == [status] * EVENTS
    for body in _bodies(conn, hostile):
        assert body is not None
        if encoding == "br":
            assert "br-encoded body" in body
        else:
            assert body == plain.decode()[:BODY_LIMIT].replace("\x00", "\ufffd")


async def test_gzip_bomb_costs_an_excerpt(
    conn: Conn, database_url: str, receiver: Receiver
) -> None:
    """A 1 GB gzip bomb (about 1 MB compressed): only the excerpt is ever inflated."""
    bomb = gzip.compress(b"\x00" * (64 * 1024 * 1024), compresslevel=9)
    receiver.script("/bad", [respond(200, body=bomb, headers={"Content-Encoding": "gzip"})])
    _, hostile = await _beside_healthy(conn, database_url, receiver, receiver.url("/bad"))
    assert [d["status"] for d in hostile] == ["delivered"] * EVENTS
    assert _bodies(conn, hostile) == ["\ufffd" * BODY_LIMIT] * EVENTS


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (bytes(range(256)) * 8, "application/octet-stream"),
        (b"ok\x00\x00\x00 then NULs", "text/plain"),
        (b"caf\xe9 \xff\xfe invalid utf-8 \xed\xa0\x80", "text/plain; charset=utf-8"),
    ],
    ids=["binary", "nul", "invalid-utf8"],
)
async def test_binary_and_invalid_text_bodies(
    conn: Conn, database_url: str, receiver: Receiver, body: bytes, content_type: str
) -> None:
    """Binary, NUL and invalid UTF-8 bodies are stored as text with replacement characters."""
    receiver.script("/bad", [respond(200, body=body, headers={"Content-Type": content_type})])
    _, hostile = await _beside_healthy(conn, database_url, receiver, receiver.url("/bad"))
    assert [d["status"] for d in hostile] == ["delivered"] * EVENTS
    want = body[:BODY_LIMIT].decode("utf-8", "replace").replace("\x00", "\ufffd")
    assert _bodies(conn, hostile) == [want[:BODY_LIMIT]] * EVENTS


async def test_endless_body(conn: Conn, database_url: str, receiver: Receiver) -> None:
    """A 200 whose chunked body never ends: delivered with a 1024-character excerpt; the rest
    is never read (the connection is closed), so the slot frees at once."""
    receiver.script("/bad", [_Endless()])
    _, hostile = await _beside_healthy(conn, database_url, receiver, receiver.url("/bad"))
    assert [d["status"] for d in hostile] == ["delivered"] * EVENTS
    assert _bodies(conn, hostile) == [("endless " * 200)[:BODY_LIMIT]] * EVENTS


async def test_one_gigabyte_body(conn: Conn, database_url: str, receiver: Receiver) -> None:
    """A 1 GB body (streamed by the receiver, never built in memory) with a 500: failed, the
    excerpt stored, well within the timeout (it is not read)."""
    receiver.script("/bad", [huge(1 << 30, 500)])
    _, hostile = await _beside_healthy(conn, database_url, receiver, receiver.url("/bad"))
    assert [d["status"] for d in hostile] == ["dead"] * EVENTS
    assert [d["last_error"] for d in hostile] == ["HTTP 500"] * EVENTS
    assert _bodies(conn, hostile) == ["x" * BODY_LIMIT] * EVENTS


async def test_headers_then_silence(conn: Conn, database_url: str, receiver: Receiver) -> None:
    """Status line and headers, then nothing: a timeout after timeout_ms (not a success, not a
    slot held forever)."""
    receiver.script("/bad", [_Silent()])
    _, hostile = await _beside_healthy(
        conn, database_url, receiver, receiver.url("/bad"), timeout_ms=500
    )
    assert [d["status"] for d in hostile] == ["dead"] * EVENTS
    assert [d["last_error"] for d in hostile] == ["timeout after 500 ms"] * EVENTS
    for d in hostile:
        (a,) = attempts(conn, d["id"])
        assert 500 <= a["duration_ms"] < 5000


async def test_reset_after_headers(conn: Conn, database_url: str, receiver: Receiver) -> None:
    """A 200 status line, then a reset before the chunked body: a failed attempt."""
    receiver.script("/bad", [_ResetAfterHeaders()])
    _, hostile = await _beside_healthy(conn, database_url, receiver, receiver.url("/bad"))
    assert [d["status"] for d in hostile] == ["dead"] * EVENTS
    assert all(d["last_error"] for d in hostile)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 abc Weird\r\n\r\n",
        b"\x00\x01\x02 garbage \xff\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Bad: \xff\xfe\x00\r\n\r\nhello",
    ],
    ids=["bad-status", "garbage", "bad-header"],
)
async def test_invalid_status_line(
    conn: Conn, database_url: str, receiver: Receiver, answer: bytes
) -> None:
    """An answer that is not HTTP: a failed attempt whose error is storable text."""
    async with raw_server(answer) as url:
        _, hostile = await _beside_healthy(conn, database_url, receiver, url)
    assert [d["status"] for d in hostile] == ["dead"] * EVENTS
    assert all(d["last_error"] for d in hostile)
