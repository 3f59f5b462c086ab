"""Issue 18's scenarios: latency at 2,000 events/s, synchronous_commit on vs off, 1/2/3 relay
processes against one Postgres (where the claims start to contend), and ``--compare REF``:
the drain of another git ref's relay measured beside this tree's, interleaved A/B/A/B.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import ROOT, ReceiverProc, RelayProc, add_subscriptions, insert_backlog, log
from bench.scenarios import Context, _bodies, _drain, _measure_ceiling, _strip, latency


def latency_high(ctx: Context) -> dict[str, Any]:
    """The latency scenario at ``latency_high_rate`` (2,000) events/s."""
    s = ctx.settings
    return latency(ctx, s.latency_high_rate, s.latency_high_seconds)


def _one_drain(
    ctx: Context,
    label: str,
    *,
    relay_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    code_root: Path | None = None,
    on_poll: Any = None,
) -> dict[str, Any]:
    s = ctx.settings
    with ctx.dbs.fresh(label, code_root=code_root) as db, ReceiverProc(workdir=ctx.workdir) as rx:
        add_subscriptions(db, [rx.url("/hook")])
        insert_backlog(db, s.drain_n)
        poll = on_poll(db) if on_poll is not None else None
        res = _drain(
            ctx,
            db,
            rx,
            expected_ok=s.drain_n,
            n_relays=1,
            timeout=max(120.0, s.drain_n / 50),
            label=label,
            relay_args=relay_args,
            env=env,
            code_root=code_root,
            on_poll=poll,
            poll_interval=0.05 if poll is not None else None,
        )
    log(f"{label}: {res.get('rate_per_s')} deliveries/s")
    return _strip(res)


def sync_commit(ctx: Context) -> dict[str, Any]:
    """One relay draining with RELAY_SYNCHRONOUS_COMMIT off (the default) and on, interleaved."""
    out: dict[str, Any] = {"events": ctx.settings.drain_n, "rounds": []}
    for i in range(ctx.settings.sync_commit_rounds):
        pair = {}
        for mode in ("off", "on"):
            pair[mode] = _one_drain(ctx, f"sync_{mode}_{i}", env={"RELAY_SYNCHRONOUS_COMMIT": mode})
        out["rounds"].append(pair)
    for mode in ("off", "on"):
        rates = [r[mode].get("rate_per_s") or 0.0 for r in out["rounds"]]
        out[f"{mode}_rate_per_s"] = rates
    off, on = sum(out["off_rate_per_s"]), sum(out["on_rate_per_s"])
    out["ratio_off_to_on"] = round(off / on, 3) if on else None
    return out


# ----------------------------------------------------------------------- processes (scaling)


def _activity_sampler(db: str) -> Any:
    """An ``on_poll`` callback that samples what relay's backends are doing (pg_stat_activity):
    how many are running a statement, and what those wait on (Lock/LWLock = contention)."""
    samples: Counter[str] = Counter()
    state: dict[str, Any] = {"conn": psycopg.connect(db, autocommit=True), "polls": 0}

    def poll(st: dict[str, Any], procs: list[RelayProc]) -> None:
        conn = state["conn"]
        rows = conn.execute(
            "SELECT state, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, ''),"
            " left(query, 60) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            " AND backend_type = 'client backend'"
        ).fetchall()
        state["polls"] += 1
        for st_, wtype, wevent, query in rows:
            if st_ == "active":
                samples["active"] += 1
                samples[f"wait:{wtype}:{wevent}"] += 1
                samples[f"query:{query.split('(')[0].strip()[:40]}"] += 1

    poll.samples = samples  # type: ignore[attr-defined]
    poll.state = state  # type: ignore[attr-defined]
    return poll


def scaling(ctx: Context) -> dict[str, Any]:
    """``relay run --processes N`` for N = 1, 2, 3 on the same backlog size: rate, CPU per
    delivery of relay and of Postgres, and what the active backends were waiting on."""
    out: dict[str, Any] = {"events": ctx.settings.drain_n}
    for n in (1, 2, 3):
        samplers: list[Any] = []

        def make(db: str, samplers: list[Any] = samplers) -> Any:
            sampler = _activity_sampler(db)
            samplers.append(sampler)
            return sampler

        res = _one_drain(ctx, f"scaling{n}", relay_args=("--processes", str(n)), on_poll=make)
        sampler = samplers[0]
        polls = sampler.state["polls"] or 1
        samples: Counter[str] = sampler.samples
        sampler.state["conn"].close()
        res["activity"] = {
            "polls": polls,
            "mean_active_backends": round(samples["active"] / polls, 2),
            "waits_per_poll": {
                k[5:]: round(v / polls, 3) for k, v in samples.most_common() if k[:5] == "wait:"
            },
            "queries_per_poll": {
                k[6:]: round(v / polls, 3) for k, v in samples.most_common(12) if k[:6] == "query:"
            },
        }
        out[f"processes_{n}"] = res
    return out


# ----------------------------------------------------------------------- --compare REF


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[Path]:
    """``git worktree add`` of ``ref`` in a temporary directory, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="relay-compare-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(path), ref],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, capture_output=True
        )


def migrate_with(code_root: Path, db_url: str) -> None:
    """``relay migrate`` of another checkout (its own migrations) on ``db_url``."""
    env = {**os.environ, "PYTHONPATH": str(code_root), "RELAY_DATABASE_URL": db_url}
    subprocess.run(
        [sys.executable, "-m", "relay", "migrate"],
        cwd=code_root,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )


def compare(ctx: Context, ref: str, rounds: int) -> dict[str, Any]:
    """The drain (one relay, defaults) of ``ref`` and of this tree, A/B/A/B on one host, each
    with a paired ceiling on its own receiver just before."""
    rev = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    out: dict[str, Any] = {"ref": ref, "ref_commit": rev, "events": ctx.settings.drain_n}
    runs: list[dict[str, Any]] = []
    with checkout(ref) as tree:
        for i in range(rounds):
            for side, root in (("ref", tree), ("current", None)):
                with ReceiverProc(workdir=ctx.workdir) as rx:
                    paired = _measure_ceiling(
                        rx, _bodies(ctx.settings.ceiling_n), ctx.settings.ceiling_concurrency
                    )
                res = _one_drain(ctx, f"compare_{side}_{i}", code_root=root)
                res["side"] = side
                res["round"] = i
                res["paired_ceiling_per_s"] = paired["rate_per_s"]
                res["at"] = time.strftime("%H:%M:%S")
                runs.append(res)
    out["runs"] = runs
    for side in ("ref", "current"):
        rates = [r.get("rate_per_s") or 0.0 for r in runs if r["side"] == side]
        out[f"{side}_rates_per_s"] = rates
        out[f"{side}_cpu_us_relay_pg_rx"] = [
            [r["per_request"][k] for k in ("relay_cpu_us", "postgres_backends_cpu_us",
                                            "receiver_cpu_us")]
            for r in runs if r["side"] == side
        ]  # fmt: skip
    a, b = sum(out["ref_rates_per_s"]), sum(out["current_rates_per_s"])
    out["ratio_current_to_ref"] = round(b / a, 3) if a else None
    return out
