-- relay schema, version 10: history reads whose cost does not follow the history kept.
--
-- The dead count of `relay status` and of the relay_deliveries_dead gauge, as an estimate
-- read from the catalog: the entries of the partial index deliveries_dead at the last VACUUM
-- or ANALYZE, scaled by how much the index grew since (as the planner scales its own
-- estimates). Counting the index itself cost a read of every dead row kept (a retention of
-- 30 days can keep millions), at every gauge refresh. Negative: never vacuumed nor analyzed
-- (then the callers count). No row is read; only pg_class and the index's file size.
CREATE VIEW relay.deliveries_dead_estimate AS
SELECT CASE WHEN c.reltuples < 0 THEN -1
            WHEN c.relpages = 0 THEN round(c.reltuples)::bigint
            ELSE round(c.reltuples / c.relpages
                       * (pg_relation_size(c.oid) / current_setting('block_size')::int))::bigint
       END AS n
FROM pg_class c
WHERE c.oid = 'relay.deliveries_dead'::regclass;

-- A tenant's dead deliveries, newest first (`GET /v1/deliveries?status=dead` with a tenant
-- key, admin_delivery_list_tenant): per subscription of the tenant, a backward walk of its
-- dead rows only. Before, the walk of deliveries_subscription (subscription_id, id) read
-- every delivery of the subscription to find the few dead ones (~50 rows per row returned at
-- 2% dead). Partial: a row enters it only when it ends dead, so the claim, the ack of a
-- delivered row and the dispatch never write to it.
CREATE INDEX deliveries_subscription_dead ON relay.deliveries (subscription_id, tenant_id, id)
    WHERE status = 'dead';
