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
--
-- Built on 0005 (issue 14), which also redefines the claim, the acks and the dispatch: every
-- function replaced here keeps 0005's behaviour and adds the ordering to it.
-- * relay.dispatch_outbox() locks the subscriptions it fans out to FOR SHARE (both paths).
-- * relay.claim_due() keeps both walks (deliveries_due in order; per subscription through
--   deliveries_subscription_due when some are saturated), each with the guard. As in 0005 it
--   does not filter on the subscription's state: relay.claim_deliveries() settles what it
--   cannot send (parks a disabled subscription's row, ends a removed subscription's or another
--   tenant's row dead) and, here, promotes the next delivery of an ordered aggregate whose
--   head it ended dead (the ack's promotion, for rows that never reach an ack).
-- * relay.ack_deliveries() parks a retry of a disabled subscription (0005) and promotes after
--   a delivered or dead one (here). Parked means due at 'infinity' in both designs, for a
--   disabled subscription's rows and for ordered successors alike, so: promotion (and
--   relay.unpark_ordered_heads()) only ever unparks rows of enabled subscriptions, and
--   `subscription enable` (admin_subscription_park, relay/sql/queries/admin.sql) unparks only
--   the heads of an ordered subscription's aggregates; the successors wait for promotion.
-- * relay.release_deliveries() is 0005's, unchanged (a released head is due again at once).

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


-- The claim's row selection (0005: the ordered walk, or per subscription when some are
-- saturated), with the ordering guard in both walks: a delivery of an ordered subscription is
-- not taken while an earlier delivery of its aggregate is pending. Unordered rows pay one
-- boolean test (and the subscription's row, by primary key); an ordered row with an aggregate
-- one probe of deliveries_aggregate_pending. As in 0005 there is no filter on `enabled` or
-- `removed_at`: relay.claim_deliveries() settles such rows once.
CREATE OR REPLACE FUNCTION relay.claim_due(p_limit integer, p_saturated bigint[])
RETURNS SETOF bigint
LANGUAGE plpgsql VOLATILE ROWS 100
SET enable_bitmapscan = off
SET enable_seqscan = off
-- Only the ordered walks of the two indexes are wanted (see 0001); the merge of the second
-- branch's rows needs a sort all the same (a few rows per subscription).
SET enable_sort = off
-- The guard's probes step over the index entries of an aggregate's finished deliveries (dead
-- until vacuum). A plain index scan marks them dead as it meets them (later probes skip them
-- in the page); an index-only scan does not, and visits the heap for each, every time: seen
-- taking the claim from 1 ms to 24 ms over a 5,000-event drain of one aggregate.
SET enable_indexonlyscan = off
SET jit = off
AS $$
BEGIN
    IF cardinality(p_saturated) = 0 THEN
        -- Walk deliveries_due in order and stop after p_limit rows.
        RETURN QUERY
        SELECT d.id
        FROM relay.deliveries d
        JOIN relay.subscriptions s ON s.id = d.subscription_id
        WHERE d.status = 'pending'
          AND d.next_attempt_at <= now()
          AND (NOT s.ordered OR d.aggregate_id IS NULL OR NOT EXISTS (
                SELECT 1 FROM relay.deliveries e
                WHERE e.subscription_id = d.subscription_id
                  AND e.aggregate_id = d.aggregate_id
                  AND e.outbox_id < d.outbox_id
                  AND e.status = 'pending'))
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
              AND d.status NOT IN ('delivered', 'dead')  -- pending (see 0005's index)
              AND d.next_attempt_at > '-infinity'
              AND d.next_attempt_at <= now()
              AND (NOT s.ordered OR d.aggregate_id IS NULL OR NOT EXISTS (
                    SELECT 1 FROM relay.deliveries e
                    WHERE e.subscription_id = d.subscription_id
                      AND e.aggregate_id = d.aggregate_id
                      AND e.outbox_id < d.outbox_id
                      AND e.status = 'pending'))
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


-- The claim (0005: settle what cannot be sent, lease the rest), plus what ending a row dead
-- owes to ordered subscriptions. The rows it ended are found again by one probe of
-- deliveries_dead (their dead_at is this transaction's now(); a row another transaction ended
-- at the same instant is looked at too, which is harmless):
-- * the head of an ordered aggregate ended dead (its event is of another tenant than the
--   subscription's): the next delivery of the aggregate proceeds, promoted as the ack does
--   (under the aggregates' advisory locks, in a statement that sees their holders' work);
-- * a removed subscription's row (left pending by a race with `subscription remove`, which ends
--   them all): its other pending rows may be parked ones no claim will meet (a disabled
--   subscription's, ordered successors), so they all end dead here, as `remove` ends them,
--   not pending for ever.
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
    ended_subs bigint[];
    ended_aggs text[];
    removed_subs bigint[];
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

    -- What the rows ended above held back (see the comment above the function).
    SELECT array_agg(d.subscription_id)
               FILTER (WHERE s.removed_at IS NULL AND s.enabled AND s.ordered
                             AND d.aggregate_id IS NOT NULL),
           array_agg(d.aggregate_id)
               FILTER (WHERE s.removed_at IS NULL AND s.enabled AND s.ordered
                             AND d.aggregate_id IS NOT NULL),
           array_agg(DISTINCT d.subscription_id) FILTER (WHERE s.removed_at IS NOT NULL)
    INTO ended_subs, ended_aggs, removed_subs
    FROM relay.deliveries d
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


-- The acks (0005: a retry of a subscription disabled meanwhile is parked), plus promotion:
-- when a delivery of an ordered subscription ends, the next one of its aggregate becomes due.
-- The ack statement is 0005's; the promotion is a second step, run only while some enabled
-- subscription is ordered, that looks the batch's finished rows up again by key (their
-- aggregates), locks those aggregates and promotes in a statement that sees what the lock
-- holders committed. It never makes a disabled subscription's row due
-- (relay.promote_ordered_heads() skips them): `enable` unparks the heads then.
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
          AND d.status NOT IN ('delivered', 'dead')  -- pending; see the note in 0003
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
      AND s.ordered AND s.enabled AND s.removed_at IS NULL;
    IF ended_subs IS NULL THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(7274, k)
    FROM (SELECT DISTINCT relay.ordered_lock_key(agg) AS k
          FROM unnest(ended_aggs) AS agg ORDER BY 1) AS keys;
    PERFORM relay.promote_ordered_heads(ended_subs, ended_aggs);
END
$$;


-- The dispatch (0005: the subscriptions it fans out to are locked FOR SHARE, so an operator's
-- disable, remove or tenant change waits for it or is seen by it), unchanged while no enabled
-- subscription is ordered (one index probe more per run to know it). With ordered
-- subscriptions: claim and match the rows (the subscriptions locked as in 0005, until the
-- transaction ends), lock their ordered aggregates, then fan out in a second statement whose
-- snapshot sees what the lock holders committed, parking each delivery that has an earlier one
-- of its aggregate pending (or still undispatched, e.g. claimed by another relay this instant)
-- and leasing only the rest.
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
        -- 0005's statement, plus the aggregate copied onto each delivery.
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
        -- The matching subscriptions, locked FOR SHARE (only when there are rows to fan out):
        -- an operator's disable, remove or tenant change (a row update) waits for this
        -- transaction, and one committed first is seen here (the lock re-reads the row), so no
        -- delivery is created, or leased and sent, for a subscription already paused or removed.
        subs AS MATERIALIZED (
            SELECT s.id, s.tenant_id, s.events, s.url, s.method, s.headers, s.event_names,
                   s.body_map, s.secret, s.previous_secret, s.previous_secret_expires_at,
                   s.max_retries, s.backoff_ms, s.timeout_ms, s.ordered
            FROM relay.subscriptions s
            WHERE s.enabled
              AND s.removed_at IS NULL
              AND EXISTS (SELECT 1 FROM claimed)
            FOR SHARE OF s
        ),
        matched AS MATERIALIZED (
            SELECT c.id AS outbox_id, s.id AS subscription_id, c.event_type, c.tenant_id,
                   c.aggregate_id, s.timeout_ms, row_number() OVER (ORDER BY c.id, s.id) AS n
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
        RETURN;
    END IF;

    -- 1. Claim, lock the subscriptions and match (as above), keeping the pairs for the next
    --    statements.
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
    -- locked FOR SHARE as above; the lock is held until the transaction ends, so the fan-out
    -- statement below reads the same versions of these rows
    subs AS MATERIALIZED (
        SELECT s.id, s.tenant_id, s.events, s.url, s.method, s.headers, s.event_names,
               s.body_map, s.secret, s.previous_secret, s.previous_secret_expires_at,
               s.max_retries, s.backoff_ms, s.timeout_ms, s.ordered
        FROM relay.subscriptions s
        WHERE s.enabled
          AND s.removed_at IS NULL
          AND EXISTS (SELECT 1 FROM claimed)
        FOR SHARE OF s
    ),
    matched AS MATERIALIZED (
        SELECT c.id AS outbox_id, s.id AS subscription_id, c.event_type, c.tenant_id,
               c.aggregate_id, s.ordered, s.timeout_ms
        FROM claimed c
        JOIN subs s
          ON (s.tenant_id IS NULL OR s.tenant_id = c.tenant_id)
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
