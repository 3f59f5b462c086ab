"""``python -m bench``: run the scenarios, print a table, write ``bench-results.json``."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import harness, round6
from bench.harness import (
    DEFAULT_SERVER_URL,
    ROOT,
    Databases,
    MachineCpu,
    hardware,
    loadavg,
    log,
)
from bench.scenarios import RUN_ORDER as BASE_ORDER
from bench.scenarios import SCENARIOS as BASE_SCENARIOS
from bench.scenarios import Context, Settings

SCENARIOS = {
    **BASE_SCENARIOS,
    "latency_high": round6.latency_high,
    "sync_commit": round6.sync_commit,
    "scaling": round6.scaling,
}
_AFTER_DRAIN = BASE_ORDER.index("drain") + 1
RUN_ORDER = [
    *BASE_ORDER[:_AFTER_DRAIN],
    "scaling",
    "sync_commit",
    "latency",
    "latency_high",
    *[n for n in BASE_ORDER[_AFTER_DRAIN:] if n != "latency"],
]

TABLE_ORDER = [
    "ceiling", "drain", "scaling", "sync_commit", "latency", "latency_high", "fanout", "scale",
    "retry", "ordered", "emit", "api",
]  # fmt: skip
# Scenarios whose figures are in the JSON results only (no row in the printed table).
OTHER_SCENARIOS = ["prune_drain", "soak", "history"]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="relay throughput/latency benchmark (loopback, one machine).",
    )
    p.add_argument(
        "--only",
        default="",
        help=f"comma-separated scenarios to run, of: {','.join(TABLE_ORDER + OTHER_SCENARIOS)}",
    )
    p.add_argument(
        "--quick", action="store_true", help="smaller sizes everywhere (about three minutes in all)"
    )
    p.add_argument(
        "--database-url",
        default=os.environ.get("RELAY_BENCH_DATABASE_URL", DEFAULT_SERVER_URL),
        help="server URL; each scenario creates (and drops) its own database",
    )
    p.add_argument("--output", default="bench-results.json", help="JSON results file")
    p.add_argument(
        "--scale-n",
        type=int,
        default=None,
        help="backlog of the scale scenario (default 1,000,000; --quick 100,000)",
    )
    p.add_argument(
        "--scale-timeout",
        type=float,
        default=None,
        help="seconds the scale drain may take before it is cut off",
    )
    p.add_argument("--drain-n", type=int, default=None, help="events of the drain scenario")
    p.add_argument(
        "--history-n", type=int, default=None, help="deliveries of history (default 10M)"
    )
    p.add_argument("--soak-seconds", type=float, default=None, help="soak length (default 600)")
    p.add_argument("--latency-rate", type=float, default=None, help="events/s (default 200)")
    p.add_argument("--latency-seconds", type=float, default=None, help="default 20")
    p.add_argument(
        "--relay-env",
        action="append",
        default=[],
        metavar="RELAY_X=VALUE",
        help="extra environment for every relay process (repeatable); RELAY_* settings, or "
        "PGOPTIONS (libpq: e.g. '-c synchronous_commit=off' for relay's connections only)",
    )
    p.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="profile the relays of drain-type scenarios with py-spy (raw stacks)",
    )
    p.add_argument(
        "--aiohttp-receiver",
        action="store_true",
        help="use the old aiohttp receiver instead of the lean one (to measure the yardstick)",
    )
    p.add_argument(
        "--compare",
        default="",
        metavar="REF",
        help="instead of the scenarios: the drain of git REF's relay (a temporary worktree, "
        "this venv) and of this tree, interleaved A/B/A/B",
    )
    p.add_argument("--compare-rounds", type=int, default=3, help="A/B pairs of --compare")
    p.add_argument("--keep-databases", action="store_true", help="do not drop the databases")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each scenario, wait up to SECONDS for the machine to be mostly "
        "idle (other load skews every figure); 0 = do not wait",
    )
    return p.parse_args(argv)


def wait_idle(limit: float, threshold: float = 0.25) -> tuple[float, float]:
    """Wait (at most ``limit`` s) until all CPUs were < ``threshold`` busy over 2 s."""
    t0 = time.monotonic()
    while True:
        probe = MachineCpu()
        time.sleep(2.0)
        busy = probe.busy() or 0.0
        if busy < threshold or time.monotonic() - t0 >= limit:
            return time.monotonic() - t0, busy


def code_fingerprint() -> str:
    """A hash of relay's code and SQL, to tell which version the figures belong to."""
    h = hashlib.sha256()
    # every module and SQL file of the package (the SQL moved into relay/sql with issue 12)
    files = sorted((ROOT / "relay").rglob("*.py")) + sorted((ROOT / "relay").rglob("*.sql"))
    for f in files:
        h.update(f.relative_to(ROOT).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


# --------------------------------------------------------------------------- table


def _fmt(v: Any, unit: str = "") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        text = f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}" if abs(v) < 1000 else f"{v:,.0f}"
    elif isinstance(v, int):
        text = f"{v:,}"
    else:
        text = str(v)
    return f"{text} {unit}".strip()


def _get(d: dict[str, Any], *path: str) -> Any:
    cur: Any = d
    for key in path:
        if not isinstance(cur, dict) or key not in cur:
            return None
        cur = cur[key]
    return cur


def _ok_share(total: Any, failed: Any) -> float | None:
    if not total or failed is None:
        return None
    return round((float(total) - float(failed)) / float(total), 3)


def _explain_ms(lines: list[str] | None) -> float | None:
    for line in reversed(lines or []):
        if line.strip().startswith("Execution Time:"):
            return float(line.split(":")[1].split()[0])
    return None


def _in_receiver_units(per_request: dict[str, Any]) -> float | None:
    """(relay + Postgres) CPU per delivery over the receiver's CPU per request.

    The receiver does the same work for every request whatever relay does, so its CPU time
    per request tracks how fast this (shared, virtual) machine is at the moment: on the
    development host the same code's CPU per delivery moved by up to 1.5x between runs
    minutes apart, this ratio by a few percent. Compare code changes with it.
    """
    relay_us = per_request.get("relay_cpu_us")
    pg_us = per_request.get("postgres_backends_cpu_us")
    rx_us = per_request.get("receiver_cpu_us")
    if not relay_us or pg_us is None or not rx_us:
        return None
    return round(float(relay_us + pg_us) / float(rx_us), 2)


def figures(res: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(scenario, figure, value) rows of the printed table."""
    sc = res["scenarios"]
    rows: list[tuple[str, str, str]] = []

    def add(s: str, name: str, value: Any, unit: str = "") -> None:
        rows.append((s, name, _fmt(value, unit)))

    for name in TABLE_ORDER:
        r = sc.get(name)
        if r is None:
            continue
        if "error" in r:
            add(name, "ERROR", r["error"].splitlines()[0][:90])
            continue
        if name == "ceiling":
            add(
                "1 ceiling",
                f"aiohttp client, concurrency {r['concurrency']}",
                r["rate_per_s"],
                "req/s",
            )
            pr = r.get("per_request") or {}
            add(
                "1 ceiling",
                "  CPU/request client+receiver",
                f"{_fmt(pr.get('client_cpu_us'))}+{_fmt(pr.get('receiver_cpu_us'))} us",
            )
        elif name == "drain":
            for n in (1, 2, "auto"):
                d = r.get(f"relays_{n}" if n != "auto" else "processes_auto", {})
                add(
                    "2 drain",
                    f"{r['events']:,} backlog, {n} relay(s)",
                    d.get("rate_per_s"),
                    "deliv/s",
                )
                add("2 drain", f"  ratio to ceiling ({n} relay(s))", d.get("ratio_to_ceiling"))
                add(
                    "2 drain",
                    f"  ratio to paired ceiling ({_fmt(d.get('paired_ceiling_per_s'))}/s)",
                    d.get("ratio_to_paired_ceiling"),
                )
                add("2 drain", f"  spawn -> all delivered ({n} relay(s))", d.get("wall_s"), "s")
                pr = d.get("per_request") or {}
                add(
                    "2 drain",
                    f"  CPU/delivery relay+PG+receiver ({n})",
                    f"{_fmt(pr.get('relay_cpu_us'))}+{_fmt(pr.get('postgres_backends_cpu_us'))}"
                    f"+{_fmt(pr.get('receiver_cpu_us'))} us",
                )
                add("2 drain", f"  relay+PG CPU in receiver units ({n})", _in_receiver_units(pr))
                add("2 drain", f"  ratio to the bare loop ({n})", d.get("ratio_to_bare_loop"))
            b = r.get("bare", {})
            add("2 drain", "bare claim-100 + POST loop (reference)", b.get("rate_per_s"), "deliv/s")
            add("2 drain", "  bare loop: ratio to ceiling", b.get("ratio_to_ceiling"))
            pr = b.get("per_request") or {}
            add(
                "2 drain",
                "  bare loop: CPU/delivery loop+PG+receiver",
                f"{_fmt(pr.get('relay_cpu_us'))}+{_fmt(pr.get('postgres_backends_cpu_us'))}"
                f"+{_fmt(pr.get('receiver_cpu_us'))} us",
            )
            add("2 drain", "  bare loop: loop+PG CPU in receiver units", _in_receiver_units(pr))
        elif name == "scaling":
            for n in (1, 2, 3):
                d = r.get(f"processes_{n}", {})
                pr = d.get("per_request") or {}
                act = d.get("activity") or {}
                add("2b processes", f"relay run --processes {n}", d.get("rate_per_s"), "deliv/s")
                add(
                    "2b processes",
                    f"  CPU/delivery relay+PG ({n})",
                    f"{_fmt(pr.get('relay_cpu_us'))}+{_fmt(pr.get('postgres_backends_cpu_us'))} us",
                )
                add("2b processes", f"  active PG backends, mean ({n})",
                    act.get("mean_active_backends"))  # fmt: skip
                lock = sum(
                    v for k, v in (act.get("waits_per_poll") or {}).items()
                    if k.startswith(("Lock", "LWLock"))
                )  # fmt: skip
                add("2b processes", f"  backends waiting on a lock, mean ({n})", round(lock, 3))
        elif name == "sync_commit":
            add("2c sync commit", "RELAY_SYNCHRONOUS_COMMIT=off", str(r.get("off_rate_per_s")))
            add("2c sync commit", "RELAY_SYNCHRONOUS_COMMIT=on", str(r.get("on_rate_per_s")))
            add("2c sync commit", "  ratio off / on", r.get("ratio_off_to_on"))
        elif name in ("latency", "latency_high"):
            lat = r["commit_to_arrival_ms"]
            add("3 latency", f"commit->arrival p50 @{r['rate_per_s']:g}/s", lat["p50"], "ms")
            add("3 latency", "commit->arrival p95", lat["p95"], "ms")
            add("3 latency", "commit->arrival p99", lat["p99"], "ms")
            add("3 latency", "commit->arrival max", lat["max"], "ms")
            add("3 latency", "delivered / emitted", f"{r['delivered']}/{r['emitted']}")
        elif name == "fanout":
            add(
                "4 fan-out",
                f"1 event x 10 subs ({r['deliveries']:,} deliv)",
                _get(r, "1x10", "rate_per_s"),
                "deliv/s",
            )
            add("4 fan-out", "10 events x 1 sub", _get(r, "10x1", "rate_per_s"), "deliv/s")
            add("4 fan-out", "ratio 1x10 / 10x1", r.get("ratio_1x10_to_10x1"))
        elif name == "scale":
            add("5 scale", f"{r['events']:,} backlog: insert", r.get("insert_s"), "s")
            if not r.get("completed"):
                add("5 scale", "NOT COMPLETED: delivered", r.get("delivered"))
            add("5 scale", "rate first 10%", r.get("start_rate_per_s"), "deliv/s")
            add("5 scale", "rate last 10%", r.get("end_rate_per_s"), "deliv/s")
            add("5 scale", "end / start", r.get("end_to_start"))
            add("5 scale", "whole drain (first->last arrival)", r.get("rate_per_s"), "deliv/s")
            claim_ms = _explain_ms(_get(r, "at_half", "explain_claim"))
            add("5 scale", "claim query at half way (EXPLAIN)", claim_ms, "ms")
            sat_ms = _explain_ms(_get(r, "at_half", "explain_claim_saturated"))
            add("5 scale", "  same, only subscription at its cap", sat_ms, "ms")
            add("5 scale", "relay peak RSS (VmHWM)", r.get("peak_rss_mb"), "MB")
            add("5 scale", "spawn -> all delivered", r.get("wall_s"), "s")
        elif name == "retry":
            add("6 retry storm", "all healthy", _get(r, "healthy", "rate_per_s"), "deliv/s")
            every = r["fail_every"]
            for case, what, field, ratio in (
                (
                    "storm",
                    f"1/{every} requests failing: ok on 1st try",
                    "first_try_rate_per_s",
                    "healthy_rate_ratio",
                ),
                ("storm", "  all (retried ones too)", "rate_per_s", "all_deliveries_rate_ratio"),
                (
                    "storm_keyed",
                    f"1/{every} events failing till dead: healthy",
                    "rate_per_s",
                    "keyed_rate_ratio",
                ),
            ):
                add("6 retry storm", what, _get(r, case, field), "deliv/s")
                add("6 retry storm", "  ratio to all healthy", r.get(ratio))
            add(
                "6 retry storm",
                "  share of requests that succeed",
                _ok_share(
                    _get(r, "storm_keyed", "requests_total"),
                    _get(r, "storm_keyed", "requests_failed"),
                ),
            )
        elif name == "ordered":
            aggs = f"{r['events']:,} events / {r['aggregates']:,} aggregates"
            add("6b ordered", f"{aggs}, unordered", _get(r, "unordered", "rate_per_s"), "deliv/s")
            add("6b ordered", "  same, ordered", _get(r, "ordered", "rate_per_s"), "deliv/s")
            add(
                "6b ordered",
                "  ratio ordered/unordered (target >= 0.8)",
                r.get("ratio_ordered_to_unordered"),
            )
            add(
                "6b ordered",
                "  order violations when ordered",
                _get(r, "ordered", "order_violations"),
            )
            add(
                "6b ordered",
                f"{r['events']:,} events of one aggregate",
                _get(r, "single_aggregate", "rate_per_s"),
                "deliv/s",
            )
            for point, ms in (_get(r, "single_aggregate", "claim_statement_ms") or {}).items():
                add("6b ordered", f"  claim statement, {point.replace('_', ' ')}", ms, "ms")
        elif name == "api":
            lat = r.get("latency", {})
            for kind in ("operator_list", "tenant_list", "operator_show", "tenant_show"):
                add("8 api", f"{kind} p99 ({r.get('history_deliveries')} deliveries)",
                    _get(lat, kind, "p99_ms"), "ms")  # fmt: skip
            add("8 api", "worst p99 of list/show (target <= 20)", lat.get("worst_p99_ms"), "ms")
            add("8 api", "drain rate with a dashboard on the API / without (target >= 0.95)",
                _get(r, "drain", "ratio_loaded_to_alone"))  # fmt: skip
            add("8 api", "  same, API hammered back to back / without",
                _get(r, "drain", "ratio_saturated_to_alone"))  # fmt: skip
            add("8 api", "  API CPU per request (back to back)",
                _get(r, "drain", "saturated", "api_cpu_us_per_request"), "us")  # fmt: skip
        elif name == "emit":
            for b in (1, 100):
                e = r.get(f"batch_{b}", {})
                add(
                    "7 emit",
                    f"batch {b}: txn without outbox (mean)",
                    _get(e, "without", "mean_ms"),
                    "ms",
                )
                add(
                    "7 emit",
                    f"batch {b}: txn with relay.emit (mean)",
                    _get(e, "with", "mean_ms"),
                    "ms",
                )
                add(
                    "7 emit",
                    f"batch {b}: added per txn (mean / p50)",
                    f"{_fmt(e.get('added_ms_mean'))} / {_fmt(e.get('added_ms_p50'))} ms",
                )
                add(
                    "7 emit",
                    "  added: same statement as the app's (CTE)",
                    e.get("added_ms_mean_one_statement"),
                    "ms",
                )
                add(
                    "7 emit",
                    "  added: SQL relay.emit() / plain INSERT / SELECT 1",
                    f"{_fmt(e.get('added_ms_mean_sql_function'))} / "
                    f"{_fmt(e.get('added_ms_mean_sql_insert'))} / "
                    f"{_fmt(e.get('added_ms_mean_select_1'))} ms",
                )
    return rows


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    sc = res["scenarios"]
    out: list[dict[str, Any]] = []

    def check(name: str, value: Any, op: str, limit: float, unit: str = "") -> None:
        if value is None:
            verdict = "n/a"
        else:
            ok = value >= limit if op == ">=" else value <= limit
            verdict = "PASS" if ok else "MISS"
        out.append(
            {
                "target": name,
                "measured": value,
                "op": op,
                "limit": limit,
                "unit": unit,
                "verdict": verdict,
            }
        )

    check(
        "drain >= 0.7 x ceiling (1 relay)",
        _get(sc, "drain", "relays_1", "ratio_to_ceiling"),
        ">=",
        0.7,
    )
    check(
        "  same, vs the paired ceiling run just before",
        _get(sc, "drain", "relays_1", "ratio_to_paired_ceiling"),
        ">=",
        0.7,
    )
    check(
        "latency p50 <= 2 ms", _get(sc, "latency", "commit_to_arrival_ms", "p50"), "<=", 2.0, "ms"
    )
    check(
        "latency p99 <= 5 ms", _get(sc, "latency", "commit_to_arrival_ms", "p99"), "<=", 5.0, "ms"
    )
    check(
        "issue 18: 1 process >= 0.75 x the bare loop",
        _get(sc, "drain", "relays_1", "ratio_to_bare_loop"),
        ">=",
        0.75,
    )
    check(
        "issue 18: 1 process >= 0.6 x ceiling",
        _get(sc, "drain", "relays_1", "ratio_to_ceiling"),
        ">=",
        0.6,
    )
    check(
        "issue 18: --processes auto >= 0.7 x ceiling",
        _get(sc, "drain", "processes_auto", "ratio_to_ceiling"),
        ">=",
        0.7,
    )
    check(
        "issue 18: latency p99 <= 20 ms at 2,000/s",
        _get(sc, "latency_high", "commit_to_arrival_ms", "p99"),
        "<=",
        20.0,
        "ms",
    )
    check("issue 18: fan-out 1x10 >= 1x1", _get(sc, "fanout", "ratio_1x10_to_10x1"), ">=", 1.0)
    check("scale end rate >= 0.8 x start rate", _get(sc, "scale", "end_to_start"), ">=", 0.8)
    check("scale relay RSS <= 200 MB", _get(sc, "scale", "peak_rss_mb"), "<=", 200.0, "MB")
    check(
        "retry storm healthy rate >= 0.8 x healthy",
        _get(sc, "retry", "healthy_rate_ratio"),
        ">=",
        0.8,
    )
    check(
        "emit adds <= 0.2 ms per txn (batch 1, mean)",
        _get(sc, "emit", "batch_1", "added_ms_mean"),
        "<=",
        0.2,
        "ms",
    )
    return out


def render(res: dict[str, Any]) -> str:
    hw = res["hardware"]
    lines = [
        f"relay benchmark — {res['started']}  (code {res['code_fingerprint']}"
        f"{', QUICK' if res['quick'] else ''})",
        f"hardware: {hw['cpu']}, {hw['cores']} cores, {hw['memory_gb']} GB RAM; "
        f"Python {hw['python']}; PostgreSQL {hw['postgres']} "
        f"(shared_buffers {hw['postgres_settings']['shared_buffers']}, synchronous_commit "
        f"{hw['postgres_settings']['synchronous_commit']}, fsync "
        f"{hw['postgres_settings']['fsync']}); all on loopback",
        "",
    ]
    rows = figures(res)
    w1 = max([len(r[0]) for r in rows] + [8])
    w2 = max([len(r[1]) for r in rows] + [6])
    w3 = max([len(r[2]) for r in rows] + [5])
    lines.append(f"{'scenario':<{w1}}  {'figure':<{w2}}  {'value':>{w3}}")
    lines.append(f"{'-' * w1}  {'-' * w2}  {'-' * w3}")
    for a, b, c in rows:
        lines.append(f"{a:<{w1}}  {b:<{w2}}  {c:>{w3}}")
    lines.append("")
    tg = res["targets"]
    t1 = max(len(t["target"]) for t in tg)
    lines.append(f"{'target (from the issue)':<{t1}}  {'measured':>12}  verdict")
    lines.append(f"{'-' * t1}  {'-' * 12}  -------")
    for t in tg:
        lines.append(f"{t['target']:<{t1}}  {_fmt(t['measured'], t['unit']):>12}  {t['verdict']}")
    return "\n".join(lines)


def finish(results: dict[str, Any], t_all: float, out: Path, *, complete: bool) -> None:
    """Derive the cross-scenario figures and targets; write the JSON file."""
    # Ratios to the ceiling need both scenarios of this run.
    ceil = results["scenarios"].get("ceiling", {}).get("rate_per_s")
    drain = results["scenarios"].get("drain", {})
    for key in ("relays_1", "relays_2", "processes_auto", "bare"):
        d = drain.get(key)
        if isinstance(d, dict):
            rate = d.get("rate_per_s")
            d["ratio_to_ceiling"] = round(rate / ceil, 3) if rate and ceil else None
    bare_rate = drain.get("bare", {}).get("rate_per_s")
    for key in ("relays_1", "relays_2", "processes_auto"):
        d = drain.get(key)
        if isinstance(d, dict) and d.get("rate_per_s") and bare_rate:
            d["ratio_to_bare_loop"] = round(d["rate_per_s"] / bare_rate, 3)
    results["targets"] = targets(results)
    results["total_s"] = round(time.monotonic() - t_all, 1)
    results["complete"] = complete
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, frame: object) -> None:
        # Unwind normally: every relay and receiver is stopped and every scenario database
        # dropped by the context managers on the way out; the JSON keeps finished scenarios.
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    settings = Settings.quick_settings() if args.quick else Settings()
    if args.scale_n is not None:
        settings.scale_n = args.scale_n
    if args.scale_timeout is not None:
        settings.scale_timeout = args.scale_timeout
    if args.drain_n is not None:
        settings.drain_n = args.drain_n
    if args.history_n is not None:
        settings.history_n = args.history_n
    if args.soak_seconds is not None:
        settings.soak_seconds = args.soak_seconds
    if args.latency_rate is not None:
        settings.latency_rate = args.latency_rate
    if args.latency_seconds is not None:
        settings.latency_seconds = args.latency_seconds
    for item in args.relay_env:
        key, sep, value = item.partition("=")
        if not sep or not (key.startswith("RELAY_") or key == "PGOPTIONS"):
            print(
                f"--relay-env: expected RELAY_NAME=VALUE or PGOPTIONS=..., got {item!r}",
                file=sys.stderr,
            )
            return 2
        settings.relay_env[key] = value
    settings.py_spy = args.py_spy.resolve() if args.py_spy else None
    harness.RECEIVER_LEAN = not args.aiohttp_receiver

    if args.compare:
        return run_compare(args, settings)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        print(
            f"--only: unknown scenario(s) {', '.join(unknown)}; "
            f"choose from {', '.join(TABLE_ORDER + OTHER_SCENARIOS)}",
            file=sys.stderr,
        )
        return 2
    selected = [s for s in RUN_ORDER if not only or s in only]

    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    ctx = Context(Databases(args.database_url, keep=args.keep_databases), workdir, settings)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "quick": settings.quick,
        "argv": sys.argv[1:] if argv is None else list(argv),
        "code_fingerprint": code_fingerprint(),
        "receiver": "lean" if harness.RECEIVER_LEAN else "aiohttp",
        "hardware": hardware(args.database_url),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(settings).items()},
        "scenarios": {},
    }
    t_all = time.monotonic()
    out = Path(args.output)
    failed = False
    for name in selected:
        if args.wait_idle > 0:
            waited, busy = wait_idle(args.wait_idle)
            log(f"machine {100 * busy:.0f}% busy after waiting {waited:.0f}s for it to idle")
        load_before = loadavg()
        log(f"=== {name} (load average {load_before})")
        t0 = time.monotonic()
        try:
            results["scenarios"][name] = SCENARIOS[name](ctx)
        except (SystemExit, KeyboardInterrupt):
            # Interrupted (SIGTERM, ^C): keep what this scenario saw so far, then stop.
            log(f"{name} interrupted; partial figures kept in {out}")
            results["scenarios"][name] = {"error": "interrupted", "partial": ctx.partial.get(name)}
            finish(results, t_all, out, complete=False)
            raise
        except Exception as exc:  # one broken scenario must not lose the others' figures
            failed = True
            log(f"{name} failed: {exc}")
            results["scenarios"][name] = {
                "error": f"{type(exc).__name__}: {exc}",
                "traceback": traceback.format_exc(),
            }
        results["scenarios"][name]["duration_s"] = round(time.monotonic() - t0, 1)
        # The machine may be shared: the load average tells how noisy the figures are.
        results["scenarios"][name]["loadavg_before_after"] = [load_before, loadavg()]
        # Written after every scenario: an interrupted run keeps what it measured.
        finish(results, t_all, out, complete=False)
    finish(results, t_all, out, complete=True)
    print(render(results))
    scale_r = results["scenarios"].get("scale", {})
    if isinstance(scale_r, dict) and scale_r.get("explain_dispatch_before_start"):
        print(
            "\nEXPLAIN (ANALYZE, BUFFERS) dispatch_outbox, "
            f"{scale_r['events']:,} undispatched rows:"
        )
        print("\n".join("  " + line for line in scale_r["explain_dispatch_before_start"]))
        half = scale_r.get("at_half", {})
        if half.get("explain_claim"):
            print(
                f"\nEXPLAIN (ANALYZE, BUFFERS) claim_deliveries, at half way "
                f"({half.get('delivered_at_explain'):,} delivered; deliveries "
                f"{half.get('db')}):"
            )
            print("\n".join("  " + line for line in half["explain_claim"]))
        if half.get("explain_claim_saturated"):
            print(
                "\nEXPLAIN (ANALYZE, BUFFERS) claim_deliveries at half way, with the only "
                "subscription at its in-flight cap (saturated):"
            )
            print("\n".join("  " + line for line in half["explain_claim_saturated"]))
    print(f"\nresults written to {out} ({results['total_s']}s in all)")
    if not args.keep_databases:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


def run_compare(args: argparse.Namespace, settings: Settings) -> int:
    """``--compare REF``: the drain of REF's relay and of this tree's, A/B/A/B, to the JSON."""
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    ctx = Context(Databases(args.database_url, keep=args.keep_databases), workdir, settings)
    if args.wait_idle > 0:
        waited, busy = wait_idle(args.wait_idle)
        log(f"machine {100 * busy:.0f}% busy after waiting {waited:.0f}s for it to idle")
    load_before = loadavg()
    t0 = time.monotonic()
    res = round6.compare(ctx, args.compare, args.compare_rounds)
    res["loadavg_before_after"] = [load_before, loadavg()]
    results = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "argv": sys.argv[1:],
        "receiver": "lean" if harness.RECEIVER_LEAN else "aiohttp",
        "hardware": hardware(args.database_url),
        "compare": res,
        "total_s": round(time.monotonic() - t0, 1),
    }
    Path(args.output).write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"drain, {res['events']:,} events, one relay (A/B/A/B):")
    for r in res["runs"]:
        pr = r["per_request"]
        print(
            f"  {r['side']:>8} round {r['round']}: {_fmt(r.get('rate_per_s'))} deliv/s "
            f"(paired ceiling {_fmt(r['paired_ceiling_per_s'])}/s; CPU/delivery relay+PG+rx "
            f"{pr['relay_cpu_us']}+{pr['postgres_backends_cpu_us']}+{pr['receiver_cpu_us']} us)"
        )
    print(f"current / {res['ref']} ({res['ref_commit']}): {res['ratio_current_to_ref']}")
    print(f"results written to {args.output}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0
