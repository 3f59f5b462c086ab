"""SIGKILL of ``relay run`` at random moments: nothing is lost, duplicates stay in the window.

Real processes: a receiver process (``tests/receiver.py``) with a small answer delay to widen
the in-flight window, ``python -m relay run`` processes killed with SIGKILL while a producer
thread keeps committing events, and a final relay that must finish the job.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from tests.faults._util import Conn, report, scalar, scaled, seed_from_env, wait_sync
from tests.faults.conftest import StartRelay
from tests.receiver import ReceiverProcess, start_receiver_process
from tests.relayctx import add_subscription

CONCURRENCY = 32
LEASE_SECONDS = 3


def _lines(rx: ReceiverProcess) -> int:
    """Requests logged by the receiver so far (cheap: counts newlines)."""
    try:
        return rx.log_path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


class Producer(threading.Thread):
    """Commits ``total`` events in small random batches, each its own transaction, spread
    over ``seconds``; :meth:`hurry` commits the rest without pausing."""

    def __init__(self, url: str, total: int, seconds: float, seed: int) -> None:
        super().__init__(name="producer", daemon=True)
        self.url = url
        self.total = total
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.emitted = 0
        self.error: BaseException | None = None
        self._hurry = threading.Event()

    def hurry(self) -> None:
        self._hurry.set()

    def run(self) -> None:
        try:
            with psycopg.connect(self.url) as conn:
                t0 = time.monotonic()
                while self.emitted < self.total:
                    size = min(self.rng.randint(1, 60), self.total - self.emitted)
                    with conn.transaction():
                        conn.execute(
                            "INSERT INTO relay.outbox (event_type, payload)"
                            " SELECT 'order.created', jsonb_build_object('n', g)"
                            " FROM generate_series(%s::int, %s::int) g",
                            (self.emitted + 1, self.emitted + size),
                        )
                    self.emitted += size
                    # Keep to the planned rate: the flow lasts ~`seconds`.
                    ahead = t0 + self.seconds * self.emitted / self.total - time.monotonic()
                    if ahead > 0:
                        self._hurry.wait(ahead)
        except BaseException as exc:  # reported by the test
            self.error = exc


def _idle(conn: Conn, producer: Producer) -> bool:
    """No work left for a relay to make progress on (guards the progress wait)."""
    return not producer.is_alive() and not scalar(
        conn,
        "SELECT EXISTS (SELECT 1 FROM relay.deliveries WHERE status = 'pending')"
        " OR EXISTS (SELECT 1 FROM relay.outbox WHERE dispatched_at IS NULL)",
    )


def test_sigkill_at_random_moments_loses_nothing(
    conn: Conn, database_url: str, relay_procs: StartRelay, tmp_path: Path
) -> None:
    """Kill -9 relay processes at random moments (startup, fan-out, claim, HTTP, before ack)
    while events flow: afterwards every event reached each subscription at least once, and the
    duplicates (requests a killed relay sent but never acked) stay within what the killed
    relays still held leased, counted after each kill.
    Every delivery has exactly one attempt row: a killed relay records nothing."""
    seed = seed_from_env()
    rng = random.Random(seed)
    n_events = scaled(2000, 10_000)
    kills = scaled(6, 24)
    print(f"\ncrash test seed={seed} (replay with RELAY_FAULTS_SEED={seed})")
    settings: dict[str, Any] = {
        "lease_seconds": LEASE_SECONDS,
        "concurrency": CONCURRENCY,
        "poll_interval": 0.5,
        "log_level": "warning",
    }
    modes = [rng.choices(["startup", "fanout", "flow"], [0.2, 0.3, 0.5])[0] for _ in range(kills)]
    # Bursts (big single transactions to kill the dispatcher in) take at most half the events.
    burst = min(scaled(300, 800), n_events // 2 // max(1, modes.count("fanout")))
    bursts = modes.count("fanout") * burst
    with start_receiver_process(tmp_path, delay=0.01) as rx:
        # A short timeout keeps the effective lease (timeout + 5 s, see the claim query) short.
        add_subscription(conn, rx.url_for("/a"), timeout_ms=1000)
        add_subscription(conn, rx.url_for("/b"), timeout_ms=1000)
        # Paced to outlast the kill phase, so every relay gets work; hurried afterwards.
        producer = Producer(database_url, n_events - bursts, seconds=kills * 3.0, seed=seed)
        producer.start()
        moments: list[dict[str, Any]] = []
        t_start = time.monotonic()
        for i, mode in enumerate(modes):
            relay_id = f"crash-{i}"
            relay = relay_procs(database_url, relay_id=relay_id, **settings)
            if mode == "startup":
                # During start-up, the first dispatch or the first claim.
                time.sleep(rng.uniform(0.3, 1.2))
            else:
                before = _lines(rx)

                def progressed(before: int = before) -> bool:
                    return _lines(rx) > before or _idle(conn, producer)

                wait_sync(progressed, 60, "the relay to make progress")
                if mode == "fanout":
                    # One big transaction, then kill while the dispatcher fans it out.
                    conn.execute(
                        "INSERT INTO relay.outbox (event_type, payload)"
                        " SELECT 'order.created', jsonb_build_object('burst', g)"
                        " FROM generate_series(1, %s) g",
                        (burst,),
                    )
                    time.sleep(rng.uniform(0.0, 0.15))
                else:
                    time.sleep(rng.uniform(0.0, 1.5))
            backlog = scalar(conn, "SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL")
            relay.kill()
            assert relay.proc.returncode == -signal.SIGKILL
            # Counted after the kill, while no relay runs (the database no longer changes):
            # what it held with no outcome written -- requests in flight, outcomes waiting for
            # their batched ack, prefetched deliveries never sent.
            leased = scalar(
                conn,
                "SELECT count(*) FROM relay.deliveries"
                " WHERE status = 'pending' AND lease_owner = %s",
                (relay_id,),
            )
            moments.append(
                {
                    "kill": i + 1,
                    "mode": mode,
                    "leased": leased,
                    "undispatched": backlog,
                    "rx": _lines(rx),
                }
            )
        producer.hurry()
        producer.join(120)
        assert producer.error is None, producer.error
        assert producer.emitted == n_events - bursts
        assert scalar(conn, "SELECT count(*) FROM relay.outbox") == n_events
        kill_phase = time.monotonic() - t_start
        final = relay_procs(database_url, relay_id="crash-final", **settings)
        expected = 2 * n_events
        drain = wait_sync(
            lambda: (
                scalar(conn, "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'")
                == expected
            ),
            scaled(120, 300),
            "every delivery to be delivered after the kills",
        )
        final.signal(signal.SIGTERM)
        assert final.wait(30) == 0
        records = rx.records()

    per_target = Counter((r["path"], r["webhook_id"]) for r in records)
    assert {path for path, _ in per_target} == {"/a", "/b"}
    assert len(per_target) == expected, "every event reached every subscription at least once"
    duplicates = sum(c - 1 for c in per_target.values())
    unrecorded = sum(m["leased"] for m in moments)
    assert duplicates <= unrecorded, (duplicates, unrecorded)
    assert scalar(conn, "SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL") == 0
    assert scalar(conn, "SELECT count(*) FROM relay.deliveries") == expected
    assert scalar(conn, "SELECT count(*) FROM relay.delivery_attempts") == expected
    assert scalar(conn, "SELECT max(attempts) FROM relay.deliveries") == 1
    for m in moments:
        print(
            f"  kill {m['kill']:>2} ({m['mode']:>7}): leased by it={m['leased']:>3}"
            f" undispatched={m['undispatched']:>4} received so far={m['rx']}"
        )
    report(
        "crash",
        seed=seed,
        events=n_events,
        subscriptions=2,
        deliveries=expected,
        kills=kills,
        kills_with_requests_in_flight=sum(1 for m in moments if m["leased"] > 0),
        kills_with_fanout_pending=sum(1 for m in moments if m["undispatched"] > 0),
        kill_modes=dict(Counter(modes)),
        lost=expected - len(per_target),
        duplicates=duplicates,
        duplicate_bound=unrecorded,
        requests=len(records),
        kill_phase_s=round(kill_phase, 1),
        drain_after_last_kill_s=round(drain, 1),
    )


def test_dead_relays_leases_are_reclaimed_within_the_lease_time(
    conn: Conn, database_url: str, relay_procs: StartRelay, tmp_path: Path
) -> None:
    """With RELAY_LEASE_SECONDS=3, the rows a SIGKILLed relay held are taken over by a new relay
    as soon as the lease expires (not before: no early steal) and delivered within
    lease + poll + the receiver's answer time.

    The claim query makes a lease at least the subscription's timeout + 5 s (so a slow but
    live request is not stolen): with timeout_ms=1500 the effective lease is 6.5 s."""
    lease, poll, answer, timeout_ms = 3.0, 0.5, 1.0, 1500
    effective = max(lease, timeout_ms / 1000 + 5)
    with start_receiver_process(tmp_path, delay=answer) as rx:
        add_subscription(conn, rx.url, timeout_ms=timeout_ms)
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload)"
            " SELECT 'order.created', jsonb_build_object('n', g) FROM generate_series(1, 12) g"
        )
        first = relay_procs(
            database_url,
            relay_id="doomed",
            lease_seconds=lease,
            poll_interval=poll,
            concurrency=16,
            subscription_concurrency=16,
        )
        rx.wait_for(12, timeout=30)  # all 12 requests are in flight (each takes 1 s)
        with conn.cursor() as cur:
            cur.execute(
                "SELECT id, next_attempt_at FROM relay.deliveries"
                " WHERE status = 'pending' AND lease_owner = 'doomed'"
            )
            leased = dict(cur.fetchall())
        first.kill()
        killed_at = datetime.now(UTC)
        assert leased, "the killed relay held leases"
        second = relay_procs(database_url, relay_id="heir", lease_seconds=lease, poll_interval=poll)
        wait_sync(
            lambda: (
                scalar(
                    conn,
                    "SELECT count(*) FROM relay.deliveries WHERE id = ANY(%s)"
                    " AND status = 'delivered'",
                    (list(leased),),
                )
                == len(leased)
            ),
            30,
            "the dead relay's leased rows to be delivered",
        )
        second.signal(signal.SIGTERM)
        assert second.wait(30) == 0
    with conn.cursor() as cur:
        cur.execute(
            "SELECT d.id, a.relay_id, a.started_at, d.delivered_at, a.duration_ms"
            " FROM relay.deliveries d JOIN relay.delivery_attempts a ON a.delivery_id = d.id"
            " WHERE d.id = ANY(%s)",
            (list(leased),),
        )
        rows = cur.fetchall()
    assert len(rows) == len(leased)  # one attempt each: the killed relay recorded nothing
    early = []
    retake, done = [], []
    for delivery_id, relay_id, started_at, delivered_at, _ in rows:
        assert relay_id == "heir"
        expiry = leased[delivery_id]
        # The lease was taken before the kill, so it ends at most `effective` after it.
        assert (expiry - killed_at).total_seconds() <= effective + 0.1
        if started_at < expiry - _tolerance():
            early.append(delivery_id)
        retake.append((started_at - expiry).total_seconds())
        done.append((delivered_at - killed_at).total_seconds())
    assert not early, f"leases stolen before they expired: {early}"
    assert max(retake) < poll + 1.5, retake
    assert max(done) < effective + poll + answer + 2.0, done
    report(
        "lease_reclaim",
        lease_seconds=lease,
        effective_lease_seconds=effective,
        leased_at_kill=len(leased),
        retaken_after_expiry_max_s=round(max(retake), 3),
        delivered_after_kill_max_s=round(max(done), 3),
    )


def _tolerance() -> timedelta:
    # started_at is the relay's clock, the lease expiry Postgres's: same host, tiny skew.
    return timedelta(milliseconds=50)
