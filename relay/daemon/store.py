"""The daemon's narrow port to Postgres: every SQL statement ``relay run`` executes.

:class:`Store` is the port the loops depend on (a Protocol: the unit tests give them a scripted
one); :class:`PgStore` is the real one. Callers get plain dataclasses and
:class:`relay.errors.DatabaseError`; psycopg never leaks past this module. Each method is one
short transaction (autocommit connections from the pool): no transaction ever spans an HTTP
call.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.abc import Buffer
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from relay import __version__, crypto
from relay.errors import DatabaseError, database_error
from relay.pgprepare import prepare_kwargs
from relay.sql import EXACT_COUNT_BELOW, q

# How long to wait for a pooled connection before calling the database unavailable.
POOL_TIMEOUT = 5.0
# Advisory lock key: one relay vacuums at a time.
_VACUUM_LOCK = 0x72656C6176  # "relav"


# Not frozen (nothing mutates it): a frozen dataclass sets each field through
# object.__setattr__, which makes building one markedly dearer, once per delivery or attempt.
@dataclass(slots=True)
class Job:
    """A leased delivery with everything needed to attempt it."""

    id: int
    token: uuid.UUID
    attempts: int
    failures: int
    outbox_id: int
    event_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    version: str
    tenant_id: str | None
    created_at: datetime
    subscription_id: int
    url: str
    method: str
    headers: dict[str, str]
    event_names: dict[str, str]
    body_map: str | None
    secret: str | None
    previous_secret: str | None
    max_retries: int
    backoff_ms: int
    timeout_ms: int


# Not frozen, like relay.store.Job (built once per attempt).
@dataclass(slots=True)
class Ack:
    """The outcome of one attempt, to be written by :meth:`Store.ack`."""

    id: int
    token: uuid.UUID
    outcome: str  # 'delivered' | 'retry' | 'dead'
    delay: float  # seconds until the retry (outcome 'retry' only)
    status_code: int | None
    error: str | None
    started_at: datetime
    duration_ms: float
    response_body: str | None


@dataclass(frozen=True, slots=True)
class Stats:
    outbox_backlog: int
    deliveries_pending: int
    deliveries_dead: int
    oldest_pending_age: float
    relays_seen: int
    #: enabled subscriptions, read live (not a shared gauge): the dispatcher needs it
    subscriptions_active: int = 0


class Store(Protocol):
    """What the daemon's loops ask of the database (:class:`PgStore` answers it)."""

    async def dispatch(
        self, limit: int, lease_limit: int = 0, lease_seconds: float = 60.0
    ) -> tuple[int, int, list[Job]]:
        """Fan out up to ``limit`` outbox rows, leasing up to ``lease_limit`` new deliveries;
        return (rows dispatched, deliveries created, leased jobs)."""
        ...

    async def claim(
        self, limit: int, lease_seconds: float, saturated: Sequence[int] = ()
    ) -> list[Job]:
        """Lease up to ``limit`` due deliveries, skipping ``saturated`` subscriptions."""
        ...

    async def ack(self, acks: Sequence[Ack]) -> set[int]:
        """Record attempt outcomes; return the ids whose lease was still ours."""
        ...

    async def release(self, jobs: Sequence[tuple[int, uuid.UUID]]) -> int:
        """Give leased deliveries back, due now; return how many were still ours."""
        ...

    async def seconds_until_due(self, saturated: Sequence[int] = ()) -> float | None:
        """Until the next delivery this relay could claim falls due (<= 0: due already)."""
        ...

    async def schema_version(self) -> int | None:
        """The applied schema version (None: relay's schema is not there)."""
        ...

    async def ping(self) -> None:
        """Raise :class:`DatabaseError` unless the database answers."""
        ...

    async def heartbeat(self) -> None:
        """Record that this relay is alive."""
        ...

    async def stats(self, interval: float) -> Stats:
        """The shared gauges (recomputed if older than ``interval`` s)."""
        ...

    async def vacuum_if_needed(self, min_dead: int, min_interval: float) -> list[str]:
        """VACUUM the queue tables whose dead rows piled up; return those vacuumed."""
        ...

    async def prune_deliveries(self, older_than: float, limit: int) -> tuple[bool, int, int]:
        """One batch of finished deliveries pruned: (this relay's turn, deliveries, attempts)."""
        ...

    async def prune_outbox(
        self, older_than: float, limit: int, after: int
    ) -> tuple[bool, int, int | None, bool]:
        """One batch of the outbox walk (see :meth:`PgStore.prune_outbox`)."""
        ...

    async def history_bytes(self) -> dict[str, int]:
        """``{table: bytes}`` of the history tables."""
        ...

    async def deregister(self) -> None:
        """Remove this relay from the relays seen (at shutdown)."""
        ...


#: The job columns of the dispatch and claim statements, in order: Job's fields but the token
#: (tests/integration/test_lease.py checks both statements against it).
JOB_COLUMNS = tuple(f.name for f in dataclasses.fields(Job) if f.name != "token")


def _job(row: tuple[Any, ...], token: uuid.UUID, first: int) -> Job:
    """A Job from a tuple row whose job columns (JOB_COLUMNS) start at ``first``. Positional:
    a dict per row and a keyword call showed in profiles of the dispatch."""
    return Job(row[first], token, *row[first + 1 :])


class Undecodable(dict[str, Any]):
    """Stands in for a JSON value Python cannot decode though jsonb holds it: nested deeper
    than Python's recursion limit, or an integer over its int-string limit (``1e5000`` is
    printed by jsonb as 5,001 digits). The delivery of such an event ends dead with the
    reason, instead of the decoding error failing, and so stranding, a whole claimed batch
    (the claim has committed by the time rows are decoded)."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


# Postgres sends json/jsonb as UTF-8 text: decoded straight to str (json.loads of bytes would
# first copy them and sniff the encoding, per column and row).
_DECODER = json.JSONDecoder()
# The C scanner under JSONDecoder.decode, called directly: jsonb's text output is one value
# with no surrounding whitespace, so decode()'s two whitespace regex matches and two Python
# call layers are not needed (anything else takes the full path).
_SCAN = _DECODER.scan_once  # type: ignore[attr-defined]


def _loads(data: bytes | bytearray | memoryview | str) -> Any:
    try:
        text = data if isinstance(data, str) else str(data, "utf-8")
        if text == "{}":
            # A subscription's headers and event names are mostly empty: two of a job's
            # three jsonb columns. Each call gets its own dict (callers may fill it).
            return {}
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end == len(text):
            return value
        return _DECODER.decode(text)  # whitespace around the value, or invalid: full path
    except RecursionError:
        return Undecodable("payload is nested too deeply to decode")
    except ValueError as exc:
        # int() over sys.get_int_max_str_digits(): jsonb keeps numbers of any size.
        return Undecodable(f"payload cannot be decoded: {str(exc)[:200]}")


class _JsonTextLoader(Loader):
    """json/jsonb in text format through :func:`_loads`, without psycopg's own loader's
    copy of each value to ``bytes`` and its extra call (3 columns per leased job: about
    2 us of a delivery's CPU with the two cuts in :func:`_loads`, measured with timeit)."""

    def load(self, data: Buffer) -> Any:
        return _loads(data)


def connection_kwargs(url: str, synchronous_commit: str, prepare: bool = True) -> dict[str, Any]:
    """The pool's connection arguments: autocommit, relay's ``synchronous_commit``, and no
    server-side prepared statements unless ``prepare`` (:mod:`relay.pgprepare`).

    The setting travels as a startup option (``-c synchronous_commit=off``) rather than a
    ``SET``: behind a transaction pooler a session ``SET`` would stay on a server connection
    that the application's own transactions use next, making *their* commits asynchronous.
    A pooler refuses (or ignores) the option instead. ``on`` sends nothing.
    """
    kwargs: dict[str, Any] = {"autocommit": True, **prepare_kwargs(prepare)}
    if synchronous_commit != "on":
        given = conninfo_to_dict(url).get("options") or ""
        kwargs["options"] = f"{given} -c synchronous_commit={synchronous_commit}".strip()
    return kwargs


class Unopenable(dict[str, str]):
    """Stands in for the headers of a job whose credentials cannot be decrypted (no
    RELAY_ENCRYPTION_KEY, or not the key they were encrypted with): its attempt fails with
    ``reason`` and nothing is sent, instead of sending ciphertext or failing the batch."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


def _open_credentials(jobs: list[Job], keyring: crypto.Keyring | None) -> list[Job]:
    """Decrypt the jobs' secrets and header values (plain ones pass through), in place.

    Here, after the rows are fetched, so the claim SQL stays unaware of encryption; the
    keyring caches each ciphertext's plain text, so a subscription costs one decryption.
    """
    for job in jobs:
        try:
            if job.headers:
                job.headers = crypto.open_headers(job.headers, keyring)
            if job.secret is not None:
                job.secret = crypto.open_value(job.secret, keyring)
            if job.previous_secret is not None:
                job.previous_secret = crypto.open_value(job.previous_secret, keyring)
        except crypto.CredentialsError as exc:
            job.headers = Unopenable(str(exc))
            job.secret = job.previous_secret = None
    return jobs


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(_loads, conn)  # binary format too
    for name in ("json", "jsonb"):
        conn.adapters.register_loader(name, _JsonTextLoader)


class PgStore:
    """The :class:`Store` of ``relay run``: relay's tables through a psycopg connection pool."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 8,
        relay_id: str,
        synchronous_commit: str = "on",
        prepare: bool = True,
    ) -> None:
        self.url = url
        self.relay_id = relay_id
        # RELAY_ENCRYPTION_KEY (None: credentials are stored, and read, in plain text).
        self.keyring = crypto.load_keyring()
        self.pool = AsyncConnectionPool(
            url,
            min_size=min(2, pool_size),
            max_size=pool_size,
            kwargs=connection_kwargs(url, synchronous_commit, prepare),
            open=False,
            configure=_configure,
            name="relay",
            timeout=POOL_TIMEOUT,
        )

    async def open(self) -> None:
        # wait=False: a database that is down at start is retried in the background and
        # reported on /readyz instead of crashing the service into a restart loop.
        await self.pool.open(wait=False)

    async def close(self) -> None:
        # Short: at shutdown nothing is worth waiting for a dead database.
        await self.pool.close(timeout=1.0)

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        try:
            async with self.pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            # Includes the pool's own PoolTimeout/PoolClosed (psycopg.OperationalError).
            raise database_error(exc) from exc

    async def schema_version(self) -> int | None:
        async with self._conn() as conn:
            cur = await conn.execute("SELECT to_regclass('relay.migrations') IS NOT NULL")
            row = await cur.fetchone()
            if not row or not row[0]:
                return None
            cur = await conn.execute(q("schema_version"))
            row = await cur.fetchone()
            return None if row is None else row[0]

    async def ping(self) -> None:
        """``SELECT 1`` on a pooled connection. One that the server closed while it sat idle
        (a restart, pg_terminate_backend) fails once and is dropped by the pool; the next
        one answers, so only a database that really does not is reported down."""
        tries = self.pool.max_size + 1  # every idle connection may have been closed
        for attempt in range(tries):
            try:
                async with self._conn() as conn:
                    await conn.execute("SELECT 1")
                return
            except DatabaseError:
                if attempt == tries - 1:
                    raise

    async def dispatch(
        self, limit: int, lease_limit: int = 0, lease_seconds: float = 60.0
    ) -> tuple[int, int, list[Job]]:
        """Fan out up to ``limit`` outbox rows, leasing up to ``lease_limit`` new deliveries.

        Returns (rows dispatched, deliveries created, leased jobs).
        """
        token = uuid.uuid4()
        params = {
            "limit": limit,
            "lease_limit": lease_limit,
            "owner": self.relay_id,
            "token": token,
            "lease_seconds": lease_seconds,
        }
        async with self._conn() as conn:
            cur = await conn.execute(q("dispatch_outbox"), params)
            rows = await cur.fetchall()
        # (dispatched, deliveries, then a job's columns; one row with no job if none leased)
        dispatched, created = int(rows[0][0]), int(rows[0][1])
        jobs = [_job(row, token, 2) for row in rows if row[2] is not None]
        return dispatched, created, _open_credentials(jobs, self.keyring)

    async def claim(
        self, limit: int, lease_seconds: float, saturated: Sequence[int] = ()
    ) -> list[Job]:
        """Lease up to ``limit`` due deliveries, skipping ``saturated`` subscriptions."""
        token = uuid.uuid4()
        params = {
            "limit": limit,
            "saturated": list(saturated),
            "owner": self.relay_id,
            "token": token,
            "lease_seconds": lease_seconds,
        }
        async with self._conn() as conn:
            cur = await conn.execute(q("claim_deliveries"), params)
            rows = await cur.fetchall()
        return _open_credentials([_job(row, token, 0) for row in rows], self.keyring)

    async def ack(self, acks: Sequence[Ack]) -> set[int]:
        """Record attempt outcomes in one statement; return the ids whose lease was still ours."""
        if not acks:
            return set()
        params = {
            "ids": [a.id for a in acks],
            "tokens": [a.token for a in acks],
            "outcomes": [a.outcome for a in acks],
            "delays": [a.delay for a in acks],
            "codes": [a.status_code for a in acks],
            "errors": [a.error for a in acks],
            "started": [a.started_at for a in acks],
            "durations": [a.duration_ms for a in acks],
            "bodies": [a.response_body for a in acks],
            "relay_id": self.relay_id,
        }
        async with self._conn() as conn:
            cur = await conn.execute(q("ack_deliveries"), params)
            return {row[0] for row in await cur.fetchall()}

    async def release(self, jobs: Sequence[tuple[int, uuid.UUID]]) -> int:
        """Give leased deliveries back, due now; return how many were still ours."""
        if not jobs:
            return 0
        params = {"ids": [j[0] for j in jobs], "tokens": [j[1] for j in jobs]}
        async with self._conn() as conn:
            cur = await conn.execute(q("release_deliveries"), params)
            return len(await cur.fetchall())

    async def seconds_until_due(self, saturated: Sequence[int] = ()) -> float | None:
        """Until the next delivery this relay could claim falls due (<= 0: due already)."""
        async with self._conn() as conn:
            cur = await conn.execute(q("seconds_until_due"), {"saturated": list(saturated)})
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def heartbeat(self) -> None:
        params = {
            "relay_id": self.relay_id,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
        }
        async with self._conn() as conn:
            await conn.execute(q("heartbeat"), params)

    async def vacuum_if_needed(self, min_dead: int, min_interval: float) -> list[str]:
        """VACUUM relay's queue tables whose dead rows piled up; return the ones vacuumed.

        One relay at a time (a session advisory lock on the pooled connection): the others
        skip. VACUUM takes no lock that blocks claims, acks or the apps' inserts.
        """
        done: list[str] = []
        async with self._conn() as conn:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", (_VACUUM_LOCK,))
            row = await cur.fetchone()
            if not row or not row[0]:
                return done
            try:
                cur = await conn.execute(
                    q("tables_needing_vacuum"),
                    {"min_dead": min_dead, "min_interval": min_interval},
                )
                for (table,) in await cur.fetchall():
                    await conn.execute(
                        sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier("relay", table))
                    )
                    done.append(str(table))
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_VACUUM_LOCK,))
        return done

    async def unpark_ordered_heads(self) -> int:
        """Make due every parked head of an ordered subscription's aggregate that nothing
        holds back (a safety net: acks promote the next delivery themselves); return how many."""
        async with self._conn() as conn:
            cur = await conn.execute(q("unpark_ordered_heads"))
            row = await cur.fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    async def deregister(self) -> None:
        async with self._conn() as conn:
            await conn.execute(q("deregister"), {"relay_id": self.relay_id})

    async def stats(self, interval: float) -> Stats:
        """Shared gauges: recompute if stale (one relay per interval wins), then read."""
        async with self._conn() as conn:
            await conn.execute(
                q("refresh_stats"),
                {
                    "relay_id": self.relay_id,
                    "interval": interval,
                    "exact_below": EXACT_COUNT_BELOW,
                },
            )
            cur = await conn.execute(q("read_stats"))
            row = await cur.fetchone()
        assert row is not None
        return Stats(int(row[0]), int(row[1]), int(row[2]), float(row[3]), int(row[4]), int(row[5]))

    # -- retention (relay/daemon/pruner.py) ---------------------------------------------------
    async def prune_deliveries(self, older_than: float, limit: int) -> tuple[bool, int, int]:
        """One batch: delete up to ``limit`` delivered and ``limit`` dead deliveries that ended
        over ``older_than`` seconds ago, with their attempts. Returns (it was this relay's
        turn, deliveries deleted, attempts deleted)."""
        params = {"older_than": older_than, "limit": limit}
        async with self._conn() as conn:
            cur = await conn.execute(q("prune_deliveries"), params)
            row = await cur.fetchone()
        assert row is not None
        return bool(row[0]), int(row[1]), int(row[2])

    async def prune_outbox(
        self, older_than: float, limit: int, after: int
    ) -> tuple[bool, int, int | None, bool]:
        """One batch of the outbox walk: look at ``limit`` rows after id ``after``. Returns
        (our turn, rows deleted, last id looked at, the walk reached rows too young)."""
        params = {"older_than": older_than, "limit": limit, "after": after}
        async with self._conn() as conn:
            cur = await conn.execute(q("prune_outbox"), params)
            row = await cur.fetchone()
        assert row is not None
        last = None if row[2] is None else int(row[2])
        return bool(row[0]), int(row[1]), last, bool(row[4]) or int(row[3]) < limit

    async def history_bytes(self) -> dict[str, int]:
        """``{table: bytes}`` of the history tables (table, indexes and TOAST)."""
        async with self._conn() as conn:
            cur = await conn.execute(q("history_bytes"))
            return {str(name): int(size) for name, size in await cur.fetchall()}
