-- Usage imported after the invoice of its period was drafted (decision 0050). A supplier's
-- file can arrive days after the calls it lists: their CDRs are written then, with a
-- stop inside a period already invoiced, and no later invoice looked before them. Each
-- invoice now keeps the snapshot its CDR read saw, and the next invoice bills the
-- imported CDRs stopped before its own window that the earlier one could not see.
--
-- A CDR keeps the transaction that wrote it (recorded_xid), so "could the earlier draft
-- see it" is PostgreSQL's own visibility rule, exact: a time (recorded_at is the writing
-- transaction's start) cannot say whether a transaction open during the draft's read had
-- committed by then.
--
-- Nullable and without a default when added: adding it rewrites nothing, and a CDR
-- written before this migration has none, which the late read skips (it was written
-- before any invoice made from now on). The default, set after, fills every new row: the
-- ledger writer's INSERT names its columns and leaves this one to the database.
ALTER TABLE cdrs ADD COLUMN recorded_xid xid8;
ALTER TABLE cdrs ALTER COLUMN recorded_xid SET DEFAULT pg_current_xact_id();

-- The index the late read uses is migration 0047's: built in a transaction of its own,
-- after this one's ALTERs (which lock cdrs whole, for a moment) have committed.

-- The snapshot of the statement that read the invoice's CDRs, written with every
-- (re)draft; NULL for an invoice drafted before this migration (nothing is late after it).
-- And the snapshot of the earlier invoice its late usage was compared with (NULL: none
-- was), so its itemised list reads the calls it billed, whatever is drafted after it.
ALTER TABLE invoices ADD COLUMN usage_snapshot pg_snapshot;
ALTER TABLE invoices ADD COLUMN late_after_snapshot pg_snapshot;
