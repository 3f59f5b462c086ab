-- Credentials at rest (relay/admin/credentials.py): which subscriptions still hold plain-text
-- secrets or header values, and re-encryption by `relay rotate-key`. Encrypted values are
-- text starting with 'enc:v1:' (relay/crypto.py); anything else is plain text.

-- name: credentials_counts
WITH s AS (
    SELECT (secret IS NOT NULL OR previous_secret IS NOT NULL OR headers <> '{}') AS has_any,
           (secret IS NOT NULL AND NOT starts_with(secret, 'enc:v1:'))
        OR (previous_secret IS NOT NULL AND NOT starts_with(previous_secret, 'enc:v1:'))
        OR EXISTS (SELECT 1 FROM jsonb_each_text(headers) h
                   WHERE NOT starts_with(h.value, 'enc:v1:')) AS has_plain
    FROM relay.subscriptions
)
SELECT count(*) FILTER (WHERE has_any AND NOT has_plain) AS subscriptions_encrypted,
       count(*) FILTER (WHERE has_plain) AS subscriptions_plaintext
FROM s;

-- name: credentials_all
-- Every subscription with credentials (removed ones too: their rows keep them), locked so an
-- update cannot write between the read and the re-encrypted write.
SELECT id, headers, secret, previous_secret, removed_at IS NOT NULL AS removed
FROM relay.subscriptions
WHERE secret IS NOT NULL OR previous_secret IS NOT NULL OR headers <> '{}'
ORDER BY id
FOR UPDATE;

-- name: credentials_active
-- The credentials a relay will need: subscriptions not removed (a start-up check, no lock).
SELECT id, headers, secret, previous_secret
FROM relay.subscriptions
WHERE removed_at IS NULL
  AND (secret IS NOT NULL OR previous_secret IS NOT NULL OR headers <> '{}')
ORDER BY id;

-- name: credentials_store
-- Same values, sealed with the current key; updated_at untouched (the subscription did not
-- change). The NOTIFY-free write is deliberate: relays read credentials per claim.
UPDATE relay.subscriptions
SET headers = %(headers)s, secret = %(secret)s, previous_secret = %(previous_secret)s
WHERE id = %(id)s;
