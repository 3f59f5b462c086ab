-- Retention: pruning finished history (relay/daemon/pruner.py, relay/admin/retention.py).
--
-- Every statement is one short transaction deleting at most a few thousand rows, so pruning
-- never holds a lock for long and no claim, dispatch or ack waits on it:
-- - only finished rows are touched (status 'delivered'/'dead'; outbox rows dispatched with
--   no delivery left): the claim, the dispatch and the ack work on pending rows only;
-- - rows are locked FOR UPDATE SKIP LOCKED: a delivery an operator is replaying right now is
--   skipped (the replay's row lock) and re-checked under the lock, so a replay that commits
--   first makes it pending, and kept; a replay that comes second finds it gone ("not found");
-- - pg_try_advisory_xact_lock(482956635749) ("prune" in ASCII): one relay (or `relay prune`)
--   prunes at a time; the others skip that batch.
-- %(older_than)s is the retention in seconds.

-- name: prune_deliveries
-- Up to %(limit)s delivered and %(limit)s dead deliveries that ended before the cutoff, oldest
-- first (deliveries_delivered, deliveries_dead), with their attempts. The attempts go in the
-- same statement: the foreign key is checked at its end, when both are gone.
WITH turn AS (
    SELECT pg_try_advisory_xact_lock(482956635749) AS ours  -- 'prune'
),
delivered AS MATERIALIZED (
    SELECT d.id FROM relay.deliveries d
    WHERE (SELECT ours FROM turn)
      AND d.status = 'delivered'
      AND d.delivered_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY d.delivered_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
dead AS MATERIALIZED (
    SELECT d.id FROM relay.deliveries d
    WHERE (SELECT ours FROM turn)
      AND d.status = 'dead'
      AND d.dead_at < now() - make_interval(secs => %(older_than)s)
    ORDER BY d.dead_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
victims AS MATERIALIZED (
    SELECT id FROM delivered UNION ALL SELECT id FROM dead
),
gone_attempts AS (
    DELETE FROM relay.delivery_attempts a
    USING victims v
    WHERE a.delivery_id = v.id
    RETURNING 1
),
gone AS (
    DELETE FROM relay.deliveries d
    USING victims v
    WHERE d.id = v.id
    RETURNING 1
)
SELECT (SELECT ours FROM turn) AS ours,
       (SELECT count(*) FROM gone) AS deliveries,
       (SELECT count(*) FROM gone_attempts) AS delivery_attempts;

-- name: prune_outbox
-- The next %(limit)s outbox rows after id %(after)s (the primary key, oldest first): delete
-- those created before the cutoff, dispatched, with no delivery left. An undispatched
-- row is pending work; a row with any delivery (pending, or finished within the retention) is
-- still needed. Returns the last id looked at, and whether the walk reached rows too young to
-- prune (then the caller starts again from the oldest row next time).
WITH turn AS (
    SELECT pg_try_advisory_xact_lock(482956635749) AS ours  -- 'prune'
),
scanned AS MATERIALIZED (
    SELECT o.id, o.created_at, o.dispatched_at
    FROM relay.outbox o
    WHERE (SELECT ours FROM turn) AND o.id > %(after)s
    ORDER BY o.id
    LIMIT %(limit)s
),
victims AS MATERIALIZED (
    SELECT o.id
    FROM relay.outbox o
    WHERE o.id IN (
        SELECT s.id FROM scanned s
        WHERE s.dispatched_at IS NOT NULL
          AND s.created_at < now() - make_interval(secs => %(older_than)s)
          AND NOT EXISTS (SELECT 1 FROM relay.deliveries d WHERE d.outbox_id = s.id))
    FOR UPDATE OF o SKIP LOCKED
),
gone AS (
    DELETE FROM relay.outbox o
    USING victims v
    WHERE o.id = v.id
    RETURNING 1
)
SELECT (SELECT ours FROM turn) AS ours,
       (SELECT count(*) FROM gone) AS outbox,
       (SELECT max(id) FROM scanned) AS last_id,
       (SELECT count(*) FROM scanned) AS scanned,
       coalesce((SELECT bool_or(created_at >= now() - make_interval(secs => %(older_than)s))
                 FROM scanned), false) AS reached_young;

-- name: prune_preview
-- What a prune with this cutoff would delete now (`relay prune --dry-run`): the same rules as
-- prune_deliveries and prune_outbox, counted, nothing locked or changed.
WITH cutoff AS MATERIALIZED (
    SELECT now() - make_interval(secs => %(older_than)s) AS t
),
ended AS MATERIALIZED (
    SELECT d.id FROM relay.deliveries d
    WHERE d.status = 'delivered' AND d.delivered_at < (SELECT t FROM cutoff)
    UNION ALL
    SELECT d.id FROM relay.deliveries d
    WHERE d.status = 'dead' AND d.dead_at < (SELECT t FROM cutoff)
)
SELECT
    (SELECT count(*) FROM ended) AS deliveries,
    (SELECT count(*) FROM relay.delivery_attempts a
      WHERE a.delivery_id IN (SELECT id FROM ended)) AS delivery_attempts,
    (SELECT count(*) FROM relay.outbox o
      WHERE o.dispatched_at IS NOT NULL
        AND o.created_at < (SELECT t FROM cutoff)
        AND NOT EXISTS (
            SELECT 1 FROM relay.deliveries d
            WHERE d.outbox_id = o.id
              AND NOT ((d.status = 'delivered' AND d.delivered_at < (SELECT t FROM cutoff))
                       OR (d.status = 'dead' AND d.dead_at < (SELECT t FROM cutoff))))
    ) AS outbox;

-- name: history_bytes
-- Table + index + TOAST bytes of each history table (relay_history_bytes): a size from the
-- catalog and the files' lengths, no row is read.
SELECT c.relname, pg_total_relation_size(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'relay' AND c.relname IN ('outbox', 'deliveries', 'delivery_attempts')
ORDER BY c.relname;
