"""The benchmark's lean receiver (``receiver_process --lean``): same answers and records as
the aiohttp one, over keep-alive, without parsing the body as JSON."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from bench.harness import ReceiverProc
from relay.webhook.body import build_notification, dumps


async def _post_all(url: str, bodies: list[bytes]) -> list[int]:
    # One connection: every request after the first rides the same keep-alive socket.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:

        async def one(body: bytes) -> int:
            async with session.post(url, data=body) as resp:
                await resp.read()
                return resp.status

        return list(await asyncio.gather(*(one(b) for b in bodies)))


def _body(k: int, t: float) -> bytes:
    return dumps(build_notification("order.created", "v1", {"k": k, "t": t, "x": "y"}, {})).encode()


@pytest.mark.parametrize("lean", [True, False])
def test_records_key_stamp_path_and_failures(tmp_path: Path, lean: bool) -> None:
    with ReceiverProc(workdir=tmp_path, fail_every=3, lean=lean) as rx:
        assert rx.lean is lean
        bodies = [_body(k, 1000.5 + k) for k in range(1, 8)]
        statuses = asyncio.run(_post_all(rx.url("/hook/a"), bodies))
        statuses += asyncio.run(_post_all(rx.url("/hook/b?x=1"), [b"not json", b""]))
        assert statuses == [204, 204, 500, 204, 204, 500, 204, 204, 204]
        stats = rx.stats()
        assert (stats["count"], stats["ok"], stats["failed"]) == (9, 7, 2)
        assert stats["paths"] == {"/hook/a": 7, "/hook/b": 2}
        dump = rx.dump()
        assert list(dump["keys"]) == [1, 2, 3, 4, 5, 6, 7, -1, -1]
        assert list(dump["stamps"])[:3] == [1001.5, 1002.5, 1003.5]
        assert list(dump["ok"]) == [1, 1, 0, 1, 1, 0, 1, 1, 1]
        rx.reset()
        assert rx.stats()["count"] == 0


def test_lean_reads_a_body_split_across_packets(tmp_path: Path) -> None:
    async def split() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
        body = _body(42, 7.25)
        head = f"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        for part in (head[:10], head[10:] + body[:5], body[5:]):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        line = await reader.readline()
        writer.close()
        return line

    with ReceiverProc(workdir=tmp_path, lean=True) as rx:
        assert asyncio.run(split()).startswith(b"HTTP/1.1 204")
        assert list(rx.dump()["keys"]) == [42]
