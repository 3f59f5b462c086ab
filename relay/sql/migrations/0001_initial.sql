-- relay schema, version 1.
-- Applied by `relay migrate` inside one transaction that holds an advisory lock,
-- so several relays starting at once apply it exactly once.


-- Event-type catalog ---------------------------------------------------------------------------
CREATE TABLE relay.event_types (
    name        text PRIMARY KEY
                CHECK (name ~ '^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$'),
    object      text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO relay.event_types (name, object, description) VALUES
    ('order.created',           'Order', 'Order has been created'),
    ('order.dispatched',        'Order', 'Order has been dispatched'),
    ('order.out_for_delivery',  'Order', 'Order is out for delivery (Note: this is subject to shipping method)'),
    ('order.received',          'Order', 'Order has been received by the customer (Note: this is subject to shipping method)'),
    ('test.registered',         'Test',  'Test has been registered'),
    ('test.lab_accessioned',    'Test',  'Test has been received at the lab (accessioned)'),
    ('test.processed',          'Test',  'Test has results'),
    ('test.validation_success', 'Test',  'Test validation success'),
    ('test.validation_fail',    'Test',  'Test validation fail')
ON CONFLICT (name) DO NOTHING;

-- Outbox ---------------------------------------------------------------------------------------
-- Apps insert here in their own transaction. The dispatcher claims rows whose dispatched_at is
-- NULL (never an id high-water mark: ids are not commit order) and fans them out.
CREATE TABLE relay.outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id      uuid NOT NULL DEFAULT gen_random_uuid() UNIQUE,
    event_type    text NOT NULL REFERENCES relay.event_types (name),
    payload       jsonb NOT NULL,
    aggregate_id  text,
    tenant_id     text,
    version       text NOT NULL DEFAULT 'v1',
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    dispatched_at timestamptz,
    CONSTRAINT outbox_payload_is_object CHECK (jsonb_typeof(payload) = 'object'),
    CONSTRAINT outbox_version_not_empty CHECK (version <> ''),
    -- 256 KiB of JSON text at most: a webhook is a notification, not a file transfer.
    CONSTRAINT outbox_payload_size CHECK (octet_length(payload::text) <= 262144)
);
-- Bounded scan for the dispatcher: only undispatched rows are in this index.
CREATE INDEX outbox_undispatched ON relay.outbox (id) WHERE dispatched_at IS NULL;

-- Subscriptions --------------------------------------------------------------------------------
CREATE TABLE relay.subscriptions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url          text NOT NULL,
    method       text NOT NULL DEFAULT 'POST' CHECK (method IN ('GET', 'POST')),
    headers      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    events       text[] NOT NULL DEFAULT '{}',          -- globs; empty = every event type
    event_names  jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(event_names) = 'object'),
    body_map     jsonb CHECK (body_map IS NULL OR jsonb_typeof(body_map) = 'object'),
    secret       text,
    -- Rotation: the replaced secret keeps signing (a second v1 signature) until this expires.
    previous_secret            text,
    previous_secret_expires_at timestamptz,
    tenant_id    text,
    max_retries  integer NOT NULL DEFAULT 3 CHECK (max_retries BETWEEN 0 AND 100),
    backoff_ms   integer NOT NULL DEFAULT 5000 CHECK (backoff_ms BETWEEN 0 AND 86400000),
    timeout_ms   integer NOT NULL DEFAULT 10000 CHECK (timeout_ms BETWEEN 1 AND 300000),
    enabled      boolean NOT NULL DEFAULT true,
    removed_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Glob match used by fan-out: '*' any run of characters, '?' one character.
CREATE FUNCTION relay.glob_match(name text, globs text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT cardinality(globs) = 0 OR EXISTS (
        SELECT 1 FROM unnest(globs) AS g
        WHERE name LIKE replace(replace(replace(replace(replace(g,
            '\', '\\'), '%', '\%'), '_', '\_'), '*', '%'), '?', '_')
    )
$$;

-- Deliveries: one per (outbox row, matching subscription) ---------------------------------------
-- A pending row is due when next_attempt_at <= now(). A claim sets lease_token and pushes
-- next_attempt_at to the lease expiry, so a crashed relay's rows fall due again by themselves.
CREATE TABLE relay.deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id        bigint NOT NULL REFERENCES relay.outbox (id),
    subscription_id  bigint NOT NULL REFERENCES relay.subscriptions (id),
    event_type       text NOT NULL,
    tenant_id        text,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,   -- every attempt ever made (history)
    failures         integer NOT NULL DEFAULT 0,   -- failed attempts in the current retry budget
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_token      uuid,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    dead_at          timestamptz,
    UNIQUE (outbox_id, subscription_id)
);
-- A queue table: every delivery row is updated two or three times within seconds. Vacuum it
-- early (by dead-row count, not the default 20 percent of the table) so the claim's index scan does not
-- wade through dead entries as history grows.
ALTER TABLE relay.deliveries SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
ALTER TABLE relay.outbox SET (
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.05
);
-- The claim query reads only this partial index: it stays as small as the backlog.
CREATE INDEX deliveries_due ON relay.deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_dead ON relay.deliveries (dead_at) WHERE status = 'dead';
CREATE INDEX deliveries_subscription ON relay.deliveries (subscription_id, id);

CREATE TABLE relay.delivery_attempts (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   bigint NOT NULL REFERENCES relay.deliveries (id),
    attempt       integer NOT NULL,
    relay_id      text NOT NULL,
    started_at    timestamptz NOT NULL,
    duration_ms   double precision NOT NULL,
    status_code   integer,
    error         text,
    response_body text,
    UNIQUE (delivery_id, attempt)
);

-- The claim's row selection, as a function so it can pin its plan: walk deliveries_due in
-- order and stop after p_limit rows. With stale statistics (a queue table changes faster than
-- ANALYZE) the planner may otherwise pick a bitmap scan of every due row plus a sort: seen
-- taking 130 ms instead of 2 ms at a 100k backlog.
CREATE FUNCTION relay.claim_due(p_limit integer, p_saturated bigint[]) RETURNS SETOF bigint
LANGUAGE sql VOLATILE ROWS 100
SET enable_bitmapscan = off
SET enable_seqscan = off
-- After ANALYZE on a one-subscription table the planner has been seen walking another index
-- and sorting 670k rows (1.1 s a claim): only the ordered walk of deliveries_due is wanted.
SET enable_sort = off
AS $$
    SELECT d.id
    FROM relay.deliveries d
    JOIN relay.subscriptions s ON s.id = d.subscription_id
    WHERE d.status = 'pending'
      AND d.next_attempt_at <= now()
      AND s.enabled
      -- subscriptions already at their in-flight cap on this relay wait (isolation: one slow
      -- endpoint cannot take every slot)
      AND (cardinality(p_saturated) = 0 OR d.subscription_id <> ALL (p_saturated))
    ORDER BY d.next_attempt_at
    LIMIT p_limit
    FOR UPDATE OF d SKIP LOCKED
$$;

-- Relays seen (for `relay status` and metrics) --------------------------------------------------
CREATE TABLE relay.relays (
    relay_id    text PRIMARY KEY,
    hostname    text NOT NULL,
    pid         integer NOT NULL,
    version     text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz NOT NULL DEFAULT now()
);

-- Shared gauges: one relay per interval computes them (the UPDATE that finds the row stale
-- wins), every relay exports the same numbers, so dashboards may take max() over instances.
CREATE TABLE relay.stats (
    id                  integer PRIMARY KEY CHECK (id = 1),
    outbox_backlog      bigint NOT NULL DEFAULT 0,
    deliveries_pending  bigint NOT NULL DEFAULT 0,
    deliveries_dead     bigint NOT NULL DEFAULT 0,
    oldest_pending_age  double precision NOT NULL DEFAULT 0,
    relays_seen         integer NOT NULL DEFAULT 0,
    refreshed_by        text,
    refreshed_at        timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO relay.stats (id) VALUES (1);

-- Wake-ups: one small notification per inserting statement (NOTIFY folds duplicates within a
-- transaction), never the payload.
CREATE FUNCTION relay.notify_outbox() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relay_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify AFTER INSERT ON relay.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION relay.notify_outbox();

-- App-facing emit: validates in the caller's transaction and returns the outbox id.
CREATE FUNCTION relay.emit(
    event_type   text,
    payload      jsonb,
    aggregate_id text DEFAULT NULL,
    tenant_id    text DEFAULT NULL,
    version      text DEFAULT 'v1'
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM relay.event_types t WHERE t.name = emit.event_type) THEN
        RAISE EXCEPTION 'relay.emit: unknown event type "%"', emit.event_type
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'register it with `relay event-type add` or check SELECT name FROM relay.event_types';
    END IF;
    IF payload IS NULL OR jsonb_typeof(payload) <> 'object' THEN
        RAISE EXCEPTION 'relay.emit: payload must be a JSON object, got %',
            coalesce(jsonb_typeof(payload), 'NULL')
            USING ERRCODE = 'check_violation';
    END IF;
    IF octet_length(payload::text) > 262144 THEN
        RAISE EXCEPTION 'relay.emit: payload is % bytes of JSON, the limit is 262144 (256 KiB)',
            octet_length(payload::text)
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO relay.outbox (event_type, payload, aggregate_id, tenant_id, version)
    VALUES (emit.event_type, emit.payload, emit.aggregate_id, emit.tenant_id,
            coalesce(emit.version, 'v1'))
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
