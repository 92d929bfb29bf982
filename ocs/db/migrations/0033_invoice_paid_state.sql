-- Issue 14: what has been paid of a posted invoice. Payments are allocated to open
-- invoices oldest first (ocs/billing/payments.py); dunning reads what is still owed.
-- A posted invoice may change these two columns only: its number, totals, account and
-- period stay final (invoices_transitions, migration 0018).
ALTER TABLE invoices
    ADD COLUMN amount_paid BIGINT NOT NULL DEFAULT 0 CHECK (amount_paid >= 0),
    ADD COLUMN paid_at TIMESTAMPTZ;  -- when amount_paid first reached what the invoice asks
