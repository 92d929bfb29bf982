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

-- Existing snapshots are filled by the step registered for 0065 (ocs.db.migration_steps),
-- in id ranges of their own transactions: rewriting every invoice here would hold this
-- file's ACCESS EXCLUSIVE lock on invoices for the whole rewrite. A snapshot is this
-- cluster's unless it names transactions this cluster has not reached (the migration runs
-- after a move: it is another cluster's, stays NULL, compared by time). Its read time was
-- not kept: the invoice's creation is the nearest kept time (a draft recomputed later read
-- later).
--
-- The invoice state machine (0021's function, one change more allowed): the step names
-- the cluster and read time of posted and void invoices too, each column once, only where
-- the invoice has that snapshot, and nothing else of the invoice changed. A void invoice
-- allowed no change at all: the UPDATE of every snapshot here refused (void -> void) on
-- any database that had voided an invoice.
CREATE OR REPLACE FUNCTION billing_invoice_transition() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    snapshot_columns CONSTANT TEXT[] :=
        '{usage_snapshot_system,usage_snapshot_at,late_after_system,late_after_at}';
    here BIGINT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.state <> 'draft' THEN
            RAISE EXCEPTION 'invoice %: a % invoice cannot be deleted', OLD.id, OLD.state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.state = 'draft' THEN
        IF NEW.state NOT IN ('draft', 'posted') THEN
            RAISE EXCEPTION 'invoice %: draft -> % is not allowed', OLD.id, NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    -- 0065's backfill names a posted or void invoice's snapshot cluster and read time
    -- once, nothing else changed (a void invoice allowed no change at all before).
    here := (SELECT system_identifier FROM pg_control_system());
    IF NEW.state = OLD.state
       AND to_jsonb(NEW) - snapshot_columns = to_jsonb(OLD) - snapshot_columns
       AND (NEW.usage_snapshot_system IS NOT DISTINCT FROM OLD.usage_snapshot_system
            OR (OLD.usage_snapshot_system IS NULL AND OLD.usage_snapshot IS NOT NULL
                AND NEW.usage_snapshot_system = here))
       AND (NEW.usage_snapshot_at IS NOT DISTINCT FROM OLD.usage_snapshot_at
            OR (OLD.usage_snapshot_at IS NULL AND OLD.usage_snapshot IS NOT NULL))
       AND (NEW.late_after_system IS NOT DISTINCT FROM OLD.late_after_system
            OR (OLD.late_after_system IS NULL AND OLD.late_after_snapshot IS NOT NULL
                AND NEW.late_after_system = here))
       AND (NEW.late_after_at IS NOT DISTINCT FROM OLD.late_after_at
            OR (OLD.late_after_at IS NULL AND OLD.late_after_snapshot IS NOT NULL))
    THEN
        RETURN NEW;
    END IF;
    IF (NEW.window_start, NEW.window_end, NEW.prepaid, NEW.previous_balance, NEW.payments,
        NEW.debited, NEW.posting_charges, NEW.new_charges, NEW.closing_balance, NEW.amount_due)
       IS DISTINCT FROM
       (OLD.window_start, OLD.window_end, OLD.prepaid, OLD.previous_balance, OLD.payments,
        OLD.debited, OLD.posting_charges, OLD.new_charges, OLD.closing_balance, OLD.amount_due)
    THEN
        RAISE EXCEPTION 'invoice %: the statement of a % invoice is final', OLD.id, OLD.state
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.state = 'posted' AND NEW.state = 'void' AND OLD.kind = 'invoice'
       AND (NEW.id, NEW.account_id, NEW.kind, NEW.period_start, NEW.period_end, NEW.currency,
            NEW.number, NEW.subtotal, NEW.tax_total, NEW.total, NEW.invoice_date, NEW.posted_at)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.account_id, OLD.kind, OLD.period_start, OLD.period_end, OLD.currency,
            OLD.number, OLD.subtotal, OLD.tax_total, OLD.total, OLD.invoice_date, OLD.posted_at)
    THEN
        RETURN NEW;
    END IF;
    IF OLD.state = 'posted' AND NEW.state = 'posted' AND NEW.number = OLD.number
       AND NEW.total = OLD.total AND NEW.subtotal = OLD.subtotal
       AND NEW.tax_total = OLD.tax_total AND NEW.account_id = OLD.account_id
       AND NEW.period_start = OLD.period_start AND NEW.voided_at IS NULL THEN
        RETURN NEW;  -- no change to what the invoice says (e.g. run_id set null)
    END IF;
    RAISE EXCEPTION 'invoice %: % -> % is not allowed (a posted invoice is final; void it)',
        OLD.id, OLD.state, NEW.state USING ERRCODE = 'check_violation';
END
$$;

-- A release from before 0065 may still be drafting while this one migrates (the upgrade
-- procedure keeps the old processes serving until the restart, docs/operations.md): its
-- drafts write a usage snapshot without its cluster or read time, after the step above
-- has run, and late_usage could then compare that snapshot neither by id nor by time (the
-- account's late calls never billed). The snapshot a writer leaves unnamed is named here:
-- this cluster (a snapshot is read in the cluster that writes it) and the transaction's
-- start (the draft read its CDRs within it). A writer that names either (this release's
-- drafts) is left as it wrote.
CREATE OR REPLACE FUNCTION billing_invoice_snapshot_named() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.usage_snapshot IS NOT NULL
       AND (CASE WHEN TG_OP = 'INSERT' THEN NEW.usage_snapshot_at IS NULL
                 ELSE NEW.usage_snapshot::text IS DISTINCT FROM OLD.usage_snapshot::text
                      AND NEW.usage_snapshot_at IS NOT DISTINCT FROM OLD.usage_snapshot_at
                      AND NEW.usage_snapshot_system
                          IS NOT DISTINCT FROM OLD.usage_snapshot_system
            END)
    THEN
        NEW.usage_snapshot_system := (SELECT system_identifier FROM pg_control_system());
        NEW.usage_snapshot_at := now();
    END IF;
    RETURN NEW;
END
$$;
-- Named to fire before invoices_transitions (BEFORE triggers fire by name): a draft's
-- change, which that trigger allows.
CREATE TRIGGER invoices_snapshot_named BEFORE INSERT OR UPDATE OF usage_snapshot ON invoices
    FOR EACH ROW EXECUTE FUNCTION billing_invoice_snapshot_named();
