"""The TCP proxy used to cut the database network in fault tests."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from tests.proxy import TcpProxy


def _target(url: str) -> tuple[str, int]:
    """Where the test server listens: TCP, or the Unix-socket directory of the embedded one."""
    params = conninfo_to_dict(url)
    return str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432)


def _select_one(url: str) -> object:
    with psycopg.connect(url, connect_timeout=5, autocommit=True) as c:
        row = c.execute("SELECT 1").fetchone()
        return row[0] if row else None


def test_connection_through_proxy_works_dies_and_recovers(server_url: str) -> None:
    with TcpProxy(*_target(server_url)) as proxy:
        url = proxy.rewrite(server_url)
        assert conninfo_to_dict(url)["port"] == str(proxy.port)

        conn = psycopg.connect(url, connect_timeout=5, autocommit=True)
        try:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            assert proxy.connections == 1
            port = proxy.port

            proxy.stop()
            assert not proxy.listening
            # The established connection is cut, not merely the listener closed.
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 1")
            assert conn.closed
            # And no new connection gets through while stopped.
            with pytest.raises(psycopg.OperationalError):
                _select_one(url)

            assert proxy.restart() == port
            assert _select_one(url) == 1
        finally:
            conn.close()


async def test_async_connection_is_cut(server_url: str) -> None:
    """The proxy's own thread serves it: an async test's loop need not pump anything."""
    with TcpProxy(*_target(server_url)) as proxy:
        url = proxy.rewrite(server_url)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SELECT 2")
            assert await cur.fetchone() == (2,)
            proxy.stop()
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("SELECT 2")
        proxy.start()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            cur = await conn.execute("SELECT 3")
            assert await cur.fetchone() == (3,)


def test_large_results_pass_intact(server_url: str) -> None:
    with TcpProxy(*_target(server_url)) as proxy:
        with psycopg.connect(proxy.rewrite(server_url), autocommit=True) as conn:
            row = conn.execute("SELECT repeat('x', 5000000)").fetchone()
        assert row is not None and len(str(row[0])) == 5_000_000


def test_close_is_idempotent_and_stop_before_start_is_harmless() -> None:
    proxy = TcpProxy("127.0.0.1", 1)
    proxy.stop()
    proxy.close()
    proxy.start()
    proxy.close()
    proxy.close()
