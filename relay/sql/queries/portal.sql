-- The customer portal (relay/portal): links, and the tenant-scoped reads relay.admin lacks.
-- Every name starts with portal_. Ownership is the subscription's tenant_id.

-- name: portal_key_insert
INSERT INTO relay.portal_keys (id, key) VALUES (1, %(key)s) ON CONFLICT (id) DO NOTHING;

-- name: portal_key_get
SELECT key FROM relay.portal_keys WHERE id = 1;

-- name: portal_link_insert
INSERT INTO relay.portal_links (tenant_id, expires_at)
VALUES (%(tenant)s, now() + make_interval(secs => %(ttl_s)s::int))
RETURNING id, tenant_id, expires_at, created_at;

-- name: portal_link_get
SELECT id, tenant_id, expires_at, created_at, revoked_at,
       expires_at <= now() AS expired
FROM relay.portal_links
WHERE id = %(id)s;

-- name: portal_link_list
SELECT id, tenant_id, expires_at, created_at, revoked_at,
       CASE WHEN revoked_at IS NOT NULL THEN 'revoked'
            WHEN expires_at <= now() THEN 'expired'
            ELSE 'active' END AS state
FROM relay.portal_links
WHERE %(tenant)s::text IS NULL OR tenant_id = %(tenant)s::text
ORDER BY created_at DESC, id
LIMIT %(limit)s;

-- name: portal_link_revoke
UPDATE relay.portal_links SET revoked_at = now()
WHERE id = %(id)s AND revoked_at IS NULL
RETURNING id;

-- name: portal_link_revoke_tenant
UPDATE relay.portal_links SET revoked_at = now()
WHERE tenant_id = %(tenant)s AND revoked_at IS NULL AND expires_at > now();

-- name: portal_subscription_health
-- Per live subscription of the tenant: waiting and dead deliveries, and the attempts of the
-- last 24 hours (success rate, latest failure). Reads deliveries_subscription per subscription.
SELECT s.id,
       (SELECT count(*) FROM relay.deliveries d
         WHERE d.subscription_id = s.id AND d.status = 'pending') AS pending,
       (SELECT count(*) FROM relay.deliveries d
         WHERE d.subscription_id = s.id AND d.status = 'dead') AS dead,
       recent.total AS recent_attempts,
       recent.ok AS recent_ok,
       failure.started_at AS last_error_at,
       coalesce(failure.error, 'HTTP ' || failure.status_code::text) AS last_error
FROM relay.subscriptions s
CROSS JOIN LATERAL (
    SELECT count(*) AS total,
           count(*) FILTER (WHERE a.status_code BETWEEN 200 AND 299) AS ok
    FROM relay.deliveries d
    JOIN relay.delivery_attempts a ON a.delivery_id = d.id
    WHERE d.subscription_id = s.id AND a.started_at > now() - interval '24 hours'
) recent
LEFT JOIN LATERAL (
    SELECT a.started_at, a.error, a.status_code
    FROM relay.deliveries d
    JOIN relay.delivery_attempts a ON a.delivery_id = d.id
    WHERE d.subscription_id = s.id AND NOT coalesce(a.status_code BETWEEN 200 AND 299, false)
    ORDER BY a.started_at DESC
    LIMIT 1
) failure ON true
WHERE s.tenant_id = %(tenant)s AND s.removed_at IS NULL
ORDER BY s.id;

-- name: portal_delivery_list
-- Newest first, keyset-paginated on id (`before`: the last id of the previous page).
SELECT d.id, d.subscription_id, d.event_type, d.status, d.attempts, d.failures,
       d.next_attempt_at, d.last_status_code, d.last_error, d.created_at,
       d.delivered_at, d.dead_at
FROM relay.deliveries d
JOIN relay.subscriptions s ON s.id = d.subscription_id
WHERE s.tenant_id = %(tenant)s
  AND (%(status)s::text IS NULL OR d.status = %(status)s::text)
  AND (%(event_type)s::text IS NULL OR d.event_type = %(event_type)s::text)
  AND (%(subscription_id)s::bigint IS NULL OR d.subscription_id = %(subscription_id)s::bigint)
  AND (%(since)s::timestamptz IS NULL OR d.created_at >= %(since)s::timestamptz)
  AND (%(before)s::bigint IS NULL OR d.id < %(before)s::bigint)
ORDER BY d.id DESC
LIMIT %(limit)s;
