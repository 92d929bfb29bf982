-- The ledger rows of payments' credits, found by their reference ("pay:<payment id>").
--
-- Posting pays a new invoice from the credit of payments its statement did not count:
-- those whose credit's ledger row is missing or dated at or after the statement window's
-- end (ocs.billing.credit, decision 0027). The row was looked up by payments.ledger_entry,
-- the Redis stream entry's id, but the ledger writer keys rows "<bucket>-<stream id>": it
-- was never found, and credit a statement had counted paid invoices again (an invoice
-- shown paid while the balance owed it). The lookup is now by the credit's reference,
-- which no other entry carries (top-up ids starting "pay:" are refused). The only index
-- on the ledger is (account_id, occurred_at), which would read an account's every call
-- before the window's end for each payment with credit; this one holds the payments'
-- credits only, a small part of the ledger. Building it reads the ledger once, holding
-- the ledger writer's inserts back meanwhile (they wait in Redis, nothing is lost).
CREATE INDEX IF NOT EXISTS ledger_payment_credit_idx ON ledger (reference)
    WHERE reference LIKE 'pay:%';
