-- relay schema, version 2: the dispatch statement as a function that pins how it is planned.
--
-- The dispatcher runs this statement hundreds of times a second under load. Planned anew on
-- every run (what Postgres does for a statement with a LIMIT parameter: the one-for-all
-- "generic" plan looks costlier, so it keeps making custom plans) it cost ~0.25-0.4 ms of
-- planning per run: a quarter of the dispatch statement's time in a 20,000-event drain.
-- Inside a function it is planned once per connection (force_generic_plan), and the SET
-- clauses keep that one plan safe whatever the table sizes were when it was made: no
-- sequential scan of the outbox (a plan made while the outbox was nearly empty would
-- otherwise keep scanning it whole as it grows), and no JIT (the disabled seq scan's huge
-- cost would make Postgres JIT compile the statement on every run: 300 ms). Every join is by
-- key, so the generic plan is the right one for 1 row and for 500 (checked by
-- tests/observability/test_query_plans.py).
--
-- Claim undispatched outbox rows (SKIP LOCKED: relays share the work), fan each out to every
-- subscription that matches now, and mark them dispatched, in one transaction. No id
-- high-water mark: a row that commits late is simply still undispatched when it shows up.
-- The first p_lease_limit new deliveries are leased to the calling relay at once and returned
-- as jobs (its free slots): no separate claim round trip on the latency path. The rest are
-- due now for any relay, woken by NOTIFY relay_deliveries.
-- Always returns at least one row: the counts, with NULL job columns when no job is leased.
CREATE FUNCTION relay.dispatch_outbox(
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
    matched AS MATERIALIZED (
        SELECT c.id AS outbox_id, s.id AS subscription_id, c.event_type, c.tenant_id,
               s.timeout_ms, row_number() OVER (ORDER BY c.id, s.id) AS n
        FROM claimed c
        JOIN relay.subscriptions s
          ON s.enabled
         AND s.removed_at IS NULL
         -- Isolation: a tenant's subscription sees only that tenant's events (never
         -- untenanted ones: NULL = x is not true); an untenanted subscription sees every
         -- tenant's events.
         AND (s.tenant_id IS NULL OR s.tenant_id = c.tenant_id)
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
        JOIN relay.subscriptions s ON s.id = f.subscription_id
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
