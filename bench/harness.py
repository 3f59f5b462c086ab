"""Plumbing shared by the scenarios: databases, the receiver and relay processes, timing."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from relay.sql.migrate import migrate
from relay.testing.receiver_process import read_dump, read_line
from tests.procs import terminate

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- databases


def with_db(url: str, dbname: str) -> str:
    params = conninfo_to_dict(url)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(with_db(server_url, "postgres"), autocommit=True)


class Databases:
    """Creates one fresh, migrated database per scenario and drops them (unless ``keep``)."""

    def __init__(self, server_url: str, keep: bool = False) -> None:
        self.server_url = server_url
        self.keep = keep

    @contextlib.contextmanager
    def fresh(self, label: str, code_root: Path | None = None) -> Iterator[str]:
        """A new database migrated by this tree (or by the checkout at ``code_root``)."""
        name = f"relay_bench_{label}_{uuid.uuid4().hex[:8]}"
        with _admin(self.server_url) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = with_db(self.server_url, name)
        try:
            if code_root is None:
                with psycopg.connect(url) as conn:
                    migrate(conn)
            else:
                from bench.round6 import migrate_with

                migrate_with(code_root, url)
            yield url
        finally:
            if self.keep:
                log(f"kept database {name}")
            else:
                with _admin(self.server_url) as admin:
                    admin.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(name)
                        )
                    )


def add_subscriptions(
    url: str,
    urls: list[str],
    *,
    backoff_ms: int = 5000,
    max_retries: int = 3,
    events: tuple[str, ...] = (),
) -> list[int]:
    """Plain INSERTs (no CLI process per subscription): every one matches ``events``."""
    ids = []
    with psycopg.connect(url, autocommit=True) as conn:
        for target in urls:
            row = conn.execute(
                "INSERT INTO relay.subscriptions (url, events, backoff_ms, max_retries)"
                " VALUES (%s, %s, %s, %s) RETURNING id",
                (target, list(events), backoff_ms, max_retries),
            ).fetchone()
            assert row is not None
            ids.append(int(row[0]))
    return ids


# Payload of every bench event: ``k`` identifies it, ``t`` is the emit-time wall clock.
BACKLOG_SQL = """
INSERT INTO relay.outbox (event_type, payload, aggregate_id)
SELECT 'order.created',
       jsonb_build_object('k', g, 't', extract(epoch FROM clock_timestamp())::float8,
                          'orderId', 'ord-' || g, 'customerId', 'cus-' || (g %% 997),
                          'amount', 42.5, 'currency', 'EUR', 'items', 3),
       'ord-' || g
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""


def sample_payload(k: int) -> dict[str, Any]:
    """The same fields as :data:`BACKLOG_SQL` builds, for client-side emits and the ceiling."""
    return {
        "k": k,
        "t": time.time(),
        "orderId": f"ord-{k}",
        "customerId": f"cus-{k % 997}",
        "amount": 42.5,
        "currency": "EUR",
        "items": 3,
    }


def insert_backlog(url: str, n: int, first: int = 1) -> float:
    """One ``generate_series`` INSERT of ``n`` outbox rows; returns the seconds it took."""
    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(BACKLOG_SQL, {"first": first, "last": first + n - 1})
        conn.execute("ANALYZE relay.outbox")
    return time.perf_counter() - t0


def delivery_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM relay.deliveries GROUP BY status"
        ).fetchall()
        out = {str(r[0]): int(r[1]) for r in rows}
        row = conn.execute("SELECT count(*) FROM relay.delivery_attempts").fetchone()
        out["attempts"] = int(row[0]) if row else 0
        row = conn.execute(
            "SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL"
        ).fetchone()
        out["undispatched"] = int(row[0]) if row else 0
    return out


def table_sizes(url: str) -> dict[str, int]:
    names = [
        "relay.outbox",
        "relay.outbox_undispatched",
        "relay.deliveries",
        "relay.deliveries_due",
        "relay.delivery_attempts",
    ]
    sizes: dict[str, int] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for n in names:
            row = conn.execute("SELECT pg_relation_size(%s::regclass)", (n,)).fetchone()
            assert row is not None
            sizes[n] = int(row[0])
    return sizes


# --------------------------------------------------------------------------- processes


# The receiver's mode for every scenario: lean (uvloop, no JSON parse) unless the runner's
# --aiohttp-receiver asks for the old aiohttp one (to measure what the yardstick itself costs).
RECEIVER_LEAN = True


class ReceiverProc:
    """The receiver (``python -m relay.testing.receiver_process``, no log) in its own
    process, driven over its control endpoints; ``--lean`` unless :data:`RECEIVER_LEAN`
    is off."""

    def __init__(
        self,
        fail_every: int = 0,
        workdir: Path | None = None,
        fail_nth: int = 0,
        lean: bool | None = None,
    ) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="relay-bench-"))
        self.err_path = self.workdir / f"receiver-{uuid.uuid4().hex[:6]}.stderr"
        args = [sys.executable, "-m", "relay.testing.receiver_process", "--port", "0"]
        self.lean = RECEIVER_LEAN if lean is None else lean
        if self.lean:
            args.append("--lean")
        if fail_every:  # by event key: the same events fail on every attempt
            args += ["--fail-event-every", str(fail_every)]
        if fail_nth:  # by arrival
            args += ["--fail-every", str(fail_nth)]
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                args, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
            )
        try:
            assert self.proc.stdout is not None
            line = read_line(self.proc.stdout, 20.0)
            self.port = int(line.split()[1])
        except Exception as exc:
            self.stop()
            raise RuntimeError(
                f"receiver failed to start: {exc}\n{self.err_path.read_text(errors='replace')}"
            ) from exc

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _call(self, what: str, method: str = "GET", timeout: float = 60.0) -> dict[str, Any]:
        req = urllib.request.Request(self.url(f"/_bench/{what}"), method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            result: dict[str, Any] = json.loads(resp.read())
            return result

    def stats(self) -> dict[str, Any]:
        return self._call("stats")

    def reset(self) -> None:
        self._call("reset", "POST")

    def dump(self) -> dict[str, Any]:
        path = self.workdir / f"dump-{uuid.uuid4().hex[:8]}.bin"
        self._call(f"dump?file={path}", "POST", timeout=300.0)
        try:
            return read_dump(path)
        finally:
            path.unlink(missing_ok=True)

    def stop(self) -> None:
        terminate(self.proc, 5.0)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> ReceiverProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def vm_kb(pid: int, field: str) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


class RelayProc:
    """``python -m relay run`` as a subprocess, configured only through RELAY_* variables.

    ``module="bench.bare"`` runs the bare reference loop the same way instead.

    A sampler thread keeps the highest VmHWM/VmRSS seen (VmHWM is the kernel's own peak, so
    sampling only guards against the process exiting before the last read).
    """

    def __init__(
        self,
        db_url: str,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
        py_spy: Path | None = None,
        label: str = "relay",
        module: str = "relay",
        args: tuple[str, ...] = (),
        code_root: Path | None = None,
    ) -> None:
        env = dict(os.environ)
        # Another checkout's relay (bench --compare): run from its tree, first on sys.path.
        root = code_root or ROOT
        if code_root is not None:
            env["PYTHONPATH"] = str(code_root)
        env.update(
            {
                "RELAY_DATABASE_URL": db_url,
                "RELAY_ALLOWED_NETWORKS": "127.0.0.0/8",
                "RELAY_METRICS_ADDR": "127.0.0.1:0",
                "RELAY_LOG_LEVEL": "warning",
            }
        )
        env.update(extra_env or {})
        self.err_path = workdir / f"{label}-{uuid.uuid4().hex[:6]}.stderr"
        with self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *(["run", *args] if module == "relay" else [])],
                cwd=root,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )
        self.started = time.time()
        self.pid = self.proc.pid
        self.hwm_kb = 0
        self.rss_kb = 0
        self.cpu_s: float | None = None
        self._stop_sampling = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self.spy: subprocess.Popen[bytes] | None = None
        if py_spy is not None:
            spy_bin = Path(sys.executable).parent / "py-spy"
            if spy_bin.exists():
                py_spy.mkdir(parents=True, exist_ok=True)
                out = py_spy / f"{label}-{self.pid}.txt"
                self.spy = subprocess.Popen(
                    [
                        str(spy_bin),
                        "record",
                        "--pid",
                        str(self.pid),
                        "--format",
                        "raw",
                        "--rate",
                        "200",
                        "--nonblocking",
                        "-o",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            else:
                log("py-spy not installed in the venv: no profile")

    def _sample(self) -> None:
        while not self._stop_sampling.wait(0.25):
            self._read_mem()

    def pids(self) -> list[int]:
        """This process and its descendants (``relay run --processes N``: the children)."""
        return [self.pid, *descendants(self.pid)]

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the relay process and its children so far."""
        times = [proc_cpu_seconds(p) for p in self.pids()]
        known = [t for t in times if t is not None]
        return sum(known) if known else None

    def _read_mem(self) -> None:
        # Per process: the largest of the supervisor's and each child's (RSS is per process).
        hwm = max((vm_kb(p, "VmHWM") or 0 for p in self.pids()), default=0)
        rss = max((vm_kb(p, "VmRSS") or 0 for p in self.pids()), default=0)
        if hwm:
            self.hwm_kb = max(self.hwm_kb, hwm)
        if rss:
            self.rss_kb = rss

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.err_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        self._read_mem()
        cpu = self.cpu_seconds()
        if cpu is not None:
            self.cpu_s = cpu
        self._stop_sampling.set()
        if self.spy is not None and self.spy.poll() is None:
            self.spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                self.spy.wait(30)
            except subprocess.TimeoutExpired:
                self.spy.kill()
        return terminate(self.proc)


@contextlib.contextmanager
def relays(db_url: str, n: int, workdir: Path, **kwargs: Any) -> Iterator[list[RelayProc]]:
    procs = [RelayProc(db_url, workdir, label=f"relay{i}", **kwargs) for i in range(n)]
    try:
        yield procs
    finally:
        for p in procs:
            code = p.stop()
            if code not in (0, None):
                log(f"relay pid {p.pid} exited {code}:\n{p.stderr_tail()}")


def wait_for(
    predicate: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    check: Callable[[], None] | None = None,
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if check is not None:
            check()
        time.sleep(interval)
    return predicate()


# --------------------------------------------------------------------------- numbers


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank-with-interpolation percentile of an already sorted list."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * p / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def listening_port(pid: int) -> int | None:
    """The TCP port ``pid`` listens on (relay's metrics server, bound to port 0), via /proc."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "0A" and cols[9] in inodes:
                    return int(cols[1].rsplit(":", 1)[1], 16)
    return None


def scrape_metrics(
    pid: int,
    prefixes: tuple[str, ...] = (
        "relay_claims_total",
        "relay_claimed_rows_total",
        "relay_delivery_attempts_total",
        "relay_fanout_deliveries_total",
        "relay_lost_lease_acks_total",
        "relay_pruned_rows_total",
    ),
) -> dict[str, float]:
    """Selected counters from the relay's /metrics (found through /proc: it binds port 0)."""
    port = listening_port(pid)
    if port is None:
        return {}
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(prefixes):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


def descendants(pid: int) -> list[int]:
    """Every descendant of ``pid`` (from /proc/PID/task/*/children), children first."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    kids = [
                        int(x) for x in Path(f"/proc/{p}/task/{task}/children").read_text().split()
                    ]
                    out.extend(kids)
                    todo.extend(kids)
    return out


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MachineCpu:
    """Busy share of all CPUs between construction and :meth:`busy` (from /proc/stat)."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        try:
            cols = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError):
            return 0, 0
        idle = cols[3] + (cols[4] if len(cols) > 4 else 0)
        return sum(cols), idle

    def busy(self) -> float | None:
        total, idle = self._read()
        dt = total - self.start[0]
        return round(1 - (idle - self.start[1]) / dt, 3) if dt > 0 else None


def wal_lsn(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    return int(row[0]) if row else 0


def xact_commits(url: str) -> int:
    """Transactions committed in this database so far (relay runs autocommit: ~statements)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def backend_cpu_seconds(url: str) -> float:
    """CPU time of the Postgres backends connected to this database (other than this one)."""
    with psycopg.connect(url, autocommit=True) as conn:
        pids = [
            r[0]
            for r in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid()"
            ).fetchall()
        ]
    return sum(c for c in (proc_cpu_seconds(p) for p in pids) if c is not None)


def loadavg() -> list[float] | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def hardware(server_url: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = vm = None
    with contextlib.suppress(OSError):
        m = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.MULTILINE)
        vm = m
    if vm:
        mem_kb = int(vm.group(1))
    pg: dict[str, Any] = {}
    with _admin(server_url) as conn:
        pg["version"] = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        for name in (
            "shared_buffers",
            "synchronous_commit",
            "fsync",
            "max_connections",
            "work_mem",
            "wal_level",
            "max_wal_size",
        ):
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            assert row is not None
            pg[name] = str(row[0])
    import aiohttp

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1) if mem_kb else None,
        "python": platform.python_version(),
        "postgres": pg["version"],
        "postgres_settings": pg,
        "aiohttp": aiohttp.__version__,
        "psycopg": psycopg.__version__,
        "kernel": platform.release(),
    }
