"""Claim cost beside a saturated subscription (issue 14): two subscriptions, a 500k backlog
of due deliveries for the saturated one, 1,000 for the other; times relay.claim_deliveries()
with the saturated one excluded, and counts the index tuples it fetched.

    python -m bench.saturated_claim postgresql://postgres@127.0.0.1:5432/somedb [BACKLOG]

The database must be migrated and otherwise empty; the claims are rolled back.
"""

from __future__ import annotations

import statistics
import sys
import time
import uuid

import psycopg


def main(url: str, backlog: int = 500_000) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        slow, fast = (
            conn.execute(
                "INSERT INTO relay.subscriptions (url) VALUES (%s) RETURNING id", (u,)
            ).fetchone()[0]  # type: ignore[index]
            for u in ("http://127.0.0.1:9/slow", "http://127.0.0.1:9/fast")
        )
        conn.execute(
            "INSERT INTO relay.outbox (event_type, payload, dispatched_at)"
            " SELECT 'order.created', '{}', now() FROM generate_series(1, %s)",
            (backlog + 1000,),
        )
        conn.execute(
            "INSERT INTO relay.deliveries (outbox_id, subscription_id, event_type,"
            " next_attempt_at) SELECT id, CASE WHEN id <= %s THEN %s ELSE %s END,"
            " 'order.created', now() - interval '1 day' + id * interval '1 ms'"
            " FROM relay.outbox",
            (backlog, slow, fast),
        )
        conn.execute("VACUUM ANALYZE relay.deliveries")
        times, fetched = [], []
        for _ in range(20):
            with conn.transaction(force_rollback=True):
                t0 = time.perf_counter()
                rows = conn.execute(
                    "SELECT id FROM relay.claim_deliveries(32, %s, 'bench', %s, 60)",
                    ([slow], uuid.uuid4()),
                ).fetchall()
                times.append((time.perf_counter() - t0) * 1000)
                fetched.append(
                    conn.execute(
                        "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables"
                        " WHERE schemaname = 'relay' AND relname = 'deliveries'"
                    ).fetchone()[0]  # type: ignore[index]
                )
                assert len(rows) == 32, len(rows)
        print(
            f"backlog={backlog} claim(32, saturated=[slow]): "
            f"median {statistics.median(times):.2f} ms, max {max(times):.2f} ms, "
            f"index tuples fetched {statistics.median(fetched):.0f}"
        )


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
