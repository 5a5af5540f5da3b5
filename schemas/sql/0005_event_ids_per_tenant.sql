-- Event ids belong to a tenant.
--
-- A direct producer chooses its event ids. With `events` keyed by id alone, an id one tenant
-- had used could not be used by another: fan-out had to refuse the second envelope (to
-- `events.invalid`), so a tenant that guessed or copied another's ids ahead of time could make
-- that tenant's events undeliverable. Keyed by (id, tenant_id), the same id under two tenants
-- is two events; a delivery's event is found by (event_id, tenant_id). The id comes first in
-- the key so a lookup by id alone (operators, harborctl) is still served by it.
--
-- Rollout: the previous release's fan-out inserts with `ON CONFLICT (id)`, which needs a unique
-- index on id alone; it fails against this schema. Roll fan-out (and harborctl) together with
-- the migration (docs/database.md). Delivery ids are derived from (event id, endpoint id), and
-- an endpoint belongs to one tenant, so `deliveries` keeps its keys.
ALTER TABLE deliveries DROP CONSTRAINT IF EXISTS deliveries_event_id_fkey;
ALTER TABLE events DROP CONSTRAINT events_pkey;
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id, tenant_id);
-- NOT VALID: checked for every row written from now on, not for existing ones. Releases before
-- this one could attach a delivery to another tenant's event (the bug this fixes), and such a
-- row would fail the check and with it the migration, and so every service's start. Find them
-- with `SELECT d.id FROM deliveries d LEFT JOIN events e ON (e.id, e.tenant_id) = (d.event_id,
-- d.tenant_id) WHERE e.id IS NULL`, then `ALTER TABLE deliveries VALIDATE CONSTRAINT
-- deliveries_event_fkey` (docs/database.md).
ALTER TABLE deliveries ADD CONSTRAINT deliveries_event_fkey
    FOREIGN KEY (event_id, tenant_id) REFERENCES events (id, tenant_id) ON DELETE CASCADE
    NOT VALID;
