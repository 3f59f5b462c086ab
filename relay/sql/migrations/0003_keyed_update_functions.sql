-- relay schema, version 3: the claim, ack and release statements as functions that pin how
-- they are planned, like the dispatch statement (0002).
--
-- Each updates relay.deliveries rows by id. Planned from statistics taken while relay's tables
-- were empty or small (a VACUUM ANALYZE right after install; autovacuum analyzing a young
-- table; with autovacuum off, nothing ever refreshes them), Postgres chose to read the whole
-- deliveries_due index with a bitmap scan (or the whole table) and hash-join the ids to it.
-- That read also covers every dead index entry left since the last vacuum, so it grows with
-- the traffic: in a 20,000-event drain the ack cost 495 us of Postgres CPU per delivery
-- instead of 25. Here every join is a nested loop over the given ids (or the claimed ones)
-- looking each row up by its key, planned once per connection (force_generic_plan), whatever
-- the statistics say (tests/observability/test_query_plans.py checks both situations): hash,
-- merge, bitmap and sequential scans are off, and so is materializing a whole index walk
-- to join against. A still-pending row is tested as "status NOT IN ('delivered', 'dead')"
-- (the same thing, by the table's CHECK): written as "status = 'pending'" it would let the
-- planner walk the partial index deliveries_due, dead entries included, instead.

-- Lease due deliveries to the calling relay. The lease is next_attempt_at itself: pushed to
-- the lease expiry, so a crashed relay's rows fall due again with no sweeper. lease_token
-- changes on every claim, so an ack from a relay that lost its lease matches nothing. Rows are
-- chosen by relay.claim_due() (in due order, skipping saturated subscriptions).
CREATE FUNCTION relay.claim_deliveries(
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
    leased AS (
        UPDATE relay.deliveries d
        SET lease_owner = p_owner,
            lease_token = p_token,
            -- the lease outlasts the request: never shorter than the timeout + 5 s
            next_attempt_at = now() + make_interval(
                secs => greatest(p_lease_seconds, s.timeout_ms / 1000.0 + 5)),
            updated_at = now()
        FROM due, relay.outbox o, relay.subscriptions s
        WHERE d.id = due.due_id
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

-- Record a batch of attempt outcomes. Only rows still leased with the given token are updated;
-- the attempt log gets a row exactly for those (a relay that lost its lease records nothing).
-- Returns the delivery ids that were accepted.
CREATE FUNCTION relay.ack_deliveries(
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
            next_attempt_at = CASE WHEN r.outcome = 'retry'
                                   THEN now() + make_interval(secs => r.delay)
                                   ELSE now() END,
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
             AS r(id, token, outcome, delay, code, error, started_at, duration_ms, body)
        WHERE d.id = r.id
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

-- Give leased rows back (shutdown, cancelled or lapsing work): due now, for any relay.
-- Returns the ids that were still leased with the given tokens.
CREATE FUNCTION relay.release_deliveries(p_ids bigint[], p_tokens uuid[])
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
        SET lease_owner = NULL, lease_token = NULL, next_attempt_at = now(),
            updated_at = now()
        FROM unnest(p_ids, p_tokens) AS r(id, token)
        WHERE d.id = r.id AND d.lease_token = r.token
          AND d.status NOT IN ('delivered', 'dead')  -- pending; see the note at the top
        RETURNING d.id
    )
    SELECT released.id FROM released;
END
$$;
