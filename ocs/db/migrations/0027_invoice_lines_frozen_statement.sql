-- The lines of a posted (or void) invoice stay final, checked once per statement instead
-- of once per row: the row trigger of 0018 looked up the line's invoice for each of the
-- ~800,000 lines a 100,000-account run COPYs, and each line posting marks moved (17 us a
-- row, benchmarks/RESULTS.md "Billing (issue 12)"). These AFTER ... FOR EACH STATEMENT
-- triggers join the statement's transition table to invoices once; the same statements
-- are refused, with the same error (check_violation), and the statement is undone.
-- Deleting an invoice cascades to its lines after the invoice row is gone: nothing to
-- check then (the invoices' own trigger refuses deleting a posted one).
DROP TRIGGER IF EXISTS invoice_lines_frozen ON invoice_lines;
DROP FUNCTION IF EXISTS billing_line_frozen();

CREATE FUNCTION billing_lines_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    invoice_state TEXT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT i.state INTO invoice_state FROM new_lines n JOIN invoices i ON i.id = n.invoice_id
            WHERE i.state <> 'draft' LIMIT 1;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT i.state INTO invoice_state FROM old_lines o JOIN invoices i ON i.id = o.invoice_id
            WHERE i.state <> 'draft' LIMIT 1;
    ELSE
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
CREATE TRIGGER invoice_lines_frozen_insert AFTER INSERT ON invoice_lines
    REFERENCING NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION billing_lines_frozen();
-- The UPDATE trigger keeps the old name: an operator repairing a crashed posting
-- disables it by that name (tests/test_billing_posting.py does).
CREATE TRIGGER invoice_lines_frozen AFTER UPDATE ON invoice_lines
    REFERENCING OLD TABLE AS old_lines NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION billing_lines_frozen();
CREATE TRIGGER invoice_lines_frozen_delete AFTER DELETE ON invoice_lines
    REFERENCING OLD TABLE AS old_lines
    FOR EACH STATEMENT EXECUTE FUNCTION billing_lines_frozen();
