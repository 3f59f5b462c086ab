-- API keys (relay/admin/apikeys.py): created and revoked by `relay api-key`, checked by
-- `relay api` on every request. The key itself is never stored, listed or logged.

-- name: api_key_insert
INSERT INTO relay.api_keys (name, tenant_id, key_hash)
VALUES (%(name)s, %(tenant_id)s, %(key_hash)s)
RETURNING id, name, tenant_id, created_at, last_used_at, revoked_at;

-- name: api_key_list
SELECT id, name, tenant_id, created_at, last_used_at, revoked_at
FROM relay.api_keys
ORDER BY id;

-- name: api_key_revoke
UPDATE relay.api_keys SET revoked_at = coalesce(revoked_at, now())
WHERE id = %(id)s
RETURNING id;

-- name: api_key_authenticate
-- One round trip: find the key by its hash and note its use, at most once a minute so a busy
-- key does not turn every read into a write.
WITH k AS (
    SELECT id, tenant_id, key_hash, revoked_at
    FROM relay.api_keys
    WHERE key_hash = %(key_hash)s
), touched AS (
    UPDATE relay.api_keys a SET last_used_at = now()
    FROM k
    WHERE a.id = k.id AND k.revoked_at IS NULL
      AND (a.last_used_at IS NULL OR a.last_used_at < now() - interval '1 minute')
    RETURNING a.id
)
SELECT id, tenant_id, key_hash, revoked_at IS NOT NULL AS revoked FROM k;
