-- relay schema, version 5: no input from outside (an operator action racing the daemon, a
-- subscription at its cap) may stall, strand or duplicate other work (issue 14).
--
-- 1. relay.dispatch_outbox() locks the subscriptions it fans out to FOR SHARE: a `subscription
--    remove`/`disable`/`update --tenant` racing a dispatch either waits for it (and then sees
--    its deliveries) or is seen by it. Before, a removal could leave new deliveries pending
--    forever on a removed subscription, and the leased ones were sent.
-- 2. relay.claim_due() no longer walks the due rows of saturated subscriptions: with some
--    subscriptions at their in-flight cap it takes each other subscription's due rows from
--    its own index (deliveries_subscription_due), O(subscriptions + limit) instead of
--    O(backlog of the saturated ones). Without saturation it is the ordered walk as before,
--    but it no longer filters on the subscription: the claim itself settles rows it cannot
--    send (3).
-- 3. relay.claim_deliveries() settles each due row it cannot send, once: a disabled
--    subscription's row is parked (due at 'infinity', so no claim walks it again), a removed
--    subscription's row ends dead ('subscription removed'), and a row whose event is not of
--    the subscription's tenant (its tenant changed) ends dead with that reason.
-- 4. relay.ack_deliveries() and relay.release_deliveries() park a retry or a released row of
--    a disabled subscription instead of making it due (in flight when it was disabled).

-- The index a per-subscription claim reads (2). Built in the migration's transaction: on a
-- large deliveries table, run `relay migrate` at a quiet time.
-- Its predicate (the same rows as deliveries_due, by the table's CHECK and since no row is due
-- at '-infinity') is written so that only a query that repeats it can use it, so the walks that must read
-- deliveries_due in due order (the unsaturated claim, the next-due time, the gauges) cannot be
-- planned onto it, and the per-subscription walk cannot be planned onto deliveries_due.
CREATE INDEX deliveries_subscription_due ON relay.deliveries (subscription_id, next_attempt_at)
    WHERE status NOT IN ('delivered', 'dead') AND next_attempt_at > '-infinity';

CREATE OR REPLACE FUNCTION relay.dispatch_outbox(
    p_limit integer, p_lease_limit integer, p_owner text, p_token uuid, p_lease_seconds float8)
RETURNS TABLE (
    dispatched bigint, deliveries bigint,
    id bigint, attempts integer, failures integer,
    outbox_id bigint, event_id uuid, event_type text, payload jsonb, version text,
    tenant_id text, created_at timestamptz,
    subscription_id bigint, url text, method text, headers jsonb, event_names jsonb,
    body_map text, secret text, previous_secret text,
    max_retries integer, backoff_ms integer, timeout_ms integer)
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH claimed AS MATERIALIZED (
        UPDATE relay.outbox o
        SET dispatched_at = now()
        WHERE o.id = ANY (ARRAY(
            SELECT u.id FROM relay.outbox u
            WHERE u.dispatched_at IS NULL
            ORDER BY u.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED))
        RETURNING o.id, o.event_type, o.tenant_id
    ),
    -- The matching subscriptions, locked FOR SHARE (only when there are rows to fan out):
    -- an operator's disable, remove or tenant change (a row update) waits for this
    -- transaction, and one committed first is seen here (the lock re-reads the row), so no
    -- delivery is created, or leased and sent, for a subscription already paused or removed.
    subs AS MATERIALIZED (
        SELECT s.id, s.tenant_id, s.events, s.url, s.method, s.headers, s.event_names,
               s.body_map, s.secret, s.previous_secret, s.previous_secret_expires_at,
               s.max_retries, s.backoff_ms, s.timeout_ms
        FROM relay.subscriptions s
        WHERE s.enabled
          AND s.removed_at IS NULL
          AND EXISTS (SELECT 1 FROM claimed)
        FOR SHARE OF s
    ),
    matched AS MATERIALIZED (
        SELECT c.id AS outbox_id, s.id AS subscription_id, c.event_type, c.tenant_id,
               s.timeout_ms, row_number() OVER (ORDER BY c.id, s.id) AS n
        FROM claimed c
        JOIN subs s
          -- Isolation: a tenant's subscription sees only that tenant's events (never
          -- untenanted ones: NULL = x is not true); an untenanted subscription sees every
          -- tenant's events.
          ON (s.tenant_id IS NULL OR s.tenant_id = c.tenant_id)
         -- (an empty list matches everything: tested here first, because glob_match is
         -- not inlined -- its EXISTS sub-select -- and runs as a nested statement per pair)
         AND (cardinality(s.events) = 0 OR relay.glob_match(c.event_type, s.events))
    ),
    fanned AS (
        INSERT INTO relay.deliveries AS d
               (outbox_id, subscription_id, event_type, tenant_id,
                lease_owner, lease_token, next_attempt_at)
        SELECT m.outbox_id, m.subscription_id, m.event_type, m.tenant_id,
               CASE WHEN m.n <= p_lease_limit THEN p_owner END,
               CASE WHEN m.n <= p_lease_limit THEN p_token END,
               CASE WHEN m.n <= p_lease_limit
                    THEN now() + make_interval(
                             secs => greatest(p_lease_seconds, m.timeout_ms / 1000.0 + 5))
                    ELSE now() END
        FROM matched m
        ON CONFLICT (outbox_id, subscription_id) DO NOTHING
        RETURNING d.id, d.outbox_id, d.subscription_id, d.lease_token
    ),
    -- wake other relays' deliverers for the rows not leased here; sent only if this commits
    woken AS (
        SELECT pg_notify('relay_deliveries', '')
        FROM (SELECT 1 FROM fanned WHERE fanned.lease_token IS NULL LIMIT 1) AS unleased
    ),
    counts AS (
        SELECT (SELECT count(*) FROM claimed) AS dispatched,
               (SELECT count(*) FROM fanned) AS deliveries,
               (SELECT count(*) FROM woken) AS woken
    ),
    jobs AS (
        SELECT f.id, 0 AS attempts, 0 AS failures,
               o.id AS outbox_id, o.event_id, o.event_type, o.payload, o.version, o.tenant_id,
               o.created_at,
               s.id AS subscription_id, s.url, s.method, s.headers, s.event_names,
               s.body_map::text AS body_map, s.secret,
               CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END
                   AS previous_secret,
               s.max_retries, s.backoff_ms, s.timeout_ms
        FROM fanned f
        -- the row as this statement's snapshot sees it (before the UPDATE above: only
        -- dispatched_at differs, and it is not returned)
        JOIN relay.outbox o ON o.id = f.outbox_id
        -- the locked (latest) version of the subscription
        JOIN subs s ON s.id = f.subscription_id
        WHERE f.lease_token IS NOT NULL
    )
    SELECT counts.dispatched, counts.deliveries,
           jobs.id, jobs.attempts, jobs.failures, jobs.outbox_id, jobs.event_id,
           jobs.event_type, jobs.payload, jobs.version, jobs.tenant_id, jobs.created_at,
           jobs.subscription_id, jobs.url, jobs.method, jobs.headers, jobs.event_names,
           jobs.body_map, jobs.secret, jobs.previous_secret,
           jobs.max_retries, jobs.backoff_ms, jobs.timeout_ms
    FROM counts LEFT JOIN jobs ON true;
END
$$;

CREATE OR REPLACE FUNCTION relay.claim_due(p_limit integer, p_saturated bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE ROWS 100
SET enable_bitmapscan = off
SET enable_seqscan = off
-- Only the ordered walks of the two indexes are wanted (see 0001); the merge of the second
-- branch's rows needs a sort all the same (a few rows per subscription).
SET enable_sort = off
SET jit = off
AS $$
BEGIN
    IF cardinality(p_saturated) = 0 THEN
        -- Walk deliveries_due in order and stop after p_limit rows.
        RETURN QUERY
        SELECT d.id
        FROM relay.deliveries d
        WHERE d.status = 'pending'
          AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT p_limit
        FOR UPDATE OF d SKIP LOCKED;
    ELSE
        -- Each other subscription's first due rows from its own index, then the earliest
        -- p_limit of them: the saturated subscriptions' rows are never read.
        RETURN QUERY
        SELECT due.id
        FROM relay.subscriptions s
        CROSS JOIN LATERAL (
            SELECT d.id, d.next_attempt_at
            FROM relay.deliveries d
            WHERE d.subscription_id = s.id
              AND d.status NOT IN ('delivered', 'dead')  -- pending (see the index)
              AND d.next_attempt_at > '-infinity'
              AND d.next_attempt_at <= now()
            ORDER BY d.next_attempt_at
            LIMIT p_limit
            FOR UPDATE OF d SKIP LOCKED
        ) AS due
        WHERE s.id <> ALL (p_saturated)
        ORDER BY due.next_attempt_at
        LIMIT p_limit;
    END IF;
END
$$;

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
SET jit = off
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH due AS MATERIALIZED (
        SELECT due_id FROM relay.claim_due(p_limit, p_saturated) AS due_id
    ),
    checked AS MATERIALIZED (
        SELECT d.id AS delivery_id,
               CASE WHEN s.removed_at IS NOT NULL THEN 'removed'
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
                ELSE 'event of another tenant than the subscription''s (its tenant changed)'
                END
        FROM checked c
        WHERE d.id = c.delivery_id AND c.verdict IN ('removed', 'foreign')
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
END
$$;

-- (4) Park what comes back of a disabled subscription.
CREATE OR REPLACE FUNCTION relay.ack_deliveries(
    p_relay_id text, p_ids bigint[], p_tokens uuid[], p_outcomes text[], p_delays float8[],
    p_codes integer[], p_errors text[], p_started timestamptz[], p_durations float8[],
    p_bodies text[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_material = off
SET jit = off
AS $$
BEGIN
    RETURN QUERY
    WITH acked AS (
        UPDATE relay.deliveries d
        SET attempts = d.attempts + 1,
            failures = CASE WHEN r.outcome = 'delivered' THEN d.failures
                            ELSE d.failures + 1 END,
            status = CASE r.outcome WHEN 'retry' THEN 'pending' ELSE r.outcome END,
            -- a retry of a subscription disabled meanwhile is parked, not due
            next_attempt_at = CASE WHEN r.outcome <> 'retry' THEN now()
                                   WHEN NOT s.enabled THEN 'infinity'
                                   ELSE now() + make_interval(secs => r.delay) END,
            delivered_at = CASE WHEN r.outcome = 'delivered' THEN now()
                                ELSE d.delivered_at END,
            dead_at = CASE WHEN r.outcome = 'dead' THEN now() ELSE d.dead_at END,
            lease_owner = NULL,
            lease_token = NULL,
            last_status_code = r.code,
            last_error = r.error,
            updated_at = now()
        FROM unnest(p_ids, p_tokens, p_outcomes, p_delays, p_codes, p_errors, p_started,
                    p_durations, p_bodies)
             AS r(id, token, outcome, delay, code, error, started_at, duration_ms, body),
             relay.subscriptions s
        WHERE d.id = r.id
          AND s.id = d.subscription_id
          AND d.lease_token = r.token
          AND d.status NOT IN ('delivered', 'dead')  -- pending; see the note at the top
        -- what the attempt row needs, so it is written without joining the ids again
        RETURNING d.id, d.attempts, r.started_at, r.duration_ms, r.code, r.error, r.body
    ),
    logged AS (
        INSERT INTO relay.delivery_attempts
               (delivery_id, attempt, relay_id, started_at, duration_ms, status_code, error,
                response_body)
        SELECT a.id, a.attempts, p_relay_id, a.started_at, a.duration_ms, a.code, a.error,
               a.body
        FROM acked a
        RETURNING delivery_id
    )
    SELECT delivery_id FROM logged;
END
$$;

CREATE OR REPLACE FUNCTION relay.release_deliveries(p_ids bigint[], p_tokens uuid[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET enable_material = off
SET jit = off
AS $$
BEGIN
    RETURN QUERY
    WITH released AS (
        UPDATE relay.deliveries d
        SET lease_owner = NULL, lease_token = NULL,
            -- parked if its subscription was disabled while this relay held it
            next_attempt_at = CASE WHEN s.enabled THEN now() ELSE 'infinity' END,
            updated_at = now()
        FROM unnest(p_ids, p_tokens) AS r(id, token), relay.subscriptions s
        WHERE d.id = r.id AND d.lease_token = r.token
          AND s.id = d.subscription_id
          AND d.status NOT IN ('delivered', 'dead')  -- pending; see the note at the top
        RETURNING d.id
    )
    SELECT released.id FROM released;
END
$$;
