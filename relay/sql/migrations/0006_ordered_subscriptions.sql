-- relay schema, version 6: ordered subscriptions.
--
-- For a subscription with `ordered`, deliveries that share an aggregate_id go one at a time in
-- outbox id order: a delivery is not attempted while an earlier one (lower outbox id) of the
-- same aggregate to the same subscription is still pending. The rule lives here, in the
-- statements every relay runs, not in one relay's memory:
--
-- * The guard. The claim (relay.claim_due) never takes a delivery of an ordered subscription
--   while an earlier delivery of its aggregate is pending. Every other mechanism below is about
--   speed and liveness, except one: an earlier outbox row of the aggregate that is not
--   dispatched yet (another relay's dispatch holds it this instant) is seen by the dispatch
--   and the promotion, which park (or leave parked) the later delivery behind it.
-- * Parking. A delivery that must wait is stored "parked": pending, unleased, due at
--   'infinity' (as a disabled subscription's are), so the claim's walk of deliveries_due never
--   meets it and its cost does not grow with an aggregate's backlog.
-- * Promotion. Whoever ends a delivery of an ordered subscription (the ack: delivered or
--   dead) makes the next pending delivery of that aggregate due now, if nothing earlier is
--   still pending, and wakes the relays (NOTIFY relay_deliveries).
-- * Locks. Parking (at dispatch) and promotion (at the ack) decide from what they see, so two
--   relays could each miss the other's uncommitted row: a dispatch parks a delivery behind a
--   head whose ack, committing at the same moment, did not see it -- parked for ever. Both
--   therefore take a transaction advisory lock per aggregate (class 7274, hashtext(aggregate)
--   folded to 1024 buckets: a bounded number of locks per transaction) in ascending key
--   order, and decide in the next statement, whose snapshot is taken after the lock: one of
--   the two always sees the other's committed work.
-- * relay.unpark_ordered_heads() (run by every relay's housekeeping) unparks a parked head
--   nobody promoted: after an operator's change (enable, unordered, a filter changed under a
--   parked delivery) or anything these rules did not foresee. It only ever unparks; the guard
--   still decides.
--
-- The order is outbox id order among the rows visible when they are dispatched: ids are not
-- commit order, so an app that emits two events of one aggregate in concurrent transactions
-- must serialise them itself (lock the aggregate's row). See README "Ordered subscriptions".

ALTER TABLE relay.subscriptions ADD COLUMN ordered boolean NOT NULL DEFAULT false;

-- The event's aggregate, copied at fan-out for every subscription (ordered or not), so that
-- switching a subscription to ordered orders the deliveries it already has pending.
ALTER TABLE relay.deliveries ADD COLUMN aggregate_id text;

UPDATE relay.deliveries d
SET aggregate_id = o.aggregate_id
FROM relay.outbox o
WHERE o.id = d.outbox_id
  AND d.status IN ('pending', 'dead')  -- replayable: a finished delivered row is history
  AND o.aggregate_id IS NOT NULL;

-- "Is an earlier delivery of this aggregate pending?" and "which is the aggregate's head?":
-- one index probe each. Holds pending rows with an aggregate only: as small as the backlog.
CREATE INDEX deliveries_aggregate_pending
    ON relay.deliveries (subscription_id, aggregate_id, outbox_id)
    WHERE status = 'pending' AND aggregate_id IS NOT NULL;

-- "Is an earlier outbox row of this aggregate still undispatched?": one probe; holds only
-- undispatched rows with an aggregate.
CREATE INDEX outbox_undispatched_aggregate
    ON relay.outbox (aggregate_id, id)
    WHERE dispatched_at IS NULL AND aggregate_id IS NOT NULL;


-- Whether outbox row (p_aggregate, before p_outbox_id) that p_subscription would receive is
-- still waiting to be dispatched (it will become the aggregate's earlier delivery). Called
-- for ordered deliveries only (dispatch, promotion); one probe of outbox_undispatched_aggregate.
CREATE FUNCTION relay.ordered_undispatched_before(
    p_subscription bigint, p_aggregate text, p_outbox_id bigint)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1
        FROM relay.outbox u, relay.subscriptions s
        WHERE s.id = p_subscription
          AND u.aggregate_id = p_aggregate
          AND u.id < p_outbox_id
          AND u.dispatched_at IS NULL
          AND (s.tenant_id IS NULL OR s.tenant_id = u.tenant_id)
          AND (cardinality(s.events) = 0 OR relay.glob_match(u.event_type, s.events)))
$$;

-- The advisory lock key of an aggregate (see "Locks" above).
CREATE FUNCTION relay.ordered_lock_key(p_aggregate text) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT hashtext(p_aggregate) & 1023
$$;


-- The claim's row selection (0001), with the ordering guard. Unordered rows pay one boolean
-- test; an ordered row with an aggregate one index probe.
CREATE OR REPLACE FUNCTION relay.claim_due(p_limit integer, p_saturated bigint[])
RETURNS SETOF bigint
LANGUAGE sql VOLATILE ROWS 100
SET enable_bitmapscan = off
SET enable_seqscan = off
SET enable_sort = off
-- The guard's probes step over the index entries of an aggregate's finished deliveries (dead
-- until vacuum). A plain index scan marks them dead as it meets them (later probes skip them
-- in the page); an index-only scan does not, and visits the heap for each, every time: seen
-- taking the claim from 1 ms to 24 ms over a 5,000-event drain of one aggregate.
SET enable_indexonlyscan = off
AS $$
    SELECT d.id
    FROM relay.deliveries d
    JOIN relay.subscriptions s ON s.id = d.subscription_id
    WHERE d.status = 'pending'
      AND d.next_attempt_at <= now()
      AND s.enabled
      AND (cardinality(p_saturated) = 0 OR d.subscription_id <> ALL (p_saturated))
      AND (NOT s.ordered OR d.aggregate_id IS NULL OR NOT EXISTS (
            SELECT 1 FROM relay.deliveries e
            WHERE e.subscription_id = d.subscription_id
              AND e.aggregate_id = d.aggregate_id
              AND e.outbox_id < d.outbox_id
              AND e.status = 'pending'))
    ORDER BY d.next_attempt_at
    LIMIT p_limit
    FOR UPDATE OF d SKIP LOCKED
$$;


-- Make the head of each (subscription, aggregate) due if it is parked and nothing earlier
-- holds it back. The caller holds the aggregates' advisory locks (or accepts that a parked
-- head may be left for relay.unpark_ordered_heads). Returns how many were unparked, and
-- wakes the relays if any were.
CREATE FUNCTION relay.promote_ordered_heads(p_subscriptions bigint[], p_aggregates text[])
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_bitmapscan = off
SET enable_indexonlyscan = off  -- see relay.claim_due
SET jit = off
AS $$
DECLARE
    promoted integer;
BEGIN
    WITH pairs AS (
        SELECT DISTINCT p.sub, p.agg
        FROM unnest(p_subscriptions, p_aggregates) AS p(sub, agg)
        JOIN relay.subscriptions s ON s.id = p.sub AND s.enabled AND s.ordered
        WHERE p.agg IS NOT NULL
    ),
    heads AS (
        SELECT h.id, h.next_attempt_at, h.lease_token, pairs.sub, pairs.agg, h.outbox_id
        FROM pairs
        CROSS JOIN LATERAL (
            SELECT e.id, e.next_attempt_at, e.lease_token, e.outbox_id
            FROM relay.deliveries e
            WHERE e.subscription_id = pairs.sub
              AND e.aggregate_id = pairs.agg
              AND e.status = 'pending'
            ORDER BY e.outbox_id
            LIMIT 1) h
    ),
    unparked AS (
        UPDATE relay.deliveries d
        SET next_attempt_at = now(), updated_at = now()
        FROM heads
        WHERE d.id = heads.id
          AND heads.next_attempt_at = 'infinity'
          AND heads.lease_token IS NULL
          AND NOT relay.ordered_undispatched_before(heads.sub, heads.agg, heads.outbox_id)
          AND d.status = 'pending' AND d.next_attempt_at = 'infinity'
        RETURNING d.id
    )
    SELECT count(*) INTO promoted FROM unparked;
    IF promoted > 0 THEN
        PERFORM pg_notify('relay_deliveries', '');
    END IF;
    RETURN promoted;
END
$$;


-- The safety net: unpark every parked head of an enabled ordered subscription that nothing
-- holds back, and every parked delivery of an enabled subscription that is not ordered (any
-- more). Walks deliveries_aggregate_pending (the backlog of aggregated deliveries) once.
CREATE FUNCTION relay.unpark_ordered_heads() RETURNS integer
LANGUAGE plpgsql VOLATILE
SET jit = off
AS $$
DECLARE
    heads integer;
    loose integer;
BEGIN
    WITH first AS (
        SELECT DISTINCT ON (d.subscription_id, d.aggregate_id)
               d.id, d.subscription_id, d.aggregate_id, d.outbox_id, d.next_attempt_at,
               d.lease_token
        FROM relay.deliveries d
        WHERE d.status = 'pending' AND d.aggregate_id IS NOT NULL
        ORDER BY d.subscription_id, d.aggregate_id, d.outbox_id
    )
    SELECT relay.promote_ordered_heads(array_agg(f.subscription_id), array_agg(f.aggregate_id))
    INTO heads
    FROM first f
    WHERE f.next_attempt_at = 'infinity' AND f.lease_token IS NULL;

    UPDATE relay.deliveries d
    SET next_attempt_at = now(), updated_at = now()
    FROM relay.subscriptions s
    WHERE s.id = d.subscription_id
      AND s.enabled AND NOT s.ordered
      AND d.status = 'pending' AND d.next_attempt_at = 'infinity' AND d.lease_token IS NULL;
    GET DIAGNOSTICS loose = ROW_COUNT;
    IF loose > 0 THEN
        PERFORM pg_notify('relay_deliveries', '');
    END IF;
    RETURN coalesce(heads, 0) + loose;
END
$$;


-- The acks (0003), plus promotion: when a delivery of an ordered subscription ends, the next
-- one of its aggregate becomes due. The ack statement is 0003's; the promotion is a second
-- step, run only while some enabled subscription is ordered, that looks the batch's finished
-- rows up again by key (their aggregates), locks those aggregates and promotes in a statement
-- that sees what the lock holders committed.
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
DECLARE
    ended_subs bigint[];
    ended_aggs text[];
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
          AND d.status NOT IN ('delivered', 'dead')  -- pending: see the note in 0003
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

    IF NOT EXISTS (SELECT 1 FROM relay.subscriptions s
                   WHERE s.ordered AND s.enabled AND s.removed_at IS NULL) THEN
        RETURN;
    END IF;
    -- (rows another relay ended are looked at too: promoting twice is harmless)
    SELECT array_agg(d.subscription_id), array_agg(d.aggregate_id)
    INTO ended_subs, ended_aggs
    FROM unnest(p_ids, p_outcomes) AS r(id, outcome)
    JOIN relay.deliveries d ON d.id = r.id
    JOIN relay.subscriptions s ON s.id = d.subscription_id
    WHERE r.outcome <> 'retry'
      AND d.aggregate_id IS NOT NULL
      AND d.status <> 'pending'
      AND s.ordered;
    IF ended_subs IS NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(7274, k)
    FROM (SELECT DISTINCT relay.ordered_lock_key(agg) AS k
          FROM unnest(ended_aggs) AS agg ORDER BY 1) AS keys;
    PERFORM relay.promote_ordered_heads(ended_subs, ended_aggs);
END
$$;


-- The dispatch (0002), unchanged while no enabled subscription is ordered (one index probe
-- more per run to know it). With ordered subscriptions: claim and match the rows, lock their
-- ordered aggregates, then fan out in a second statement whose snapshot sees what the lock
-- holders committed, parking each delivery that has an earlier one of its aggregate pending
-- (or still undispatched, e.g. claimed by another relay this instant) and leasing only the
-- rest.
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
SET enable_indexonlyscan = off  -- see relay.claim_due
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    n_claimed bigint;
    m_outbox bigint[];
    m_sub bigint[];
    m_type text[];
    m_tenant text[];
    m_agg text[];
    m_ordered boolean[];
    m_timeout integer[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM relay.subscriptions s
                   WHERE s.ordered AND s.enabled AND s.removed_at IS NULL) THEN
        -- 0002's statement, plus the aggregate copied onto each delivery.
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
            RETURNING o.id, o.event_type, o.tenant_id, o.aggregate_id
        ),
        matched AS MATERIALIZED (
            SELECT c.id AS outbox_id, s.id AS subscription_id, c.event_type, c.tenant_id,
                   c.aggregate_id, s.timeout_ms, row_number() OVER (ORDER BY c.id, s.id) AS n
            FROM claimed c
            JOIN relay.subscriptions s
              ON s.enabled
             AND s.removed_at IS NULL
             AND (s.tenant_id IS NULL OR s.tenant_id = c.tenant_id)
             AND (cardinality(s.events) = 0 OR relay.glob_match(c.event_type, s.events))
        ),
        fanned AS (
            INSERT INTO relay.deliveries AS d
                   (outbox_id, subscription_id, event_type, tenant_id, aggregate_id,
                    lease_owner, lease_token, next_attempt_at)
            SELECT m.outbox_id, m.subscription_id, m.event_type, m.tenant_id, m.aggregate_id,
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
                   o.id AS outbox_id, o.event_id, o.event_type, o.payload, o.version,
                   o.tenant_id, o.created_at,
                   s.id AS subscription_id, s.url, s.method, s.headers, s.event_names,
                   s.body_map::text AS body_map, s.secret,
                   CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END
                       AS previous_secret,
                   s.max_retries, s.backoff_ms, s.timeout_ms
            FROM fanned f
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
        RETURN;
    END IF;

    -- 1. Claim and match (as above), keeping the pairs for the next statements.
    WITH claimed AS MATERIALIZED (
        UPDATE relay.outbox o
        SET dispatched_at = now()
        WHERE o.id = ANY (ARRAY(
            SELECT u.id FROM relay.outbox u
            WHERE u.dispatched_at IS NULL
            ORDER BY u.id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED))
        RETURNING o.id, o.event_type, o.tenant_id, o.aggregate_id
    ),
    matched AS MATERIALIZED (
        SELECT c.id AS outbox_id, s.id AS subscription_id, c.event_type, c.tenant_id,
               c.aggregate_id, s.ordered, s.timeout_ms
        FROM claimed c
        JOIN relay.subscriptions s
          ON s.enabled
         AND s.removed_at IS NULL
         AND (s.tenant_id IS NULL OR s.tenant_id = c.tenant_id)
         AND (cardinality(s.events) = 0 OR relay.glob_match(c.event_type, s.events))
    )
    SELECT (SELECT count(*) FROM claimed),
           array_agg(m.outbox_id ORDER BY m.outbox_id, m.subscription_id),
           array_agg(m.subscription_id ORDER BY m.outbox_id, m.subscription_id),
           array_agg(m.event_type ORDER BY m.outbox_id, m.subscription_id),
           array_agg(m.tenant_id ORDER BY m.outbox_id, m.subscription_id),
           array_agg(m.aggregate_id ORDER BY m.outbox_id, m.subscription_id),
           array_agg(m.ordered ORDER BY m.outbox_id, m.subscription_id),
           array_agg(m.timeout_ms ORDER BY m.outbox_id, m.subscription_id)
    INTO n_claimed, m_outbox, m_sub, m_type, m_tenant, m_agg, m_ordered, m_timeout
    FROM matched m;

    -- 2. Lock the ordered aggregates, in key order (no deadlock between relays).
    PERFORM pg_advisory_xact_lock(7274, k)
    FROM (SELECT DISTINCT relay.ordered_lock_key(p.agg) AS k
          FROM unnest(m_agg, m_ordered) AS p(agg, ordered)
          WHERE p.ordered AND p.agg IS NOT NULL
          ORDER BY 1) AS keys;

    -- 3. Fan out with a fresh snapshot: park what must wait, lease the first of the rest.
    RETURN QUERY
    WITH pairs AS (
        SELECT p.*,
               p.ordered AND p.aggregate_id IS NOT NULL AND (
                   -- an earlier row of this batch for the same subscription and aggregate
                   p.outbox_id > min(p.outbox_id) OVER (
                       PARTITION BY p.subscription_id, p.aggregate_id)
                   OR EXISTS (SELECT 1 FROM relay.deliveries e
                              WHERE e.subscription_id = p.subscription_id
                                AND e.aggregate_id = p.aggregate_id
                                AND e.outbox_id < p.outbox_id
                                AND e.status = 'pending')
                   OR relay.ordered_undispatched_before(
                          p.subscription_id, p.aggregate_id, p.outbox_id)) AS parked
        FROM unnest(m_outbox, m_sub, m_type, m_tenant, m_agg, m_ordered, m_timeout)
             AS p(outbox_id, subscription_id, event_type, tenant_id, aggregate_id, ordered,
                  timeout_ms)
    ),
    numbered AS (
        SELECT pairs.*,
               row_number() OVER (PARTITION BY pairs.parked
                                  ORDER BY pairs.outbox_id, pairs.subscription_id) AS n
        FROM pairs
    ),
    fanned AS (
        INSERT INTO relay.deliveries AS d
               (outbox_id, subscription_id, event_type, tenant_id, aggregate_id,
                lease_owner, lease_token, next_attempt_at)
        SELECT m.outbox_id, m.subscription_id, m.event_type, m.tenant_id, m.aggregate_id,
               CASE WHEN NOT m.parked AND m.n <= p_lease_limit THEN p_owner END,
               CASE WHEN NOT m.parked AND m.n <= p_lease_limit THEN p_token END,
               CASE WHEN m.parked THEN 'infinity'
                    WHEN m.n <= p_lease_limit
                    THEN now() + make_interval(
                             secs => greatest(p_lease_seconds, m.timeout_ms / 1000.0 + 5))
                    ELSE now() END
        FROM numbered m
        ON CONFLICT (outbox_id, subscription_id) DO NOTHING
        RETURNING d.id, d.outbox_id, d.subscription_id, d.lease_token, d.next_attempt_at
    ),
    woken AS (
        SELECT pg_notify('relay_deliveries', '')
        FROM (SELECT 1 FROM fanned
              WHERE fanned.lease_token IS NULL AND fanned.next_attempt_at <> 'infinity'
              LIMIT 1) AS unleased
    ),
    counts AS (
        SELECT n_claimed AS dispatched,
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
