"""The seven benchmark scenarios. Each returns a JSON-able dict of figures.

Every scenario that touches Postgres gets its own fresh database (``CREATE DATABASE`` +
:func:`relay.migrate.migrate`), dropped afterwards. Every request goes to 127.0.0.1; every wait
is bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import statistics
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import uvloop

import relay
from bench import retention
from bench.harness import (
    Databases,
    MachineCpu,
    ReceiverProc,
    RelayProc,
    add_subscriptions,
    backend_cpu_seconds,
    delivery_counts,
    insert_backlog,
    log,
    percentile,
    proc_cpu_seconds,
    relays,
    sample_payload,
    scrape_metrics,
    table_sizes,
    wait_for,
    wal_lsn,
    xact_commits,
)
from relay.sql import q
from relay.webhook.body import build_notification, dumps

# Single-event app transactions one emitter connection is asked to commit per second (the
# latency scenarios use more connections above it).
EMITTER_RATE = 500.0


@dataclass
class Settings:
    """Sizes and knobs of one run (``--quick`` shrinks them)."""

    quick: bool = False
    ceiling_n: int = 20_000
    ceiling_concurrency: int = 64
    drain_n: int = 20_000
    latency_rate: float = 200.0
    latency_seconds: float = 20.0
    latency_high_rate: float = 2000.0
    latency_high_seconds: float = 10.0
    sync_commit_rounds: int = 2
    fanout_deliveries: int = 20_000
    scale_n: int = 1_000_000
    scale_timeout: float = 3600.0
    retry_n: int = 20_000
    retry_fail_every: int = 10
    retry_backoff_ms: int = 100
    emit_txns_batch1: int = 2000
    emit_txns_batch100: int = 100
    # retention (bench/retention.py)
    history_n: int = 10_000_000
    prune_history_n: int = 300_000
    soak_rate: float = 200.0
    soak_seconds: float = 600.0
    soak_sample_s: float = 15.0
    soak_retention: str = "120s"
    relay_env: dict[str, str] = field(default_factory=dict)
    py_spy: Path | None = None

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(
            quick=True,
            ceiling_n=5_000,
            drain_n=5_000,
            latency_seconds=5.0,
            latency_high_seconds=5.0,
            sync_commit_rounds=1,
            fanout_deliveries=5_000,
            scale_n=100_000,
            scale_timeout=900.0,
            retry_n=5_000,
            emit_txns_batch1=300,
            emit_txns_batch100=20,
            history_n=1_000_000,
            prune_history_n=100_000,
            soak_seconds=300.0,
            soak_sample_s=10.0,
            soak_retention="60s",
        )


@dataclass
class Context:
    dbs: Databases
    workdir: Path
    settings: Settings
    # What a long scenario has seen so far, kept by the runner if the run is interrupted.
    partial: dict[str, Any] = field(default_factory=dict)


class ScenarioError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers


def _check_relays(procs: list[RelayProc]) -> None:
    for p in procs:
        if not p.alive():
            raise ScenarioError(
                f"relay pid {p.pid} exited with {p.proc.returncode}:\n{p.stderr_tail()}"
            )


def _window_rate(arrivals: list[float], lo: int, hi: int) -> float | None:
    """Deliveries per second between arrival index ``lo`` and ``hi`` (inclusive)."""
    if hi <= lo or hi >= len(arrivals):
        return None
    span = arrivals[hi] - arrivals[lo]
    return (hi - lo) / span if span > 0 else None


def _ok_arrivals(dump: dict[str, Any]) -> list[float]:
    return sorted(a for a, ok in zip(dump["arrivals"], dump["ok"], strict=True) if ok)


def _duplicates(dump: dict[str, Any]) -> int:
    seen = set()
    dups = 0
    for k, ix, ok in zip(dump["keys"], dump["path_ix"], dump["ok"], strict=True):
        if not ok:
            continue
        key = (k, ix)
        if key in seen:
            dups += 1
        else:
            seen.add(key)
    return dups


def _drain(
    ctx: Context,
    db_url: str,
    rx: ReceiverProc,
    *,
    expected_ok: int,
    n_relays: int,
    timeout: float,
    label: str,
    on_poll: Any = None,
    after: Any = None,
    module: str = "relay",
    relay_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    code_root: Path | None = None,
    poll_interval: float | None = None,
) -> dict[str, Any]:
    """Start ``n_relays`` relays on a prepared backlog; wait for ``expected_ok`` 2xx arrivals.

    Rates are measured on the receiver's clock: first to last 2xx arrival (so relay's start-up
    -- interpreter, imports, pool -- is reported separately as ``startup_s``).
    """
    s = ctx.settings
    lsn0 = wal_lsn(db_url)
    xacts0 = xact_commits(db_url)
    rx_cpu0 = proc_cpu_seconds(rx.proc.pid) or 0.0
    machine = MachineCpu()
    extra_env = {**s.relay_env, **(env or {})}
    if module != "relay":
        extra_env["BARE_TARGET_URL"] = rx.url("/hook")
    with relays(
        db_url,
        n_relays,
        ctx.workdir,
        extra_env=extra_env,
        py_spy=s.py_spy,
        module=module,
        args=relay_args,
        code_root=code_root,
    ) as procs:
        spawned = min(p.started for p in procs)
        samples: list[tuple[float, int]] = []

        cpu_at_first: list[float] = []
        count_at_first = [0]

        def done() -> bool:
            st = rx.stats()
            samples.append((time.time(), st["ok"]))
            if not cpu_at_first and st["count"] > 0:
                # Relay's start-up (imports, pool) is not per-delivery work: count from here.
                cpu_at_first.extend(p.cpu_seconds() or 0.0 for p in procs)
                count_at_first[0] = st["count"]
            if on_poll is not None:
                on_poll(st, procs)
            return bool(st["ok"] >= expected_ok)

        finished = wait_for(
            done,
            timeout,
            interval=poll_interval or (0.25 if timeout > 120 else 0.1),
            check=lambda: _check_relays(procs),
        )
        extra = after(procs) if after is not None else {}
        # CPU time now, before SIGTERM: the shutdown is not part of the work measured.
        cpu_s = [p.cpu_seconds() for p in procs]
        machine_busy = machine.busy()
        pg_cpu = backend_cpu_seconds(db_url)
        rx_cpu = (proc_cpu_seconds(rx.proc.pid) or 0.0) - rx_cpu0
        counters: dict[str, float] = {}
        for p in procs:
            for pid in p.pids():  # --processes N: the supervisor serves no metrics, children do
                for name, value in scrape_metrics(pid).items():
                    counters[name] = counters.get(name, 0.0) + value
    wal_bytes = wal_lsn(db_url) - lsn0
    # Our own probes (stats polls do not touch this database; these few do) are negligible.
    xacts = xact_commits(db_url) - xacts0
    # After the relays stopped: the last VmHWM reading is taken just before SIGTERM.
    hwm_mb = [round(p.hwm_kb / 1024, 1) for p in procs]
    pids = [p.pid for p in procs]
    dump = rx.dump()
    arrivals = _ok_arrivals(dump)
    n_ok = len(arrivals)
    result: dict[str, Any] = {
        "relays": n_relays,
        "expected_deliveries": expected_ok,
        "delivered": n_ok,
        "completed": finished,
        "requests": dump["count"],
        "duplicates": _duplicates(dump),
        "relay_peak_rss_mb": hwm_mb,
        "relay_cpu_s": [None if c is None else round(c, 2) for c in cpu_s],
        "relay_pids": pids,
    }
    total_cpu = sum(c for c in cpu_s if c is not None) - sum(cpu_at_first)
    requests = dump["count"] or 1
    # Per HTTP request (attempt). Relay's CPU counts from its first request (start-up excluded);
    # Postgres backends' CPU is that of every backend connected to this database at the end.
    result["per_request"] = {
        "relay_cpu_us": round(total_cpu / max(1, requests - count_at_first[0]) * 1e6, 1),
        "postgres_backends_cpu_us": round(pg_cpu / requests * 1e6, 1),
        "receiver_cpu_us": round(rx_cpu / requests * 1e6, 1),
        "wal_bytes": round(wal_bytes / requests),
        "db_transactions": round(xacts / requests, 3),
    }
    result["machine_cpu_busy"] = machine_busy
    result["relay_counters"] = counters
    if n_ok >= 2:
        span = arrivals[-1] - arrivals[0]
        result.update(
            {
                "startup_s": round(arrivals[0] - spawned, 3),
                "drain_s": round(span, 3),
                "wall_s": round(arrivals[-1] - spawned, 3),
                "rate_per_s": round((n_ok - 1) / span, 1) if span > 0 else None,
                "rate_incl_startup_per_s": round(n_ok / (arrivals[-1] - spawned), 1),
            }
        )
    result.update(extra)
    if not finished:
        log(f"{label}: timed out after {timeout:.0f}s with {n_ok}/{expected_ok} delivered")
    result["_arrivals"] = arrivals  # stripped before JSON; used by callers for windows
    result["_dump"] = dump
    result["_samples"] = samples
    return result


def _strip(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not k.startswith("_")}


# --------------------------------------------------------------------------- 1. ceiling


async def _ceiling_client(
    url: str, bodies: list[bytes], concurrency: int, max_seconds: float
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    statuses: dict[int, int] = {}
    next_ix = 0
    deadline = time.monotonic() + max_seconds
    async with aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:

        async def worker() -> None:
            nonlocal next_ix
            while next_ix < len(bodies) and time.monotonic() < deadline:
                i = next_ix
                next_ix += 1
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": f"relay-bench/{relay.__version__}",
                    "webhook-id": f"msg_{uuid.uuid4().hex}",
                    "webhook-timestamp": str(int(time.time())),
                }
                async with session.post(
                    url, data=bodies[i], headers=headers, allow_redirects=False
                ) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1

        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return {"elapsed_s": elapsed, "sent": next_ix, "statuses": statuses, "cpu_s": cpu}


def _bodies(n: int) -> list[bytes]:
    return [
        dumps(build_notification("order.created", "v1", sample_payload(k), {})).encode()
        for k in range(1, n + 1)
    ]


def _measure_ceiling(rx: ReceiverProc, bodies: list[bytes], concurrency: int) -> dict[str, Any]:
    """The bare aiohttp client against ``rx``; the receiver is reset before and after."""
    # A short warm-up so connection set-up is not part of the figure.
    uvloop.run(_ceiling_client(rx.url("/warmup"), bodies[:500], concurrency, 30))
    rx.reset()
    rx_cpu0 = proc_cpu_seconds(rx.proc.pid) or 0.0
    machine = MachineCpu()
    res = uvloop.run(_ceiling_client(rx.url("/hook"), bodies, concurrency, 120))
    busy = machine.busy()
    rx_cpu = (proc_cpu_seconds(rx.proc.pid) or 0.0) - rx_cpu0
    dump = rx.dump()
    rx.reset()
    arrivals = _ok_arrivals(dump)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0
    return {
        "requests": res["sent"],
        "concurrency": concurrency,
        "client_elapsed_s": round(res["elapsed_s"], 3),
        "client_rate_per_s": round(res["sent"] / res["elapsed_s"], 1),
        "rate_per_s": round((len(arrivals) - 1) / span, 1) if span else None,
        "statuses": {str(k): v for k, v in res["statuses"].items()},
        "per_request": {
            "client_cpu_us": round(res["cpu_s"] / max(1, res["sent"]) * 1e6, 1),
            "receiver_cpu_us": round(rx_cpu / max(1, res["sent"]) * 1e6, 1),
        },
        "machine_cpu_busy": busy,
        "body_bytes": len(bodies[0]),
    }


def ceiling(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    with ReceiverProc(workdir=ctx.workdir) as rx:
        return _measure_ceiling(rx, _bodies(s.ceiling_n), s.ceiling_concurrency)


# --------------------------------------------------------------------------- 2. drain


def drain(ctx: Context) -> dict[str, Any]:
    """1 and 2 relays, then the issue's reference: the bare claim-100 + POST loop."""
    s = ctx.settings
    out: dict[str, Any] = {"events": s.drain_n}
    for n_relays, module, args in (
        (1, "relay", ()),
        (2, "relay", ()),
        (1, "relay", ("--processes", "auto")),
        (1, "bench.bare", ()),
    ):
        bare = module != "relay"
        auto = bool(args)
        label = "drain_bare" if bare else "drain_auto" if auto else f"drain{n_relays}"
        with ctx.dbs.fresh(label) as db, ReceiverProc(workdir=ctx.workdir) as rx:
            # A paired ceiling on the same receiver just before: on a shared machine the
            # load drifts, and the ratio should compare like with like.
            paired = _measure_ceiling(rx, _bodies(s.ceiling_n), s.ceiling_concurrency)
            add_subscriptions(db, [rx.url("/hook")])
            insert_s = insert_backlog(db, s.drain_n)
            log(
                f"{label}: {s.drain_n} events in the outbox ({insert_s:.1f}s); starting "
                f"{n_relays} relay(s)"
            )
            res = _drain(
                ctx,
                db,
                rx,
                expected_ok=s.drain_n,
                n_relays=n_relays,
                timeout=max(120.0, s.drain_n / 50),
                label=label,
                module=module,
                relay_args=args,
            )
            res["db"] = delivery_counts(db)
            res["insert_s"] = round(insert_s, 2)
            res["paired_ceiling_per_s"] = paired["rate_per_s"]
            rate = res.get("rate_per_s")
            res["ratio_to_paired_ceiling"] = (
                round(rate / paired["rate_per_s"], 3) if rate and paired["rate_per_s"] else None
            )
        out["bare" if bare else "processes_auto" if auto else f"relays_{n_relays}"] = _strip(res)
        log(f"{label}: {res.get('rate_per_s')} deliveries/s")
    return out


# --------------------------------------------------------------------------- 3. latency


def latency(
    ctx: Context, rate: float | None = None, seconds: float | None = None
) -> dict[str, Any]:
    """Commit -> receiver latency of single-event transactions emitted at ``rate`` per s."""
    s = ctx.settings
    rate = rate or s.latency_rate
    seconds = seconds or s.latency_seconds
    n = int(rate * seconds)
    with ctx.dbs.fresh("latency") as db, ReceiverProc(workdir=ctx.workdir) as rx:
        add_subscriptions(db, [rx.url("/hook")])
        with (
            relays(db, 1, ctx.workdir, extra_env=s.relay_env) as procs,
            psycopg.connect(db) as conn,
        ):
            # Warm-up: relay ready (its ready line is not logged at level warning), pool and
            # HTTP connections open, code paths hot.
            warm = 50
            deadline = time.monotonic() + 60
            for i in range(warm):
                relay.emit(conn, "order.created", sample_payload(10_000_000 + i))
                conn.commit()
                time.sleep(0.02)
            if not wait_for(
                lambda: rx.stats()["ok"] >= warm,
                deadline - time.monotonic(),
                check=lambda: _check_relays(procs),
            ):
                raise ScenarioError("relay did not deliver the warm-up events within 60 s")
            time.sleep(1.0)
            rx.reset()
            commit_at: dict[int, float] = {}
            emit_ms: list[float] = []
            behinds: list[float] = []
            period = 1.0 / rate
            t0 = time.perf_counter() + 0.05
            # One app connection commits at most ~1,500 single-event transactions a second
            # here: higher rates are emitted by several connections (threads), event i by
            # connection i % emitters, each on the common schedule.
            emitters = max(1, math.ceil(rate / EMITTER_RATE))

            def emit_share(j: int, app: psycopg.Connection[Any]) -> None:
                behind = 0.0
                for i in range(j, n, emitters):
                    k = i + 1
                    wait = t0 + i * period - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    else:
                        behind = max(behind, -wait)
                    e0 = time.perf_counter()
                    relay.emit(app, "order.created", sample_payload(k))
                    app.commit()
                    commit_at[k] = time.time()
                    emit_ms.append((time.perf_counter() - e0) * 1000)
                behinds.append(behind)

            with contextlib.ExitStack() as apps:
                conns = [conn] + [
                    apps.enter_context(psycopg.connect(db)) for _ in range(emitters - 1)
                ]
                threads = [
                    threading.Thread(target=emit_share, args=(j, c)) for j, c in enumerate(conns)
                ]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            behind = max(behinds, default=0.0)
            emitted_s = time.perf_counter() - t0
            arrived = wait_for(
                lambda: rx.stats()["ok"] >= n, 30.0, check=lambda: _check_relays(procs)
            )
            dump = rx.dump()
            stages = _latency_stages(db)
    first_arrival: dict[int, float] = {}
    pre_commit: dict[int, float] = {}
    for k, a, t, ok in zip(dump["keys"], dump["arrivals"], dump["stamps"], dump["ok"], strict=True):
        if ok and k in commit_at and k not in first_arrival:
            first_arrival[k] = a
            pre_commit[k] = t
    lat = sorted((first_arrival[k] - commit_at[k]) * 1000 for k in first_arrival)
    # Where the time goes, from relay's own timestamps (same machine, same wall clock):
    # commit returned -> dispatch statement started (outbox.dispatched_at = its now())
    # -> HTTP attempt started (delivery_attempts.started_at) -> receiver got the body.
    parts: dict[str, list[float]] = {
        "wake_to_dispatch": [],
        "dispatch_to_attempt": [],
        "attempt_to_arrival": [],
    }
    for k, (dispatched, started) in stages.items():
        if k in first_arrival and k in commit_at:
            parts["wake_to_dispatch"].append((dispatched - commit_at[k]) * 1000)
            parts["dispatch_to_attempt"].append((started - dispatched) * 1000)
            parts["attempt_to_arrival"].append((first_arrival[k] - started) * 1000)
    breakdown = {}
    for name, values in parts.items():
        values.sort()
        breakdown[name] = {"p50": percentile(values, 50), "p99": percentile(values, 99)}
        breakdown[name] = {
            k: None if v is None else round(v, 3) for k, v in breakdown[name].items()
        }
    lat_pre = sorted((first_arrival[k] - pre_commit[k]) * 1000 for k in first_arrival)
    emit_ms.sort()

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "rate_per_s": rate,
        "seconds": seconds,
        "emitted": n,
        "achieved_rate_per_s": round(n / emitted_s, 1),
        "emitters": emitters,
        "max_behind_schedule_ms": round(behind * 1000, 2),
        "delivered": len(lat),
        "all_arrived": arrived,
        "commit_to_arrival_ms": {
            "p50": r(percentile(lat, 50)),
            "p95": r(percentile(lat, 95)),
            "p99": r(percentile(lat, 99)),
            "max": r(lat[-1] if lat else None),
            "mean": r(statistics.fmean(lat) if lat else None),
        },
        "stages_ms": breakdown,
        "precommit_to_arrival_ms": {
            "p50": r(percentile(lat_pre, 50)),
            "p99": r(percentile(lat_pre, 99)),
        },
        "emit_txn_ms": {"p50": r(percentile(emit_ms, 50)), "p99": r(percentile(emit_ms, 99))},
    }


def _latency_stages(db: str) -> dict[int, tuple[float, float]]:
    """``{k: (dispatched_at, first attempt started_at)}`` as epoch seconds, from the tables."""
    try:
        with psycopg.connect(db, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT (o.payload->>'k')::bigint, extract(epoch FROM o.dispatched_at)::float8,"
                "       extract(epoch FROM a.started_at)::float8"
                " FROM relay.outbox o JOIN relay.deliveries d ON d.outbox_id = o.id"
                " JOIN relay.delivery_attempts a ON a.delivery_id = d.id AND a.attempt = 1"
            ).fetchall()
    except psycopg.Error as exc:  # the schema may move on; the breakdown is optional
        log(f"latency: no stage breakdown ({exc})")
        return {}
    return {int(k): (float(d), float(a)) for k, d, a in rows if d is not None}


# --------------------------------------------------------------------------- 4. fan-out


def fanout(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    total = s.fanout_deliveries - s.fanout_deliveries % 10
    out: dict[str, Any] = {"deliveries": total}
    for label, events, subs in (("1x10", total // 10, 10), ("10x1", total, 1)):
        with (
            ctx.dbs.fresh(f"fanout{label.replace('x', '_')}") as db,
            ReceiverProc(workdir=ctx.workdir) as rx,
        ):
            add_subscriptions(db, [rx.url(f"/hook/s{i}") for i in range(subs)])
            insert_backlog(db, events)
            log(f"fanout {label}: {events} events x {subs} subscriptions")
            res = _drain(
                ctx,
                db,
                rx,
                expected_ok=total,
                n_relays=1,
                timeout=max(120.0, total / 50),
                label=f"fanout {label}",
            )
            res["events"] = events
            res["subscriptions"] = subs
            res["db"] = delivery_counts(db)
        out[label] = _strip(res)
        log(f"fanout {label}: {res.get('rate_per_s')} deliveries/s")
    a, b = out["1x10"].get("rate_per_s"), out["10x1"].get("rate_per_s")
    out["ratio_1x10_to_10x1"] = round(a / b, 3) if a and b else None
    return out


# --------------------------------------------------------------------------- 5. scale

_PARAM_RE = re.compile(r"%\((\w+)\)s")


def _explain(db: str, name: str, limit: int, **overrides: Any) -> list[str]:
    """EXPLAIN (ANALYZE, BUFFERS) of a named daemon query, in a transaction rolled back.

    Plans of statements nested in SQL functions (which EXPLAIN shows only as a "Function
    Scan") are captured with auto_explain when the role may LOAD it, and appended.
    Caveat: this is a *custom* plan for these parameter values, planned now; relay's pooled
    connections run prepared statements and may be using a generic plan made earlier.
    """
    text = q(name)
    defaults: dict[str, Any] = {
        "limit": limit,
        "owner": "bench-explain",
        "token": uuid.uuid4(),
        "lease_seconds": 60.0,
        "saturated": [],
        "relay_id": "bench",
        "lease_limit": 64,  # dispatch leases this many new deliveries to itself (free slots)
    }
    defaults.update(overrides)
    params = {}
    for p in _PARAM_RE.findall(text):
        if p not in defaults:
            return [f"(no EXPLAIN: do not know a value for parameter %({p})s)"]
        params[p] = defaults[p]
    with psycopg.connect(db) as conn, conn.transaction(force_rollback=True):
        # Once first, undone: a PL/pgSQL function plans its statements on its first call in a
        # connection (a running relay's connections did so long ago), which would otherwise
        # be timed below as if every call paid it.
        with conn.transaction(force_rollback=True):
            conn.execute(text, params).fetchall()
        rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, params).fetchall()
    out = [str(r[0]) for r in rows]
    # Second pass, for statements nested in SQL functions only: auto_explain instruments every
    # nested statement (FK checks, glob_match...), which would inflate the figures above.
    # One plan per distinct nested statement is kept; foreign-key checks are left out.
    nested: list[str] = []
    with psycopg.connect(db) as conn, conn.transaction(force_rollback=True):
        try:
            with conn.transaction():
                conn.execute("LOAD 'auto_explain'")
                for setting, value in (
                    ("log_min_duration", "0"),
                    ("log_nested_statements", "on"),
                    ("log_analyze", "on"),
                    ("log_buffers", "on"),
                ):
                    conn.execute(f"SET LOCAL auto_explain.{setting} = {value}")
                conn.execute("SET LOCAL client_min_messages = log")
                conn.add_notice_handler(lambda d: nested.append(d.message_primary or ""))
            conn.execute(text, params).fetchall()
        except psycopg.Error:
            nested = []  # not allowed to LOAD auto_explain: top-level plan only
    top = text.strip()[:200]
    seen: set[str] = set()
    for m in nested:
        if "Query Text:" not in m:
            continue
        query = m.split("Query Text:", 1)[1].split("\n\n", 1)[0].strip()
        if query[:200] == top or query in seen or "FOR KEY SHARE OF" in query:
            continue  # the top-level statement itself, a repeat, or an FK check
        seen.add(query)
        out.append("-- nested statement (auto_explain, second run):")
        out.extend(m.splitlines())
    return out


def _planner_stats(db: str, table: str) -> dict[str, Any]:
    """What the planner believes about ``table`` and when autovacuum last analyzed it."""
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(
            "SELECT c.reltuples::bigint, s.n_live_tup, s.n_dead_tup, s.n_mod_since_analyze,"
            " s.last_analyze::text, s.last_autoanalyze::text, s.last_autovacuum::text"
            " FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE c.oid = %s::regclass",
            (table,),
        ).fetchone()
    keys = (
        "reltuples",
        "n_live_tup",
        "n_dead_tup",
        "n_mod_since_analyze",
        "last_analyze",
        "last_autoanalyze",
        "last_autovacuum",
    )
    return dict(zip(keys, row, strict=True)) if row else {}


def scale(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    n = s.scale_n
    out: dict[str, Any] = {"events": n}
    with ctx.dbs.fresh("scale") as db, ReceiverProc(workdir=ctx.workdir) as rx:
        sub_ids = add_subscriptions(db, [rx.url("/hook")])
        log(f"scale: inserting {n} events with one generate_series INSERT")
        out["insert_s"] = round(insert_backlog(db, n), 2)
        log(f"scale: inserted in {out['insert_s']}s")
        out["explain_dispatch_before_start"] = _explain(db, "dispatch_outbox", 500)
        mid: dict[str, Any] = {}
        last_log = [time.monotonic()]

        progress: list[tuple[float, int]] = []
        ctx.partial["scale"] = {
            "events": n,
            "insert_s": out["insert_s"],
            "progress": progress,
            "at_half": mid,
        }
        t_start = time.monotonic()

        def on_poll(st: dict[str, Any], procs: list[RelayProc]) -> None:
            now = time.monotonic()
            if now - last_log[0] > 30:
                last_log[0] = now
                progress.append((round(now - t_start, 1), st["ok"]))
                ctx.partial["scale"]["peak_rss_mb"] = max(round(p.hwm_kb / 1024, 1) for p in procs)
                log(
                    f"scale: {st['ok']}/{n} delivered; relay RSS "
                    f"{[round(p.rss_kb / 1024) for p in procs]} MB"
                )
            if not mid and st["ok"] >= n // 2:
                mid["delivered_at_explain"] = st["ok"]
                mid["db"] = delivery_counts(db)
                mid["sizes_bytes"] = table_sizes(db)
                mid["deliveries_stats"] = _planner_stats(db, "relay.deliveries")
                mid["explain_claim"] = _explain(db, "claim_deliveries", 100)
                # What a relay runs while its only subscription is at its in-flight cap
                # (relay_subscription_concurrency): the same claim, that subscription excluded.
                mid["explain_claim_saturated"] = _explain(
                    db, "claim_deliveries", 16, saturated=[sub_ids[0]]
                )
                mid["explain_dispatch"] = _explain(db, "dispatch_outbox", 500)

        res = _drain(
            ctx,
            db,
            rx,
            expected_ok=n,
            n_relays=1,
            timeout=s.scale_timeout,
            label="scale",
            on_poll=on_poll,
        )
        res["db"] = delivery_counts(db)
        res["sizes_bytes_end"] = table_sizes(db)
        res["deliveries_stats_end"] = _planner_stats(db, "relay.deliveries")
    arrivals = res["_arrivals"]
    m = len(arrivals)
    tenth = max(2, n // 10)  # windows of 10 % of the backlog, even when cut off
    start_rate = _window_rate(arrivals, 0, tenth - 1)
    end_rate = _window_rate(arrivals, m - tenth, m - 1) if m >= tenth else None
    deciles = [
        _window_rate(arrivals, i * tenth, min(m - 1, (i + 1) * tenth - 1)) for i in range(10)
    ]
    out.update(_strip(res))
    out.update(
        {
            "start_rate_per_s": round(start_rate, 1) if start_rate else None,
            "end_rate_per_s": round(end_rate, 1) if end_rate else None,
            # Cut off by --scale-timeout: there is no "end" to compare with the start.
            "end_to_start": (
                round(end_rate / start_rate, 3)
                if start_rate and end_rate and res["completed"]
                else None
            ),
            "decile_rates_per_s": [round(x, 1) if x else None for x in deciles],
            "peak_rss_mb": max(res["relay_peak_rss_mb"]) if res["relay_peak_rss_mb"] else None,
            "at_half": mid,
        }
    )
    return out


# --------------------------------------------------------------------------- 6. retry storm


def retry(ctx: Context) -> dict[str, Any]:
    """Three drains of the same backlog: all healthy; 1 request in 10 failing (the issue's
    storm: any event's request may fail, its retry usually succeeds); and 1 event in 10
    failing on every attempt until dead (stricter: 31 % of all requests then fail)."""
    s = ctx.settings
    n, every = s.retry_n, s.retry_fail_every
    failing = n // every
    out: dict[str, Any] = {
        "events": n,
        "fail_every": every,
        "backoff_ms": s.retry_backoff_ms,
        "failing_events_keyed": failing,
    }
    # label -> (fail every Nth request, fail every Nth event, max_retries)
    cases = {
        "healthy": (0, 0, 3),
        # max_retries 10: a delivery failing 11 times in a row by chance (1e-11) never ends
        # dead, so every event is expected at the receiver
        "storm": (every, 0, 10),
        "storm_keyed": (0, every, 3),
    }
    for label, (nth, keyed, max_retries) in cases.items():
        with (
            ctx.dbs.fresh(f"retry_{label}") as db,
            ReceiverProc(fail_every=keyed, fail_nth=nth, workdir=ctx.workdir) as rx,
        ):
            add_subscriptions(
                db, [rx.url("/hook")], backoff_ms=s.retry_backoff_ms, max_retries=max_retries
            )
            insert_backlog(db, n)
            log(f"retry {label}: {n} events, failing: every {nth or '-'} req, {keyed or '-'} ev")
            expected = n - failing if keyed else n

            def settle(
                procs: list[RelayProc], db: str = db, rx: ReceiverProc = rx, keyed: int = keyed
            ) -> dict[str, Any]:
                st = rx.stats()
                extra = {"requests_total": st["count"], "requests_failed": st["failed"]}
                if not keyed:
                    return extra
                # The failing deliveries: 1 + max_retries attempts each, then dead. The
                # relay keeps running until they all are.
                t0 = time.monotonic()
                settled = wait_for(
                    lambda: delivery_counts(db).get("dead", 0) >= failing,
                    60.0,
                    interval=0.25,
                    check=lambda: _check_relays(procs),
                )
                st = rx.stats()
                return {
                    "all_failing_dead": settled,
                    "dead_settle_extra_s": round(time.monotonic() - t0, 2),
                    "requests_total": st["count"],
                    "requests_failed": st["failed"],
                }

            res = _drain(
                ctx,
                db,
                rx,
                expected_ok=expected,
                n_relays=1,
                timeout=max(120.0, n / 50),
                label=f"retry {label}",
                after=settle,
            )
            res["db"] = delivery_counts(db)
            if keyed:
                res["failed_attempts_timeline"] = _failure_timeline(res["_dump"])
            elif nth:
                res.update(_first_try_rate(res["_dump"]))
        out[label] = _strip(res)
        log(f"retry {label}: {res.get('rate_per_s')} healthy deliveries/s")
    b = out["healthy"].get("rate_per_s")
    for label, figure, key in (
        ("storm", "first_try_rate_per_s", "healthy_rate_ratio"),
        ("storm", "rate_per_s", "all_deliveries_rate_ratio"),
        ("storm_keyed", "rate_per_s", "keyed_rate_ratio"),
    ):
        a = out[label].get(figure)
        out[key] = round(a / b, 3) if a and b else None
    return out


def _first_try_rate(dump: dict[str, Any]) -> dict[str, Any]:
    """The healthy 90 % of a storm where any request may fail: the deliveries whose first
    request succeeded, and their rate from the first to the last of them (the retried 10 %
    arrive later, after their backoff, and would otherwise stretch the span)."""
    seen: set[int] = set()
    arrivals: list[float] = []
    for k, a, ok in zip(dump["keys"], dump["arrivals"], dump["ok"], strict=True):
        if k in seen:
            continue
        seen.add(k)
        if ok:
            arrivals.append(a)
    span = max(arrivals) - min(arrivals) if len(arrivals) > 1 else 0.0
    return {
        "first_try_ok": len(arrivals),
        "first_try_rate_per_s": round(len(arrivals) / span, 1) if span > 0 else None,
    }


def _failure_timeline(dump: dict[str, Any]) -> dict[str, Any]:
    """How many failing attempts (first tries and retries) competed with the healthy drain."""
    last_ok = max(
        (a for a, ok in zip(dump["arrivals"], dump["ok"], strict=True) if ok), default=0.0
    )
    seen: set[int] = set()
    first = retries = first_before = retries_before = 0
    for k, a, ok in zip(dump["keys"], dump["arrivals"], dump["ok"], strict=True):
        if ok:
            continue
        if k in seen:
            retries += 1
            retries_before += a <= last_ok
        else:
            seen.add(k)
            first += 1
            first_before += a <= last_ok
    return {
        "first_attempts": first,
        "first_attempts_during_healthy_drain": first_before,
        "retries": retries,
        "retries_during_healthy_drain": retries_before,
    }


# --------------------------------------------------------------------------- 7. emit cost

APP_DDL = """
CREATE SCHEMA IF NOT EXISTS app;
CREATE TABLE app.orders (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id text NOT NULL,
    amount      numeric(12, 2) NOT NULL,
    status      text NOT NULL DEFAULT 'created',
    created_at  timestamptz NOT NULL DEFAULT now()
);
"""
APP_INSERT = "INSERT INTO app.orders (customer_id, amount) VALUES (%s, %s) RETURNING id"


# The app's write and its event in one statement: the outbox row without a round trip.
APP_INSERT_WITH_EVENT = """
WITH o AS (INSERT INTO app.orders (customer_id, amount) VALUES (%s, %s) RETURNING id)
INSERT INTO relay.outbox (event_type, payload, aggregate_id)
SELECT 'order.created', %s, 'ord-' || o.id FROM o
RETURNING id
"""
OUTBOX_INSERT = "INSERT INTO relay.outbox (event_type, payload, aggregate_id) VALUES (%s, %s, %s)"


def emit_cost(ctx: Context) -> dict[str, Any]:
    """App-side cost of emitting: the same app transaction with and without the outbox row.

    Modes, interleaved in small rounds so drift (checkpoints, autovacuum, other load) hits all
    alike: ``without`` (app INSERT only), ``with`` (app INSERT + ``relay.emit``, the Python
    API) and diagnostics that split the cost --
    ``with_sql_insert`` (a plain ``INSERT INTO relay.outbox``, no ``RETURNING``, no Python
    checks), ``with_sql_function`` (``SELECT relay.emit(...)``, the SQL API's plpgsql function)
    and ``with_no_trigger`` (``relay.emit`` with the NOTIFY trigger disabled) -- and a floor,
    ``with_select_1`` (a second statement that writes nothing: its round trip) and
    ``with_one_statement`` (the app's INSERT and the outbox row in one statement, a CTE: the
    row's own cost, no extra round trip). Relay is not
    running: this is the cost the app's own transaction pays.
    """
    from psycopg.types.json import Jsonb

    s = ctx.settings
    out: dict[str, Any] = {
        "api": "relay.emit(conn, ...) (Python API: one SELECT relay.emit(...)) in the app's txn",
        "relay_running": False,
    }
    modes = (
        "without",
        "with",
        "with_sql_insert",
        "with_sql_function",
        "with_no_trigger",
        "with_select_1",
        "with_one_statement",
    )
    with ctx.dbs.fresh("emit") as db, psycopg.connect(db) as conn:
        conn.execute(APP_DDL)
        conn.commit()
        k = 0
        trigger_on = [True]

        def set_trigger(on: bool) -> None:
            if trigger_on[0] != on:
                verb = "ENABLE" if on else "DISABLE"
                conn.execute(f"ALTER TABLE relay.outbox {verb} TRIGGER outbox_notify")
                conn.commit()
                trigger_on[0] = on

        def txn(batch: int, mode: str) -> float:
            nonlocal k
            t0 = time.perf_counter()
            for _ in range(batch):
                k += 1
                if mode == "with_one_statement":
                    row = conn.execute(
                        APP_INSERT_WITH_EVENT, (f"cus-{k % 997}", 42.5, Jsonb(sample_payload(k)))
                    ).fetchone()
                    assert row is not None
                    continue
                row = conn.execute(APP_INSERT, (f"cus-{k % 997}", 42.5)).fetchone()
                assert row is not None
                if mode in ("with", "with_no_trigger"):
                    relay.emit(
                        conn, "order.created", sample_payload(k), aggregate_id=f"ord-{row[0]}"
                    )
                elif mode == "with_sql_function":
                    conn.execute(
                        "SELECT relay.emit(%s, %s, %s)",
                        ("order.created", Jsonb(sample_payload(k)), f"ord-{row[0]}"),
                    ).fetchone()
                elif mode == "with_select_1":
                    conn.execute("SELECT 1").fetchone()
                elif mode == "with_sql_insert":
                    conn.execute(
                        OUTBOX_INSERT, ("order.created", Jsonb(sample_payload(k)), f"ord-{row[0]}")
                    )
            conn.commit()
            return (time.perf_counter() - t0) * 1000

        def interleaved(batch: int, total: int, run: tuple[str, ...]) -> dict[str, list[float]]:
            for mode in run:  # warm-up: plans, caches, the tables' first pages
                for _ in range(max(5, total // 20)):
                    txn(batch, mode)
            times: dict[str, list[float]] = {m: [] for m in run}
            rounds = max(1, total // 10)
            for _ in range(rounds):
                for mode in run:
                    for _ in range(total // rounds):
                        times[mode].append(txn(batch, mode))
            return times

        main = tuple(m for m in modes if m != "with_no_trigger")
        for batch, total in ((1, s.emit_txns_batch1), (100, s.emit_txns_batch100)):
            times = interleaved(batch, total, main)
            # Its own block: toggling the trigger invalidates the outbox's cached plans, which
            # would inflate every mode of an interleaved round that writes the outbox.
            set_trigger(False)
            try:
                no_trigger = interleaved(batch, total, ("without", "with_no_trigger"))
            finally:
                set_trigger(True)
            times["with_no_trigger"] = no_trigger["with_no_trigger"]
            no_trigger_base = statistics.fmean(no_trigger["without"])
            res: dict[str, Any] = {"transactions_each": len(times["with"])}
            for mode in modes:
                ts = sorted(times[mode])
                res[mode] = {
                    "mean_ms": round(statistics.fmean(ts), 4),
                    "p50_ms": round(percentile(ts, 50) or 0, 4),
                    "p99_ms": round(percentile(ts, 99) or 0, 4),
                }
            base_mean, base_p50 = res["without"]["mean_ms"], res["without"]["p50_ms"]
            res["added_ms_mean"] = round(res["with"]["mean_ms"] - base_mean, 4)
            res["added_ms_p50"] = round(res["with"]["p50_ms"] - base_p50, 4)
            res["added_ms_per_event_mean"] = round(res["added_ms_mean"] / batch, 4)
            res["added_ms_mean_sql_insert"] = round(
                res["with_sql_insert"]["mean_ms"] - base_mean, 4
            )
            for extra in ("select_1", "sql_function", "one_statement"):
                res[f"added_ms_mean_{extra}"] = round(
                    res[f"with_{extra}"]["mean_ms"] - base_mean, 4
                )
            res["added_ms_mean_no_trigger"] = round(
                res["with_no_trigger"]["mean_ms"] - no_trigger_base, 4
            )
            out[f"batch_{batch}"] = res
            log(
                f"emit batch {batch}: +{res['added_ms_mean']} ms/txn (mean), "
                f"+{res['added_ms_p50']} ms (p50); plain INSERT +{res['added_ms_mean_sql_insert']}"
                f", no trigger +{res['added_ms_mean_no_trigger']}"
            )
    return out


def api(ctx: Context) -> dict[str, Any]:
    """``relay api`` list/show latency over 1M deliveries, and drain rate under API load."""
    from bench.api import api_scenario

    return api_scenario(ctx, _drain, _strip)


SCENARIOS = {
    "api": api,
    "ceiling": ceiling,
    "drain": drain,
    "latency": latency,
    "fanout": fanout,
    "scale": scale,
    "retry": retry,
    "emit": emit_cost,
    "history": retention.history,
    "prune_drain": retention.prune_drain,
    "soak": retention.soak,
}


def _ordered(ctx: Context) -> dict[str, Any]:
    from bench.ordered import ordered  # (it imports this module's helpers)

    return ordered(ctx)


SCENARIOS["ordered"] = _ordered
# Run order: the heavy scale scenario last, so a broken harness fails fast.
RUN_ORDER = [
    "ceiling", "drain", "latency", "fanout", "retry", "ordered", "emit", "api", "prune_drain",
    "soak", "history", "scale",
]  # fmt: skip
