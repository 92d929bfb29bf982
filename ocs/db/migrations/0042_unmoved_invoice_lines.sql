-- The invoice lines whose money has not moved yet, found without reading every line.
--
-- A posting (or a void) numbers its invoices in one transaction and moves their money
-- after it commits (ocs/billing/posting.py). A crash in between leaves lines of a
-- posted invoice or credit note unmoved; the billing worker's pass finds them
-- (posting.finish_unmoved) through this index, which holds only such lines: normally
-- none, and the few of a posting still under way.
CREATE INDEX IF NOT EXISTS invoice_lines_unmoved_idx ON invoice_lines (invoice_id)
    WHERE moves_money AND moved_at IS NULL;
