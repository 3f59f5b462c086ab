-- relay schema, version 7: retention (pruning finished history) and history reads that stay
-- fast however much history is kept.
--
-- Pruning (relay/sql/queries/retention.sql) deletes, in small batches, deliveries that ended
-- longer ago than the retention, with their attempts, then outbox rows that were dispatched
-- and have no delivery left. A delivered row is found by when it was delivered: this index
-- (the dead ones already have deliveries_dead on dead_at). Both are partial, so a batch reads
-- only finished rows, oldest first, and never looks at pending work.
CREATE INDEX deliveries_delivered ON relay.deliveries (delivered_at) WHERE status = 'delivered';

-- `relay delivery list --status S` and `--event-type T`, newest first: without these the list
-- walked the primary key backwards, filtering, through all of history for a rare status or
-- type (seconds at 10M rows). The subscription filter has deliveries_subscription already.
CREATE INDEX deliveries_status_id ON relay.deliveries (status, id);
CREATE INDEX deliveries_event_type_id ON relay.deliveries (event_type, id);

-- The outbox is pruned by walking its primary key from the oldest row (ids follow creation
-- time closely: created_at is clock_timestamp() at insert), so it needs no new index: one
-- more index on relay.outbox would cost every dispatch an index insert.

-- The prune batches, as functions that pin how they are planned (like the claim and ack in
-- 0003): each joins a few thousand chosen ids to relay's big tables, and planned from
-- statistics the planner preferred a hash join over a sequential scan of all of
-- delivery_attempts or deliveries (tests/observability/test_history_plans.py). Here every
-- join is a key lookup, whatever the statistics say.
-- Up to p_limit delivered and p_limit dead deliveries that ended before the cutoff, oldest
-- first (deliveries_delivered, deliveries_dead), with their attempts. The attempts go in the
-- same statement: the foreign key is checked at its end, when both are gone.
CREATE FUNCTION relay.prune_deliveries(p_older_than float8, p_limit integer)
RETURNS TABLE (ours boolean, deliveries bigint, delivery_attempts bigint)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_material = off
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH turn AS (
        SELECT pg_try_advisory_xact_lock(482956635749) AS ours  -- 'prune'
    ),
    delivered AS MATERIALIZED (
        SELECT d.id FROM relay.deliveries d
        WHERE (SELECT ours FROM turn)
          AND d.status = 'delivered'
          AND d.delivered_at < now() - make_interval(secs => p_older_than)
        ORDER BY d.delivered_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ),
    dead AS MATERIALIZED (
        SELECT d.id FROM relay.deliveries d
        WHERE (SELECT ours FROM turn)
          AND d.status = 'dead'
          AND d.dead_at < now() - make_interval(secs => p_older_than)
        ORDER BY d.dead_at
        LIMIT p_limit
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
END
$$;

-- The next p_limit outbox rows after id p_after (the primary key, oldest first): delete
-- those created before the cutoff, dispatched, with no delivery left. An undispatched
-- row is pending work; a row with any delivery (pending, or finished within the retention) is
-- still needed. Returns the last id looked at, and whether the walk reached rows too young to
-- prune (then the caller starts again from the oldest row next time).
CREATE FUNCTION relay.prune_outbox(p_older_than float8, p_limit integer, p_after bigint)
RETURNS TABLE (ours boolean, outbox bigint, last_id bigint, scanned bigint,
               reached_young boolean)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_material = off
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH turn AS (
        SELECT pg_try_advisory_xact_lock(482956635749) AS ours  -- 'prune'
    ),
    scanned AS MATERIALIZED (
        SELECT o.id, o.created_at, o.dispatched_at
        FROM relay.outbox o
        WHERE (SELECT ours FROM turn) AND o.id > p_after
        ORDER BY o.id
        LIMIT p_limit
    ),
    victims AS MATERIALIZED (
        SELECT o.id
        FROM relay.outbox o
        WHERE o.id IN (
            SELECT s.id FROM scanned s
            WHERE s.dispatched_at IS NOT NULL
              AND s.created_at < now() - make_interval(secs => p_older_than)
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
           coalesce((SELECT bool_or(created_at >= now() - make_interval(secs => p_older_than))
                     FROM scanned), false) AS reached_young;
END
$$;
