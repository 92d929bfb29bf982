-- The PostgreSQL cluster an invoice's usage snapshot belongs to, and when it was read
-- (decision 0050, addendum 2026-12-07). Transaction ids count per cluster: after a dump and
-- restore, or a move by logical replication, to a new cluster the counter starts low, so
-- comparing a new CDR's recorded_xid with a snapshot of the old cluster read late imported
-- calls as seen (never billed) and old invoices' itemised lists showed calls they never
-- billed. A snapshot whose system identifier (pg_control_system()) is not the cluster's
-- own is compared by time instead: a CDR recorded at or after the snapshot was read was
-- not seen by it.
ALTER TABLE invoices ADD COLUMN usage_snapshot_system BIGINT;
ALTER TABLE invoices ADD COLUMN usage_snapshot_at TIMESTAMPTZ;
-- The same two of the earlier invoice's snapshot that the invoice's late usage was
-- compared with (late_after_snapshot).
ALTER TABLE invoices ADD COLUMN late_after_system BIGINT;
ALTER TABLE invoices ADD COLUMN late_after_at TIMESTAMPTZ;

-- Existing snapshots: this cluster's, unless they name transactions this cluster has not
-- reached (the migration runs after a move: they are another cluster's, and stay NULL,
-- compared by time). Their read time was not kept: the invoice's creation is the nearest
-- kept time (a draft recomputed later read later).
UPDATE invoices SET
    usage_snapshot_system = CASE
        WHEN pg_snapshot_xmax(usage_snapshot) <= pg_current_xact_id()
        THEN (SELECT system_identifier FROM pg_control_system()) END,
    usage_snapshot_at = created_at
WHERE usage_snapshot IS NOT NULL;
UPDATE invoices i SET
    late_after_system = CASE
        WHEN pg_snapshot_xmax(i.late_after_snapshot) <= pg_current_xact_id()
        THEN (SELECT system_identifier FROM pg_control_system()) END,
    late_after_at = (
        SELECT max(e.created_at) FROM invoices e
        WHERE e.account_id = i.account_id AND e.kind = 'invoice'
          AND e.usage_snapshot::text = i.late_after_snapshot::text)
WHERE i.late_after_snapshot IS NOT NULL;
