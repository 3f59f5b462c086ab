-- relay schema, version 12: the claim looks up the rows it ended by their keys.
--
-- After leasing, relay.claim_deliveries() looks up the deliveries it has just ended dead
-- (subscription removed, event deleted, tenant changed) to promote what they held back. It
-- found them by `status = 'dead' AND dead_at = now()`, which deliveries_dead (dead_at) serves
-- with an index condition. Migration 0011 added deliveries_dead_id (id) under the same
-- predicate, and the claim's plan (generic, cached for the connection's life) took that one
-- where the planner believed the dead rows few: a walk of every dead row, reading each from
-- the table to check dead_at (seen in the bench's EXPLAIN of the claim; at 200,000 dead rows
-- that is every claim reading 200,000 rows). The due ids are now kept in an array and the
-- lookup reads them by primary key (at most the claim's limit), whatever the statistics
-- (tests/observability/test_query_plans.py::test_claim_looks_up_the_rows_it_ended_by_key).
-- Otherwise the function is 0011's.

CREATE OR REPLACE FUNCTION relay.claim_deliveries(
    p_limit integer, p_saturated bigint[], p_owner text, p_token uuid, p_lease_seconds float8)
RETURNS TABLE (
    id bigint, attempts integer, failures integer,
    outbox_id bigint, event_id uuid, event_type text, payload jsonb, version text,
    tenant_id text, created_at timestamptz,
    subscription_id bigint, url text, method text, headers jsonb, event_names jsonb,
    body_map text, secret text, previous_secret text,
    max_retries integer, backoff_ms integer, timeout_ms integer)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_material = off
SET enable_indexonlyscan = off  -- see relay.claim_due
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    due_ids bigint[];
    ended_subs bigint[];
    ended_aggs text[];
    removed_subs bigint[];
BEGIN
    -- The due rows first, kept: the lookup of the rows ended below reads them by key.
    SELECT array_agg(due_id) INTO due_ids FROM relay.claim_due(p_limit, p_saturated) AS due_id;
    IF due_ids IS NULL THEN
        RETURN;
    END IF;

    RETURN QUERY
    WITH due AS MATERIALIZED (
        SELECT unnest(due_ids) AS due_id
    ),
    checked AS MATERIALIZED (
        SELECT d.id AS delivery_id,
               CASE WHEN s.removed_at IS NOT NULL THEN 'removed'
                    WHEN NOT EXISTS (SELECT 1 FROM relay.outbox o WHERE o.id = d.outbox_id)
                        THEN 'gone'
                    WHEN NOT s.enabled THEN 'paused'
                    WHEN s.tenant_id IS NOT NULL AND d.tenant_id IS DISTINCT FROM s.tenant_id
                        THEN 'foreign'
                    ELSE 'ok' END AS verdict
        FROM due
        JOIN relay.deliveries d ON d.id = due.due_id
        JOIN relay.subscriptions s ON s.id = d.subscription_id
    ),
    parked AS (
        UPDATE relay.deliveries d
        SET next_attempt_at = 'infinity', lease_owner = NULL, lease_token = NULL,
            updated_at = now()
        FROM checked c
        WHERE d.id = c.delivery_id AND c.verdict = 'paused'
        RETURNING d.id
    ),
    ended AS (
        UPDATE relay.deliveries d
        SET status = 'dead', dead_at = now(), lease_owner = NULL, lease_token = NULL,
            updated_at = now(),
            last_error = CASE c.verdict
                WHEN 'removed' THEN 'subscription removed'
                WHEN 'gone' THEN 'its event (outbox row ' || d.outbox_id
                                 || ') was deleted outside relay'
                ELSE 'event of another tenant than the subscription''s (its tenant changed)'
                END
        FROM checked c
        WHERE d.id = c.delivery_id AND c.verdict IN ('removed', 'gone', 'foreign')
        RETURNING d.id
    ),
    leased AS (
        UPDATE relay.deliveries d
        SET lease_owner = p_owner,
            lease_token = p_token,
            -- the lease outlasts the request: never shorter than the timeout + 5 s
            next_attempt_at = now() + make_interval(
                secs => greatest(p_lease_seconds, s.timeout_ms / 1000.0 + 5)),
            updated_at = now()
        FROM checked c, relay.outbox o, relay.subscriptions s
        WHERE d.id = c.delivery_id
          AND c.verdict = 'ok'
          AND o.id = d.outbox_id
          AND s.id = d.subscription_id
        RETURNING d.id, d.attempts, d.failures,
                  o.id AS outbox_id, o.event_id, o.event_type, o.payload, o.version,
                  o.tenant_id, o.created_at,
                  s.id AS subscription_id, s.url, s.method, s.headers, s.event_names,
                  s.body_map::text AS body_map, s.secret,
                  CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END
                      AS previous_secret,
                  s.max_retries, s.backoff_ms, s.timeout_ms
    )
    SELECT * FROM leased;

    -- What the rows ended above held back (see the comment above the function): the due rows
    -- read by key first (MATERIALIZED, so that no `status = 'dead'` reaches the scan: under it
    -- the planner could pick one of the partial indexes of the dead rows and walk it whole),
    -- then those this statement ended.
    WITH ours AS MATERIALIZED (
        SELECT d.id, d.subscription_id, d.aggregate_id, d.status, d.dead_at
        FROM relay.deliveries d
        WHERE d.id = ANY (due_ids)
    )
    SELECT array_agg(d.subscription_id)
               FILTER (WHERE s.removed_at IS NULL AND s.enabled AND s.ordered
                             AND d.aggregate_id IS NOT NULL),
           array_agg(d.aggregate_id)
               FILTER (WHERE s.removed_at IS NULL AND s.enabled AND s.ordered
                             AND d.aggregate_id IS NOT NULL),
           array_agg(DISTINCT d.subscription_id) FILTER (WHERE s.removed_at IS NOT NULL)
    INTO ended_subs, ended_aggs, removed_subs
    FROM ours d
    JOIN relay.subscriptions s ON s.id = d.subscription_id
    WHERE d.status = 'dead' AND d.dead_at = now();

    IF removed_subs IS NOT NULL THEN
        UPDATE relay.deliveries d
        SET status = 'dead', dead_at = now(), lease_owner = NULL, lease_token = NULL,
            updated_at = now(), last_error = 'subscription removed'
        FROM relay.subscriptions s
        WHERE s.id = ANY (removed_subs)
          AND s.removed_at IS NOT NULL
          AND d.subscription_id = s.id
          AND d.status NOT IN ('delivered', 'dead')  -- pending (see 0005's index)
          AND d.next_attempt_at > '-infinity';  -- (in flight ones too, as `remove` does)
    END IF;

    IF ended_subs IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(7274, k)
        FROM (SELECT DISTINCT relay.ordered_lock_key(agg) AS k
              FROM unnest(ended_aggs) AS agg ORDER BY 1) AS keys;
        PERFORM relay.promote_ordered_heads(ended_subs, ended_aggs);
    END IF;
END
$$;

