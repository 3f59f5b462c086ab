-- relay schema, version 11: lean history -- fewer index writes and fewer bytes per delivery
-- (issue 17 item 5; issue 18 "the happy path may write less"). Figures: docs/performance.md,
-- "Lean history".
--
-- Rewrites an index of relay.delivery_attempts (its new primary key is built from the rows):
-- on a large history, run `relay migrate` at a quiet time.

-- 1. An attempt is (delivery_id, attempt): that is how every read finds it (`delivery show`,
--    the API, the portal, the pruner). The identity column `id` was read by nothing and cost
--    every attempt a sequence call and a second unique index.
ALTER TABLE relay.delivery_attempts
    DROP CONSTRAINT delivery_attempts_pkey,
    DROP CONSTRAINT delivery_attempts_delivery_id_attempt_key,
    DROP COLUMN id,
    ADD CONSTRAINT delivery_attempts_pkey PRIMARY KEY (delivery_id, attempt);

-- 2. `relay delivery list --status S`, newest first. deliveries_status_id (status, id) held
--    every delivery and was written twice per delivery: at the fan-out and again at the ack
--    (the ack changes status, so its update is never HOT and every index of the row gets a
--    new entry). The two rare statuses get a partial index each instead: a pending row enters
--    one at the fan-out and leaves it at the next VACUUM after its ack (the backlog's size);
--    a dead row enters the other when it ends dead. `--status delivered` (nearly every row)
--    walks the primary key backwards: the first page is a page's read.
DROP INDEX relay.deliveries_status_id;
CREATE INDEX deliveries_pending_id ON relay.deliveries (id) WHERE status = 'pending';
CREATE INDEX deliveries_dead_id ON relay.deliveries (id) WHERE status = 'dead';

-- 3. Two foreign keys go: each cost every delivery a lookup (and a row lock) of the row it
--    points at, and relay writes the rows in an order that keeps them consistent anyway.
--    * delivery_attempts -> deliveries: an attempt is written by the ack, in the statement
--      that updates its delivery (which therefore exists), and deleted with its delivery by
--      the pruner, in one statement. A delivery deleted by hand leaves its attempts behind
--      (nothing reads them; delete them too: DELETE FROM relay.delivery_attempts WHERE
--      delivery_id = ...).
--    * deliveries -> outbox: the dispatch writes the deliveries of outbox rows it holds, and
--      the pruner deletes an outbox row only once no delivery of it is left. An outbox row
--      deleted by hand (the application's own cleanup) no longer fails on this key: a pending
--      delivery of it ends dead at its next claim ("its event ... was deleted", below) instead
--      of being sent, and `relay delivery show` says the event is gone.
--    deliveries -> subscriptions stays: subscriptions are only ever removed softly, so it never
--    stands in relay's way, and a hand DELETE of a subscription with deliveries would leave
--    rows no claim could take.
ALTER TABLE relay.delivery_attempts DROP CONSTRAINT delivery_attempts_delivery_id_fkey;
ALTER TABLE relay.deliveries DROP CONSTRAINT deliveries_outbox_id_fkey;


-- The claim (0006), which now also ends dead a delivery whose event is gone: with no foreign
-- key to the outbox (above), an outbox row can be deleted by hand while a delivery of it is
-- pending. Such a row would otherwise come back at every claim, due and never leased (the
-- lease reads the event), taking a place in each batch. One primary-key probe of the outbox
-- per claimed row; the dispatch, which leases most new deliveries, holds its outbox rows and
-- needs none.
-- Also new: the due ids are kept in an array, and the rows the claim ended (whose successors
-- it promotes) are looked up by primary key. Found by `status = 'dead' AND dead_at = now()`
-- as in 0006, the cached generic plan could take deliveries_dead_id (2. above, same predicate)
-- and walk every dead row, reading each from the table to check dead_at (seen in the bench's
-- EXPLAIN of the claim; tests/observability/test_query_plans.py::
-- test_claim_looks_up_the_rows_it_ended_by_key).
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

