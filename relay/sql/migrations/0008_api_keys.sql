-- API keys for `relay api` (issue 15). Only a SHA-256 hash of each key is stored: the key is
-- a high-entropy random string, so a plain hash is enough (no salt or slow KDF needed) and a
-- stolen table reveals no usable key. A key with a tenant_id sees only that tenant's
-- subscriptions and their deliveries; a key without one is an operator key.
CREATE TABLE relay.api_keys (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text NOT NULL DEFAULT '',
    tenant_id    text,
    key_hash     bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
