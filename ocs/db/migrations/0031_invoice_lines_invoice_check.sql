-- A line's invoice must exist, checked once per statement instead of once per row. The
-- foreign key's row trigger looked up (and KEY SHARE-locked) the invoice of each of the
-- ~800,000 lines a 100,000-account run COPYs, ~5.6 us a line (benchmarks/RESULTS.md,
-- "Billing drafts"). The statement triggers of 0027 already join a statement's new lines
-- to their invoices; they now also refuse a line whose invoice does not exist (the same
-- foreign_key_violation) and lock each invoice once, FOR KEY SHARE as the foreign key
-- did, so a concurrent delete of the invoice waits for the lines' transaction. Deleting
-- invoices deletes their lines (ON DELETE CASCADE before), by a statement trigger.
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_invoice_id_fkey;

CREATE OR REPLACE FUNCTION billing_lines_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    invoice_state TEXT;
    wanted BIGINT;
    found BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        WITH locked AS (
            SELECT i.id, i.state FROM invoices i
            WHERE i.id IN (SELECT invoice_id FROM new_lines) FOR KEY SHARE
        )
        SELECT count(*), max(state) FILTER (WHERE state <> 'draft')
            INTO found, invoice_state FROM locked;
        SELECT count(DISTINCT invoice_id) INTO wanted FROM new_lines;
        IF found < wanted THEN
            RAISE EXCEPTION 'an invoice line names an invoice that does not exist'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT i.state INTO invoice_state FROM old_lines o JOIN invoices i ON i.id = o.invoice_id
            WHERE i.state <> 'draft' LIMIT 1;
    ELSE
        -- A line moved to another invoice: that invoice must exist.
        IF EXISTS (SELECT 1 FROM new_lines n JOIN old_lines o ON o.id = n.id
                   WHERE n.invoice_id <> o.invoice_id
                     AND NOT EXISTS (SELECT 1 FROM invoices i WHERE i.id = n.invoice_id)) THEN
            RAISE EXCEPTION 'an invoice line names an invoice that does not exist'
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        -- The one change allowed to a final line: posting records its ledger entry once,
        -- after its money moved. A line moved into a final invoice is refused too.
        SELECT i.state INTO invoice_state FROM old_lines o JOIN invoices i ON i.id = o.invoice_id
            WHERE i.state <> 'draft' AND NOT EXISTS (
                SELECT 1 FROM new_lines n
                WHERE n.id = o.id AND o.moved_at IS NULL AND n.moved_at IS NOT NULL
                  AND o.ledger_entry IS NULL AND n.moves_money
                  AND (n.invoice_id, n.position, n.kind, n.amount, n.exact_amount,
                       n.description, n.quantity, n.period_start, n.period_end)
                      IS NOT DISTINCT FROM
                      (o.invoice_id, o.position, o.kind, o.amount, o.exact_amount,
                       o.description, o.quantity, o.period_start, o.period_end))
            LIMIT 1;
        IF invoice_state IS NULL THEN
            SELECT i.state INTO invoice_state
                FROM new_lines n JOIN invoices i ON i.id = n.invoice_id
                WHERE i.state <> 'draft'
                  AND NOT EXISTS (SELECT 1 FROM old_lines o
                                  WHERE o.id = n.id AND o.invoice_id = n.invoice_id)
                LIMIT 1;
        END IF;
    END IF;
    IF invoice_state IS NOT NULL THEN
        RAISE EXCEPTION 'the lines of a % invoice are final (% refused)', invoice_state, TG_OP
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END
$$;

-- The cascade the foreign key did: an invoice's lines go with it. (Posted and void
-- invoices are never deleted: invoices_transitions refuses it before any row goes.)
CREATE FUNCTION billing_invoice_lines_cascade() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM invoice_lines WHERE invoice_id IN (SELECT id FROM old_invoices);
    RETURN NULL;
END
$$;
CREATE TRIGGER invoices_lines_cascade AFTER DELETE ON invoices
    REFERENCING OLD TABLE AS old_invoices
    FOR EACH STATEMENT EXECUTE FUNCTION billing_invoice_lines_cascade();
