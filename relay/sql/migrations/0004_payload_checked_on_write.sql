-- relay schema, version 4: the outbox payload is checked when it is written, not again each
-- time the row changes.
--
-- Postgres evaluates every CHECK constraint of a row on every UPDATE of it, whichever columns
-- the UPDATE sets. The dispatcher's UPDATE of dispatched_at therefore decompressed each payload
-- (jsonb_typeof) and serialised it to text once more (octet_length(payload::text)): Postgres
-- CPU growing with the payload's size on the hot path, for a value that cannot have changed.
-- The same two rules now live in a BEFORE INSERT OR UPDATE OF payload trigger whose WHEN
-- clause holds the test: it is evaluated in the executor like the CHECK was (no PL/pgSQL call
-- for a good row), and not at all for an UPDATE that leaves the payload alone. A refused row
-- raises check_violation under the old constraint names, so errors read as before.
-- (Like every trigger, it does not fire with session_replication_role = replica.)

CREATE FUNCTION relay.outbox_payload_refused() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    size integer;
BEGIN
    IF jsonb_typeof(NEW.payload) <> 'object' THEN
        RAISE EXCEPTION 'new row for relation "outbox" violates check constraint "outbox_payload_is_object"'
            USING ERRCODE = 'check_violation', CONSTRAINT = 'outbox_payload_is_object',
                  SCHEMA = 'relay', TABLE = 'outbox', COLUMN = 'payload',
                  DETAIL = format('payload must be a JSON object, got %s', jsonb_typeof(NEW.payload));
    END IF;
    size := octet_length(NEW.payload::text);
    RAISE EXCEPTION 'new row for relation "outbox" violates check constraint "outbox_payload_size"'
        USING ERRCODE = 'check_violation', CONSTRAINT = 'outbox_payload_size',
              SCHEMA = 'relay', TABLE = 'outbox', COLUMN = 'payload',
              DETAIL = format('payload is %s bytes of JSON, the limit is 262144 (256 KiB)', size);
END
$$;

CREATE TRIGGER outbox_payload_checked
    BEFORE INSERT OR UPDATE OF payload ON relay.outbox
    FOR EACH ROW
    -- 256 KiB of JSON text at most: a webhook is a notification, not a file transfer.
    WHEN (jsonb_typeof(NEW.payload) <> 'object' OR octet_length(NEW.payload::text) > 262144)
    EXECUTE FUNCTION relay.outbox_payload_refused();

ALTER TABLE relay.outbox
    DROP CONSTRAINT outbox_payload_is_object,
    DROP CONSTRAINT outbox_payload_size;
