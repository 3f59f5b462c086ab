"""A stoppable TCP proxy, to cut a client's network path to Postgres in fault tests.

    with TcpProxy("127.0.0.1", 5432) as proxy:
        url = proxy.rewrite(database_url)   # the same database, through the proxy
        ...
        proxy.stop()      # listener closed and every proxied connection reset
        proxy.restart()   # listening again on the same port

The proxy runs an asyncio loop in a daemon thread, so sync and async tests drive it the
same way and a test's own event loop never has to pump it. Stopping resets connections
(RST, not FIN) because that is what a dead network or a crashed server looks like to
psycopg: the next statement fails at once instead of waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

__all__ = ["TcpProxy"]

T = TypeVar("T")

_CHUNK = 65536


class TcpProxy:
    """Forward 127.0.0.1:<port> to ``target_host:target_port`` until stopped.

    A ``target_host`` that is a directory is a Unix-socket server (libpq's convention: the
    socket is ``<dir>/.s.PGSQL.<port>``), such as the embedded Postgres the tests fall back
    to; clients still reach the proxy over TCP.
    """

    def __init__(self, target_host: str, target_port: int, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- public API (thread-safe: each call runs on the proxy's loop)

    @property
    def listening(self) -> bool:
        """Whether the proxy accepts new connections."""
        return self._server is not None

    @property
    def connections(self) -> int:
        """How many client connections are being forwarded now."""
        return len(self._writers) // 2

    def start(self) -> int:
        """Listen (on the previous port after a stop, else an ephemeral one); return the port."""
        if self._loop is None:
            self._start_loop()
        self.port = self._call(self._listen())
        return self.port

    def stop(self) -> None:
        """Close the listener and reset every connection passing through."""
        if self._loop is not None:
            self._call(self._stop())

    def restart(self) -> int:
        """Listen again on the same port, after ``stop``; return the port."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, then end the proxy's thread. The proxy cannot be started again."""
        if self._loop is None:
            return
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(5)
        self._loop.close()
        self._loop = None
        self._thread = None

    def rewrite(self, conninfo: str) -> str:
        """``conninfo`` (URL or key=value) pointed at this proxy instead of its host/port."""
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        params = conninfo_to_dict(conninfo)
        params["host"] = self.listen_host
        params["port"] = str(self.port)
        params.pop("hostaddr", None)
        return make_conninfo(**params)  # type: ignore[arg-type]

    def __enter__(self) -> TcpProxy:
        if not self.listening:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- internals (run on the proxy's loop)

    def _start_loop(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="tcp-proxy", daemon=True)
        self._thread.start()
        ready.wait(5)
        self._loop = loop

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> int:
        if self._server is None:
            # reuse_address (asyncio's default on Unix) lets a restart bind the same port
            # while connections reset by stop() linger in TIME_WAIT.
            self._server = await asyncio.start_server(
                self._accept, self.listen_host, self.port, reuse_address=True
            )
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            _abort(writer)
        self._writers.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            # After close() and the aborts nothing is left for wait_closed() to wait on.
            await server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.target_host.startswith("/"):
                up_reader, up_writer = await asyncio.open_unix_connection(
                    f"{self.target_host}/.s.PGSQL.{self.target_port}"
                )
            else:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port
                )
        except OSError:
            _abort(writer)
            return
        if self._server is None:  # stopped while we were connecting upstream
            _abort(writer)
            _abort(up_writer)
            return
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer)),
        ]
        for task in pumps:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # When either side ends, end both: a half-open proxied connection helps no test.
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        for w in (writer, up_writer):
            self._writers.discard(w)
            with contextlib.suppress(Exception):
                w.close()

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(_CHUNK):
                writer.write(data)
                await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, discarding anything unsent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
