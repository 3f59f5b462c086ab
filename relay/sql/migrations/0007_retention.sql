-- relay schema, version 7: retention (pruning finished history) and history reads that stay
-- fast however much history is kept.
--
-- Pruning (relay/sql/queries/retention.sql) deletes, in small batches, deliveries that ended
-- longer ago than the retention, with their attempts, then outbox rows that were dispatched
-- and have no delivery left. A delivered row is found by when it was delivered: this index
-- (the dead ones already have deliveries_dead on dead_at). Both are partial, so a batch reads
-- only finished rows, oldest first, and never looks at pending work.
CREATE INDEX deliveries_delivered ON relay.deliveries (delivered_at) WHERE status = 'delivered';

-- `relay delivery list --status S` and `--event-type T`, newest first: without these the list
-- walked the primary key backwards, filtering, through all of history for a rare status or
-- type (seconds at 10M rows). The subscription filter has deliveries_subscription already.
CREATE INDEX deliveries_status_id ON relay.deliveries (status, id);
CREATE INDEX deliveries_event_type_id ON relay.deliveries (event_type, id);

-- The outbox is pruned by walking its primary key from the oldest row (ids follow creation
-- time closely: created_at is clock_timestamp() at insert), so it needs no new index: one
-- more index on relay.outbox would cost every dispatch an index insert.
