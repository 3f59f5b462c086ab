-- Operator operations behind the `relay` CLI (relay/admin*.py).
-- Every name starts with admin_ so it cannot clash with the daemon's queries.

-- name: admin_event_type_names
SELECT name FROM relay.event_types ORDER BY name;

-- name: admin_event_type_list
SELECT name AS id, name, object, description, created_at
FROM relay.event_types
ORDER BY name;

-- name: admin_event_type_insert
INSERT INTO relay.event_types (name, object, description)
VALUES (%(name)s, %(object)s, %(description)s)
ON CONFLICT (name) DO NOTHING
RETURNING name;

-- name: admin_subscription_insert
INSERT INTO relay.subscriptions
    (url, method, headers, events, event_names, body_map, secret, tenant_id,
     max_retries, backoff_ms, timeout_ms, ordered, enabled)
VALUES
    (%(url)s, %(method)s, %(headers)s, %(events)s, %(event_names)s, %(body_map)s, %(secret)s,
     %(tenant_id)s, %(max_retries)s, %(backoff_ms)s, %(timeout_ms)s, %(ordered)s, %(enabled)s)
RETURNING id;

-- name: admin_subscription_get
SELECT id, url, method, headers, events, event_names, body_map, secret, tenant_id,
       max_retries, backoff_ms, timeout_ms, ordered, enabled, removed_at, created_at, updated_at
FROM relay.subscriptions
WHERE id = %(id)s
  -- Tenant scope (API keys): another tenant's subscription is simply not there, by the same
  -- statement as a missing one.
  AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s::text);

-- name: admin_subscription_lock
-- Row lock so two concurrent updates merge headers/event names one after the other.
SELECT id, url, method, headers, events, event_names, body_map, secret, tenant_id,
       max_retries, backoff_ms, timeout_ms, ordered, enabled, removed_at, created_at, updated_at
FROM relay.subscriptions
WHERE id = %(id)s
  AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s::text)
FOR UPDATE;

-- name: admin_subscription_list
SELECT id, url, method, headers, events, event_names, body_map, secret, tenant_id,
       max_retries, backoff_ms, timeout_ms, ordered, enabled, removed_at, created_at, updated_at
FROM relay.subscriptions
WHERE (%(all)s OR removed_at IS NULL)
  AND (%(tenant)s::text IS NULL OR tenant_id = %(tenant)s::text)
  AND (%(after)s::bigint IS NULL OR id > %(after)s::bigint)  -- keyset page
ORDER BY id
LIMIT %(limit)s;

-- name: admin_subscription_update
UPDATE relay.subscriptions SET
    url = %(url)s,
    method = %(method)s,
    headers = %(headers)s,
    events = %(events)s,
    event_names = %(event_names)s,
    body_map = %(body_map)s,
    secret = %(secret)s,
    -- Rotation (`rotate`: a secret replaced by another, overlap > 0, decided in Python since
    -- stored secrets may be ciphertexts): the replaced one, %(previous_secret)s, keeps signing
    -- for the overlap. Clearing the secret or overlap 0 stops it at once and forgets it.
    previous_secret = CASE
        WHEN %(rotate)s::bool THEN %(previous_secret)s::text
        WHEN %(secret)s::text IS NULL OR %(overlap_s)s::int = 0 THEN NULL
        ELSE previous_secret END,
    previous_secret_expires_at = CASE
        WHEN %(rotate)s::bool THEN now() + make_interval(secs => %(overlap_s)s::int)
        WHEN %(secret)s::text IS NULL OR %(overlap_s)s::int = 0 THEN NULL
        ELSE previous_secret_expires_at END,
    tenant_id = %(tenant_id)s,
    max_retries = %(max_retries)s,
    backoff_ms = %(backoff_ms)s,
    timeout_ms = %(timeout_ms)s,
    ordered = %(ordered)s,
    enabled = %(enabled)s,
    updated_at = now()
WHERE id = %(id)s;

-- name: admin_subscription_set_enabled
-- Its own statement, before admin_subscription_park: the row lock it takes waits for a
-- dispatch fanning out to this subscription (relay.dispatch_outbox() locks the subscriptions
-- it matches FOR SHARE), so the park that follows, with a new snapshot, sees what it created.
UPDATE relay.subscriptions
SET enabled = %(enabled)s, updated_at = now()
WHERE id = %(id)s AND removed_at IS NULL;

-- name: admin_subscription_park
-- Disabling parks the subscription's waiting deliveries (due at 'infinity') so claims do not
-- walk past them; enabling makes them due now. In-flight ones (leased) are left alone: their
-- ack or release parks them (relay.ack_deliveries(), sql/migrations/0005_*.sql). Enabling an
-- ordered subscription makes due only the head of each aggregate: a delivery held back by an
-- earlier pending one of its aggregate (or by an earlier outbox row not dispatched yet) stays
-- parked, and the end of that earlier one promotes it (relay.ack_deliveries(), 0006).
UPDATE relay.deliveries d
SET next_attempt_at = CASE WHEN s.enabled THEN now() ELSE 'infinity' END,
    updated_at = now()
FROM relay.subscriptions s
WHERE s.id = %(id)s
  AND d.subscription_id = s.id
  AND d.status = 'pending'
  AND d.lease_token IS NULL
  AND (d.next_attempt_at = 'infinity') = s.enabled
  AND NOT (s.enabled AND s.ordered AND d.aggregate_id IS NOT NULL AND (
        EXISTS (
            SELECT 1 FROM relay.deliveries e
            WHERE e.subscription_id = d.subscription_id
              AND e.aggregate_id = d.aggregate_id
              AND e.outbox_id < d.outbox_id
              AND e.status = 'pending')
        OR relay.ordered_undispatched_before(d.subscription_id, d.aggregate_id, d.outbox_id)));

-- name: admin_subscription_foreign_pending
-- Pending deliveries of this subscription whose event belongs to another tenant than
-- %(tenant_id)s (a tenant change must not send them to the new tenant's endpoint).
SELECT count(*) AS n
FROM relay.deliveries
WHERE subscription_id = %(id)s
  AND status = 'pending'
  AND tenant_id IS DISTINCT FROM %(tenant_id)s::text;

-- name: admin_ordered_park
-- Ordered subscriptions %(ids)s (NULL: every one): park (due at 'infinity') each waiting
-- delivery that an earlier pending one of its aggregate holds back (after a switch to
-- ordered, or a replay of an earlier one), so claims do not walk past it. The claim's guard
-- keeps the order either way; the ack of the earlier one (or the relays' periodic unpark)
-- makes it due again.
UPDATE relay.deliveries d
SET next_attempt_at = 'infinity', updated_at = now()
FROM relay.subscriptions s
WHERE s.id = d.subscription_id
  AND s.ordered
  AND (%(ids)s::bigint[] IS NULL OR d.subscription_id = ANY (%(ids)s::bigint[]))
  AND d.status = 'pending'
  AND d.aggregate_id IS NOT NULL
  AND d.lease_token IS NULL
  AND d.next_attempt_at <> 'infinity'
  AND EXISTS (
        SELECT 1 FROM relay.deliveries e
        WHERE e.subscription_id = d.subscription_id
          AND e.aggregate_id = d.aggregate_id
          AND e.outbox_id < d.outbox_id
          AND e.status = 'pending');

-- name: admin_ordered_unpark
-- A subscription switched to unordered: its parked deliveries are due now (if it is enabled;
-- a disabled one's wait for `enable`).
UPDATE relay.deliveries d
SET next_attempt_at = now(), updated_at = now()
FROM relay.subscriptions s
WHERE s.id = d.subscription_id
  AND s.id = %(id)s
  AND s.enabled AND NOT s.ordered
  AND d.status = 'pending'
  AND d.lease_token IS NULL
  AND d.next_attempt_at = 'infinity';

-- name: admin_subscription_remove
-- Soft delete: the row stays so its delivery history keeps its foreign key.
UPDATE relay.subscriptions
SET removed_at = now(), enabled = false, updated_at = now()
WHERE id = %(id)s AND removed_at IS NULL;

-- name: admin_subscription_kill_pending
-- Pending work of a removed subscription ends dead, visibly, rather than silently vanishing.
UPDATE relay.deliveries
SET status = 'dead', dead_at = now(), updated_at = now(), last_error = 'subscription removed',
    lease_owner = NULL, lease_token = NULL
WHERE subscription_id = %(id)s AND status = 'pending';

-- name: admin_notify_subscriptions
-- A hint for relays that cache subscriptions; the payload is the subscription id.
SELECT pg_notify('relay_subscriptions', %(id)s::text);

-- name: admin_delivery_list
-- next_attempt_at 'infinity' (parked: its subscription is disabled, or an earlier delivery of
-- its aggregate to an ordered subscription is pending) shows as NULL (not due): no client
-- datetime type holds infinity.
SELECT id, outbox_id, subscription_id, event_type, tenant_id, status, attempts, failures,
       nullif(next_attempt_at, 'infinity') AS next_attempt_at, lease_owner, last_status_code,
       last_error, created_at, updated_at, delivered_at, dead_at
FROM relay.deliveries
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(subscription_id)s::bigint IS NULL OR subscription_id = %(subscription_id)s::bigint)
  AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s::text)
  AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)  -- keyset page
ORDER BY id DESC
LIMIT %(limit)s;

-- name: admin_delivery_list_tenant
-- One tenant's deliveries: those of its subscriptions that carry its own events (a
-- subscription moved between tenants by an operator keeps its old tenant's history out of
-- sight). Per subscription, a backward walk of deliveries_subscription (subscription_id, id)
-- stops after `limit` rows, so the cost follows the page, not the history. Dead ones are
-- few among many (a customer's "why did it fail" page): the first branch walks only them
-- (deliveries_subscription_dead, 0010) instead of every delivery of the subscription. Two
-- branches gated by `%(status)s = 'dead'` (a one-time filter: the other branch does not run)
-- rather than one WHERE, because the API's pooled connections prepare the statement and
-- may cache a generic plan, where `status = $1` cannot pick a partial index but the constant
-- `status = 'dead'` of a branch can.
SELECT d.*
FROM relay.subscriptions s
CROSS JOIN LATERAL (
    SELECT u.* FROM (
        (SELECT id, outbox_id, subscription_id, event_type, tenant_id, status, attempts,
                failures, nullif(next_attempt_at, 'infinity') AS next_attempt_at, lease_owner,
                last_status_code, last_error, created_at, updated_at, delivered_at, dead_at
         FROM relay.deliveries
         WHERE %(status)s::text = 'dead'
           AND status = 'dead'
           AND subscription_id = s.id
           AND tenant_id = %(tenant)s::text
           AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s::text)
           AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
         ORDER BY id DESC
         LIMIT %(limit)s)
        UNION ALL
        (SELECT id, outbox_id, subscription_id, event_type, tenant_id, status, attempts,
                failures, nullif(next_attempt_at, 'infinity') AS next_attempt_at, lease_owner,
                last_status_code, last_error, created_at, updated_at, delivered_at, dead_at
         FROM relay.deliveries
         WHERE %(status)s::text IS DISTINCT FROM 'dead'
           AND subscription_id = s.id
           AND tenant_id = %(tenant)s::text
           AND (%(status)s::text IS NULL OR status = %(status)s::text)
           AND (%(event_type)s::text IS NULL OR event_type = %(event_type)s::text)
           AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
         ORDER BY id DESC
         LIMIT %(limit)s)
    ) u
    ORDER BY u.id DESC
    LIMIT %(limit)s
) d
WHERE s.tenant_id = %(tenant)s::text
  AND (%(subscription_id)s::bigint IS NULL OR s.id = %(subscription_id)s::bigint)
ORDER BY d.id DESC
LIMIT %(limit)s;

-- name: admin_delivery_get
-- event_gone: the delivery's outbox row was deleted outside relay (no foreign key holds it
-- since 0011); its event columns are then NULL.
SELECT d.id, d.outbox_id, d.subscription_id, d.event_type, d.tenant_id, d.status, d.attempts,
       d.failures, nullif(d.next_attempt_at, 'infinity') AS next_attempt_at, d.lease_owner,
       d.last_status_code, d.last_error, d.created_at, d.updated_at, d.delivered_at, d.dead_at,
       o.event_id, o.aggregate_id, o.version, o.payload, o.created_at AS event_created_at,
       o.id IS NULL AS event_gone
FROM relay.deliveries d
LEFT JOIN relay.outbox o ON o.id = d.outbox_id
JOIN relay.subscriptions s ON s.id = d.subscription_id
WHERE d.id = %(id)s
  -- Tenant scope: the same statement answers for a missing and another tenant's delivery.
  AND (%(tenant)s::text IS NULL OR (s.tenant_id = %(tenant)s::text AND d.tenant_id = s.tenant_id));

-- name: admin_delivery_attempts
SELECT attempt, started_at, status_code, error, duration_ms, relay_id,
       left(response_body, %(body_limit)s) AS response_body,
       length(response_body) > %(body_limit)s AS response_truncated
FROM relay.delivery_attempts
WHERE delivery_id = %(id)s
ORDER BY attempt;

-- name: admin_delivery_owners
SELECT d.id, d.subscription_id, s.removed_at IS NOT NULL AS subscription_removed,
       -- leased and the lease still running: an attempt may be in progress
       d.status = 'pending' AND d.lease_token IS NOT NULL AND d.next_attempt_at > now()
           AS in_flight,
       d.lease_owner, d.next_attempt_at AS lease_until,
       s.tenant_id IS NOT NULL AND d.tenant_id IS DISTINCT FROM s.tenant_id AS foreign_tenant
FROM relay.deliveries d
JOIN relay.subscriptions s ON s.id = d.subscription_id
WHERE d.id = ANY(%(ids)s)
  AND (%(tenant)s::text IS NULL OR (s.tenant_id = %(tenant)s::text AND d.tenant_id = s.tenant_id))
FOR UPDATE OF d;

-- name: admin_replay_ids
-- Replay: a fresh retry budget, due now (parked if the subscription is disabled), no lease;
-- `attempts` and the attempt rows are history. The caller refused deliveries in flight.
UPDATE relay.deliveries d
SET status = 'pending', failures = 0,
    next_attempt_at = CASE WHEN s.enabled THEN now() ELSE 'infinity' END,
    lease_owner = NULL, lease_token = NULL, dead_at = NULL, delivered_at = NULL,
    updated_at = now()
FROM relay.subscriptions s
WHERE d.id = ANY(%(ids)s) AND s.id = d.subscription_id;

-- name: admin_replay_dead
-- Deliveries of removed subscriptions stay dead, and so do those of another tenant's events
-- than the subscription's tenant now (isolation after `subscription update --tenant`).
UPDATE relay.deliveries d
SET status = 'pending', failures = 0,
    next_attempt_at = CASE WHEN s.enabled THEN now() ELSE 'infinity' END,
    lease_owner = NULL, lease_token = NULL, dead_at = NULL, delivered_at = NULL,
    updated_at = now()
FROM relay.subscriptions s
WHERE d.status = 'dead'
  AND s.id = d.subscription_id
  AND s.removed_at IS NULL
  AND (s.tenant_id IS NULL OR s.tenant_id = d.tenant_id)
  AND (%(subscription_id)s::bigint IS NULL OR d.subscription_id = %(subscription_id)s::bigint)
  AND (%(since)s::timestamptz IS NULL OR d.dead_at >= %(since)s::timestamptz)
  AND (%(tenant)s::text IS NULL OR (s.tenant_id = %(tenant)s::text AND d.tenant_id = %(tenant)s::text));

-- name: admin_notify_deliveries
-- Wake running relays (same channel the daemon listens on for due deliveries).
SELECT pg_notify('relay_deliveries', '');

-- name: admin_status
-- Each count reads one partial index (outbox_undispatched, deliveries_due) so the cost follows
-- the backlog, not the history. The dead count is exact while the catalog's estimate of the
-- dead rows (relay.deliveries_dead_estimate, 0010) is under %(exact_below)s, and that
-- estimate beyond: a retention keeps millions of dead rows, and counting them cost a read of
-- each (deliveries_dead_estimated says which). The delivered
-- count is exact while the table is small (under %(exact_below)s rows by the planner's estimate); on a
-- big table it is the planner's estimate (reltuples x the share of 'delivered' in the last
-- ANALYZE), since counting millions of rows took seconds (deliveries_delivered_estimated says
-- which). The exact count is an InitPlan run only if the CASE asks for it. Its cost still
-- counts in the plan's: on a big table that passed jit_above_cost, and compiling the plan
-- cost more than running it (27 of 38 ms at 10M deliveries), so admin.status() runs this
-- with jit off.
WITH size AS MATERIALIZED (
    SELECT c.reltuples >= %(exact_below)s AS estimated,
           round(c.reltuples * coalesce((
               SELECT st.most_common_freqs[
                          array_position(st.most_common_vals::text::text[], 'delivered')]
               FROM pg_stats st
               WHERE st.schemaname = 'relay' AND st.tablename = 'deliveries'
                 AND st.attname = 'status'), 0))::bigint AS delivered
    FROM pg_class c
    WHERE c.oid = 'relay.deliveries'::regclass
),
dead AS MATERIALIZED (
    SELECT e.n >= %(exact_below)s AS estimated, e.n FROM relay.deliveries_dead_estimate e
)
SELECT
    (SELECT count(*) FROM relay.outbox WHERE dispatched_at IS NULL) AS outbox_backlog,
    (SELECT greatest(0, extract(epoch FROM now() - min(created_at)))::float8
       FROM relay.outbox WHERE dispatched_at IS NULL) AS oldest_undispatched_age_seconds,
    pending.n AS deliveries_pending,
    pending.due AS deliveries_due,
    (SELECT greatest(0, extract(epoch FROM now() - min(next_attempt_at)))::float8
       FROM relay.deliveries
       WHERE status = 'pending' AND next_attempt_at <= now()) AS oldest_due_age_seconds,
    CASE WHEN (SELECT dead.estimated FROM dead)
         THEN (SELECT dead.n FROM dead)
         ELSE (SELECT count(*) FROM relay.deliveries WHERE status = 'dead')
    END AS deliveries_dead,
    (SELECT dead.estimated FROM dead) AS deliveries_dead_estimated,
    CASE WHEN (SELECT size.estimated FROM size)
         THEN (SELECT size.delivered FROM size)
         ELSE (SELECT count(*) FROM relay.deliveries WHERE status = 'delivered')
    END AS deliveries_delivered,
    (SELECT size.estimated FROM size) AS deliveries_delivered_estimated
-- pending and due in one walk of deliveries_due (the backlog)
FROM (SELECT count(*) AS n, count(*) FILTER (WHERE next_attempt_at <= now()) AS due
      FROM relay.deliveries WHERE status = 'pending') AS pending;

-- name: admin_status_relays
SELECT relay_id, hostname, pid, version, started_at, last_seen
FROM relay.relays
WHERE last_seen > now() - interval '1 minute'
ORDER BY relay_id;
