"""Shared fixtures: a real Postgres, and one freshly migrated database per test.

Where the server comes from, in order:
1. ``RELAY_TEST_DATABASE_URL`` (CI sets it to the machine's Postgres);
2. testcontainers, if a Docker engine answers;
3. an embedded Postgres from the ``pgserver`` package.

The schema is migrated once into a template database; each test gets
``CREATE DATABASE ... TEMPLATE`` of it (a file copy: milliseconds, not a migration run).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from relay.sql.migrate import migrate

pytest_plugins = ["tests.fixtures_receiver"]

TEMPLATE_DB = f"relay_test_template_{os.getpid()}"


def _with_db(url: str, dbname: str) -> str:
    """``url`` pointing at database ``dbname`` (works for URLs with query strings too)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


@contextlib.contextmanager
def _docker_postgres() -> Iterator[str]:
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:15-alpine", driver=None) as pg:
        yield pg.get_connection_url()


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """A maintenance URL (database ``postgres``) of a real Postgres server."""
    url = os.environ.get("RELAY_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_answers():
        with _docker_postgres() as url:
            yield url
        return
    import pgserver

    datadir = tempfile.mkdtemp(prefix="relay-test-pg-")
    server = pgserver.get_server(datadir, cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def _admin(server_url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(_with_db(server_url, "postgres"), autocommit=True)


@pytest.fixture(scope="session")
def template_url(server_url: str) -> Iterator[str]:
    with _admin(server_url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB))
        )
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    url = _with_db(server_url, TEMPLATE_DB)
    with psycopg.connect(url) as conn:
        migrate(conn)
    yield url
    with _admin(server_url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE_DB))
        )


@pytest.fixture
def database_url(server_url: str, template_url: str) -> Iterator[str]:
    """A URL of a fresh database, already migrated, dropped after the test."""
    name = f"relay_test_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as admin:
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
            )
        )
    yield _with_db(server_url, name)
    with _admin(server_url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A URL of a fresh database with no relay schema (for migration tests)."""
    name = f"relay_test_empty_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield _with_db(server_url, name)
    with _admin(server_url) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit connection to the test's database."""
    with psycopg.connect(database_url, autocommit=True) as c:
        yield c
