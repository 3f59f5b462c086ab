-- Queries of the daemon (relay run). Loaded once by relay.queries; called only from relay/store.py.

-- name: dispatch_outbox
-- Fan out up to %(limit)s outbox rows, leasing up to %(lease_limit)s of their deliveries to
-- this relay: the statement lives in relay.dispatch_outbox() (sql/migrations/0002_*.sql),
-- where its plan is pinned.
SELECT * FROM relay.dispatch_outbox(
    %(limit)s, %(lease_limit)s, %(owner)s, %(token)s, %(lease_seconds)s);

-- name: claim_deliveries
-- Lease due deliveries to this relay. The lease is next_attempt_at itself: pushed to the lease
-- expiry, so a crashed relay's rows fall due again with no sweeper. lease_token changes on every
-- claim, so an ack from a relay that lost its lease matches nothing.
WITH due AS MATERIALIZED (
    SELECT id FROM relay.claim_due(%(limit)s, %(saturated)s::bigint[]) AS id
)
UPDATE relay.deliveries d
SET lease_owner = %(owner)s,
    lease_token = %(token)s,
    -- the lease outlasts the request: never shorter than the subscription's timeout + 5 s
    next_attempt_at = now() + make_interval(
        secs => greatest(%(lease_seconds)s, s.timeout_ms / 1000.0 + 5)),
    updated_at = now()
FROM due, relay.outbox o, relay.subscriptions s
WHERE d.id = due.id
  AND o.id = d.outbox_id
  AND s.id = d.subscription_id
RETURNING d.id, d.attempts, d.failures,
          o.id AS outbox_id, o.event_id, o.event_type, o.payload, o.version, o.tenant_id,
          o.created_at,
          s.id AS subscription_id, s.url, s.method, s.headers, s.event_names,
          s.body_map::text AS body_map, s.secret,
          CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END
              AS previous_secret,
          s.max_retries, s.backoff_ms, s.timeout_ms;

-- name: ack_deliveries
-- Record a batch of attempt outcomes in one statement. Only rows still leased with the given
-- token are updated; the attempt log gets a row exactly for those (a relay that lost its lease
-- records nothing). Returns the delivery ids that were accepted.
WITH r AS (
    SELECT *
    FROM unnest(%(ids)b::bigint[], %(tokens)b::uuid[], %(outcomes)b::text[],
                %(delays)b::float8[], %(codes)b::int[], %(errors)b::text[],
                %(started)b::timestamptz[], %(durations)b::float8[], %(bodies)b::text[])
         AS r(id, token, outcome, delay, code, error, started_at, duration_ms, body)
),
u AS (
    UPDATE relay.deliveries d
    SET attempts = d.attempts + 1,
        failures = CASE WHEN r.outcome = 'delivered' THEN d.failures ELSE d.failures + 1 END,
        status = CASE r.outcome WHEN 'retry' THEN 'pending' ELSE r.outcome END,
        next_attempt_at = CASE WHEN r.outcome = 'retry'
                               THEN now() + make_interval(secs => r.delay)
                               ELSE now() END,
        delivered_at = CASE WHEN r.outcome = 'delivered' THEN now() ELSE d.delivered_at END,
        dead_at = CASE WHEN r.outcome = 'dead' THEN now() ELSE d.dead_at END,
        lease_owner = NULL,
        lease_token = NULL,
        last_status_code = r.code,
        last_error = r.error,
        updated_at = now()
    FROM r
    WHERE d.id = r.id
      AND d.lease_token = r.token
      AND d.status = 'pending'
    RETURNING d.id, d.attempts
)
INSERT INTO relay.delivery_attempts
       (delivery_id, attempt, relay_id, started_at, duration_ms, status_code, error, response_body)
SELECT u.id, u.attempts, %(relay_id)s, r.started_at, r.duration_ms, r.code, r.error, r.body
FROM u JOIN r ON r.id = u.id
RETURNING delivery_id;

-- name: release_deliveries
-- Give leased rows back (shutdown, cancelled work): due now, for any relay.
UPDATE relay.deliveries d
SET lease_owner = NULL, lease_token = NULL, next_attempt_at = now(), updated_at = now()
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS r(id, token)
WHERE d.id = r.id AND d.lease_token = r.token AND d.status = 'pending'
RETURNING d.id;

-- name: seconds_until_due
-- How long until the earliest delivery a claim could take falls due (negative: overdue);
-- NULL if none. Same filters as the claim (enabled, not saturated): otherwise rows the claim
-- skips would look due and the deliverer would spin.
SELECT extract(epoch FROM d.next_attempt_at - now())::float8
FROM relay.deliveries d
JOIN relay.subscriptions s ON s.id = d.subscription_id
WHERE d.status = 'pending'
  AND s.enabled
  AND d.subscription_id <> ALL (%(saturated)s::bigint[])
ORDER BY d.next_attempt_at
LIMIT 1;

-- name: heartbeat
INSERT INTO relay.relays (relay_id, hostname, pid, version)
VALUES (%(relay_id)s, %(hostname)s, %(pid)s, %(version)s)
ON CONFLICT (relay_id) DO UPDATE SET last_seen = now();

-- name: refresh_stats
-- Recompute the shared gauges if nobody did within the interval. Every count reads a partial
-- index whose size is the backlog, not the table. "Oldest pending age" is the age of the
-- oldest work that is due and not done: undispatched outbox rows by creation time, due
-- deliveries by when they fell due (a retry waiting for its scheduled time is not late).
UPDATE relay.stats
SET outbox_backlog = (SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL),
    deliveries_pending = (SELECT count(*) FROM relay.deliveries WHERE status = 'pending'),
    deliveries_dead = (SELECT count(*) FROM relay.deliveries WHERE status = 'dead'),
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
