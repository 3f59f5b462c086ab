"""A minimal, fast webhook receiver for the benchmark, run as its own process.

    python -m bench.receiver [--port 0] [--fail-every N] [--fail-status 500]

prints ``LISTENING <port>`` once it accepts connections. It is aiohttp's low-level server
(no router, no middleware, no access log) answering ``204`` with no body. Nothing is written
per request: it keeps, in memory, for every webhook request, the event key ``k`` and the
emit timestamp ``t`` carried in the JSON payload, the arrival time (``time.time()`` after the
body was read), the path and whether it answered 2xx.

Failure injection (retry-storm scenario): with ``--fail-every N`` every request whose event
key is a multiple of N is answered ``--fail-status`` -- the same event fails on every attempt
(keyed, not counted), so its retries fail too and the delivery ends ``dead``. With
``--fail-nth N`` every Nth request (by arrival, whatever its event) fails instead: exactly
1 in N requests, and a retry usually succeeds.

Control endpoints (never counted), all under ``/_bench/``:

- ``GET  /_bench/stats``          -> JSON ``{count, ok, failed, first, last, paths}``
- ``POST /_bench/dump?file=PATH`` -> writes the arrays to ``PATH`` (see :func:`write_dump`)
- ``POST /_bench/reset``          -> forgets everything received so far
- ``POST /_bench/config?fail_every=N`` -> changes failure injection at run time

Only 127.0.0.1 is ever bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import struct
import time
from array import array
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.web_server import Server

CONTROL = "/_bench/"
# Dump file layout: header (magic, count), then count x int64 keys, count x float64 arrival,
# count x float64 payload t, count x int8 ok, count x int16 path index; then the paths as JSON.
MAGIC = b"RLYBENCH1"


class State:
    def __init__(self, fail_every: int, fail_status: int, fail_nth: int = 0) -> None:
        self.fail_every = fail_every
        self.fail_status = fail_status
        self.fail_nth = fail_nth
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
            raise ValueError(f"{path}: not a bench receiver dump")
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


async def serve(args: argparse.Namespace) -> None:
    state = State(args.fail_every, args.fail_status, args.fail_nth)
    no_content = 204
    now = time.time
    loads = json.loads

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
        ix = state.paths.get(path)
        if ix is None:
            ix = state.paths[path] = len(state.paths)
            state.path_counts.append(0)
        state.path_counts[ix] += 1
        fail = (state.fail_every > 0 and key % state.fail_every == 0) or (
            state.fail_nth > 0 and (len(state.keys) + 1) % state.fail_nth == 0
        )
        state.keys.append(key)
        state.arrivals.append(arrived)
        state.stamps.append(stamp)
        state.ok.append(0 if fail else 1)
        state.path_ix.append(ix)
        if fail:
            return web.Response(status=state.fail_status)
        state.n_ok += 1
        return web.Response(status=no_content)

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

    server = Server(handle, access_log=None)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(server, "127.0.0.1", args.port, backlog=1024)
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


def main() -> None:
    parser = argparse.ArgumentParser(description="relay benchmark receiver (204, in-memory log)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--fail-every",
        type=int,
        default=0,
        help="answer --fail-status to every event whose key is a multiple of N",
    )
    parser.add_argument(
        "--fail-nth",
        type=int,
        default=0,
        help="answer --fail-status to every Nth request (by arrival, whatever the event)",
    )
    parser.add_argument("--fail-status", type=int, default=500)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
