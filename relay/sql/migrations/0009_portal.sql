-- Customer portal (relay/portal): signed, revocable links that open one tenant's portal.

-- The HMAC key that signs portal links and sessions: one row, created on first use by the
-- first `relay portal-link` (INSERT ... ON CONFLICT DO NOTHING, so concurrent first uses agree).
-- Deleting the row invalidates every link and session at once.
CREATE TABLE relay.portal_keys (
    id         integer PRIMARY KEY CHECK (id = 1),
    key        bytea NOT NULL CHECK (octet_length(key) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every link handed out. A signature alone cannot be taken back: the portal also checks that
-- the link's row is here, unrevoked and unexpired, on entry and on every request after it.
CREATE TABLE relay.portal_links (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant_id  text NOT NULL CHECK (tenant_id <> ''),
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX portal_links_tenant ON relay.portal_links (tenant_id, created_at);
