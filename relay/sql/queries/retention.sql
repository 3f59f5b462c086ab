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
-- One batch of relay.prune_deliveries() (sql/migrations/0007_retention.sql): up to %(limit)s
-- delivered and %(limit)s dead deliveries that ended over %(older_than)s seconds ago, with
-- their attempts.
SELECT * FROM relay.prune_deliveries(%(older_than)s, %(limit)s);

-- name: prune_outbox
-- One batch of relay.prune_outbox() (sql/migrations/0007_retention.sql): the next %(limit)s
-- outbox rows after id %(after)s, deleting those older than %(older_than)s seconds that were
-- dispatched and have no delivery left.
SELECT * FROM relay.prune_outbox(%(older_than)s, %(limit)s, %(after)s);

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
