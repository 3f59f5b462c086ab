-- Queries of the daemon (relay run). Loaded once by relay.queries; called only from relay/store.py.

-- name: dispatch_outbox
-- Fan out up to %(limit)s outbox rows, leasing up to %(lease_limit)s of their deliveries to
-- this relay: the statement lives in relay.dispatch_outbox() (sql/migrations/0002_*.sql),
-- where its plan is pinned.
SELECT * FROM relay.dispatch_outbox(
    %(limit)s, %(lease_limit)s, %(owner)s, %(token)s, %(lease_seconds)s);

-- name: claim_deliveries
-- Lease up to %(limit)s due deliveries to this relay, skipping the %(saturated)s
-- subscriptions: the statement lives in relay.claim_deliveries() (sql/migrations/0003_*.sql),
-- where its plan is pinned.
SELECT * FROM relay.claim_deliveries(
    %(limit)s, %(saturated)s::bigint[], %(owner)s, %(token)s, %(lease_seconds)s);

-- name: ack_deliveries
-- Record a batch of attempt outcomes in one statement (relay.ack_deliveries(),
-- sql/migrations/0003_*.sql); returns the delivery ids whose lease was still ours.
SELECT * FROM relay.ack_deliveries(
    %(relay_id)s, %(ids)b::bigint[], %(tokens)b::uuid[], %(outcomes)b::text[],
    %(delays)b::float8[], %(codes)b::int[], %(errors)b::text[],
    %(started)b::timestamptz[], %(durations)b::float8[], %(bodies)b::text[]);

-- name: release_deliveries
-- Give leased rows back (shutdown, cancelled or lapsing work): due now, for any relay
-- (relay.release_deliveries(), sql/migrations/0003_*.sql).
SELECT * FROM relay.release_deliveries(%(ids)s::bigint[], %(tokens)s::uuid[]);

-- name: seconds_until_due
-- How long until the earliest delivery a claim could take falls due (negative: overdue);
-- NULL if none. Same filters as the claim (not saturated): otherwise rows the claim skips
-- would look due and the deliverer would spin. A due row of a disabled or removed
-- subscription counts: the next claim settles it (parks it or ends it), once.
SELECT extract(epoch FROM d.next_attempt_at - now())::float8
FROM relay.deliveries d
JOIN relay.subscriptions s ON s.id = d.subscription_id
WHERE d.status = 'pending'
  AND d.subscription_id <> ALL (%(saturated)s::bigint[])
  -- the ordering guard of relay.claim_due() (0006): a delivery held back by an earlier one
  -- of its aggregate is not due for this purpose, or the deliverer would spin on it. (The
  -- probe reads a column outside its index: a plain index scan, which marks the entries of
  -- finished rows dead as it meets them; see relay.claim_due.)
  AND (NOT s.ordered OR d.aggregate_id IS NULL OR NOT EXISTS (
        SELECT 1 FROM relay.deliveries e
        WHERE e.subscription_id = d.subscription_id
          AND e.aggregate_id = d.aggregate_id
          AND e.outbox_id < d.outbox_id
          AND e.status = 'pending'
          AND e.next_attempt_at IS NOT NULL))
ORDER BY d.next_attempt_at
LIMIT 1;

-- name: unpark_ordered_heads
-- Safety net of ordered subscriptions (relay.unpark_ordered_heads(), 0006): make due the
-- parked head of an aggregate that nothing holds back any more. Returns how many.
SELECT relay.unpark_ordered_heads();

-- name: heartbeat
INSERT INTO relay.relays (relay_id, hostname, pid, version)
VALUES (%(relay_id)s, %(hostname)s, %(pid)s, %(version)s)
ON CONFLICT (relay_id) DO UPDATE SET last_seen = now();

-- name: refresh_stats
-- Recompute the shared gauges if nobody did within the interval. Every count reads a partial
-- index whose size is the backlog, not the table; the dead rows kept are history, so their
-- count is the catalog's estimate once it reaches %(exact_below)s (relay.deliveries_dead_estimate,
-- 0010; the count is an InitPlan run only while the estimate is under it). "Oldest pending age" is the age of the
-- oldest work that is due and not done: undispatched outbox rows by creation time, due
-- deliveries by when they fell due (a retry waiting for its scheduled time is not late).
UPDATE relay.stats
SET outbox_backlog = (SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL),
    deliveries_pending = (SELECT count(*) FROM relay.deliveries WHERE status = 'pending'),
    deliveries_dead = CASE
        WHEN (SELECT n FROM relay.deliveries_dead_estimate) >= %(exact_below)s
        THEN (SELECT n FROM relay.deliveries_dead_estimate)
        ELSE (SELECT count(*) FROM relay.deliveries WHERE status = 'dead')
    END,
    oldest_pending_age = greatest(0,
        extract(epoch FROM now() - (SELECT created_at FROM relay.outbox
                                    WHERE dispatched_at IS NULL ORDER BY id LIMIT 1)),
        extract(epoch FROM now() - (SELECT min(next_attempt_at) FROM relay.deliveries
                                    WHERE status = 'pending' AND next_attempt_at <= now()))),
    relays_seen = (SELECT count(*) FROM relay.relays WHERE last_seen > now() - interval '1 minute'),
    refreshed_by = %(relay_id)s,
    refreshed_at = now()
WHERE id = 1 AND refreshed_at < now() - make_interval(secs => %(interval)s);

-- name: read_stats
SELECT outbox_backlog, deliveries_pending, deliveries_dead, oldest_pending_age, relays_seen,
       (SELECT count(*) FROM relay.subscriptions WHERE enabled AND removed_at IS NULL)
FROM relay.stats WHERE id = 1;

-- name: schema_version
SELECT max(version) FROM relay.migrations;

-- name: deregister
-- A relay that stops cleanly is no longer "seen" (a crashed one ages out after a minute).
DELETE FROM relay.relays WHERE relay_id = %(relay_id)s;

-- name: tables_needing_vacuum
-- relay's queue tables whose dead rows outgrew the threshold. Every delivery row is rewritten
-- two or three times, so without vacuum the claim's index walk wades through dead entries.
-- autovacuum normally keeps up (the tables carry aggressive settings); this is the fallback
-- for servers where it is off or lagging.
SELECT relname
FROM pg_stat_user_tables
WHERE schemaname = 'relay'
  AND relname IN ('deliveries', 'outbox', 'delivery_attempts')
  AND n_dead_tup > greatest(%(min_dead)s, 0.2 * n_live_tup)
  AND coalesce(greatest(last_vacuum, last_autovacuum), '-infinity')
      < now() - make_interval(secs => %(min_interval)s);
