-- What a posted invoice asks to be paid, stored once at posting (decision 0027, addendum
-- 2026-12-07): max(min(amount_due, new_charges), 0) rounded once to the currency's ISO 4217
-- minor unit, half away from zero, as lines are (decision 0019; ocs.billing.owed.asked).
-- The statement's figures are the ledger's exact micro-units, so an invoice asked
-- 12.344871 EUR and a payment of 12.34 (what a bank or a gateway pays) never settled it:
-- it stayed unpaid, was dunned for 0.004871 and its account suspended.
-- Payments, credit, dunning and the documents read this column (owed.asks_sql).
--
-- Only the fast part is here: it holds ACCESS EXCLUSIVE on invoices, so it must not scan or
-- rewrite it. The invoices posted before are filled by the step registered for 0062
-- (ocs.db.migration_steps; decision 0009, addendum 2026-12-07), in id ranges of their own
-- transactions; it then adds and validates the CHECK that every posted invoice (and credit
-- note, which asks 0) has its figure. No ocs process of this version reads the column
-- before that: each migrates, the step included, before it serves.
ALTER TABLE invoices ADD COLUMN amount_asked BIGINT;
-- NOT VALID: checked on rows written from now on, all rows validated after the backfill
-- (a CHECK added with the column would scan the table under this lock).
ALTER TABLE invoices ADD CONSTRAINT invoices_amount_asked_check CHECK (amount_asked >= 0)
    NOT VALID;

-- Fixed once posted, like the statement it comes from.
CREATE FUNCTION billing_invoice_asked_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'draft' AND OLD.amount_asked IS NOT NULL THEN
        RAISE EXCEPTION 'invoice %: what a % invoice asks is final', OLD.id, OLD.state
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoices_asked_final BEFORE UPDATE OF amount_asked ON invoices
    FOR EACH ROW WHEN (OLD.amount_asked IS DISTINCT FROM NEW.amount_asked)
    EXECUTE FUNCTION billing_invoice_asked_final();
