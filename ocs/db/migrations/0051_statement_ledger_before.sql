-- The ledger part of an invoice's previous balance, kept apart from its invoice money
-- (decision 0020, amended: a statement follows the invoices posted before it).
--
-- previous_balance = ledger_before + the money of the account's earlier invoices (and
-- their credit notes), counted from their lines that move money, not from the ledger
-- rows those lines make: those reach PostgreSQL through the ledger writer after the
-- posting, so a period drafted before the one before it was posted (a worker catching
-- up: every due run drafted, then all posted) saw none of its money, and its statement
-- was frozen that way. ledger_before is read when the draft is written (the ledger up
-- to the statement window, invoice lines' entries aside); posting adds the earlier
-- invoices' money as it stands in its own transaction (statement.complete_statements).
--
-- NULL: an invoice posted before this migration (never read again). Drafts get theirs
-- here, from the ledger as it is, so that their posting completes them the same way.
ALTER TABLE invoices ADD COLUMN ledger_before BIGINT;

UPDATE invoices i SET ledger_before = COALESCE((
    SELECT sum(e.amount) FROM ledger e
    LEFT JOIN invoice_lines l
      ON l.id = CASE WHEN e.reference ~ '^inv:[0-9]{1,18}$'
                     THEN substr(e.reference, 5)::bigint END
    WHERE e.account_id = i.account_id AND e.occurred_at < i.window_start AND l.id IS NULL
), 0)
WHERE i.state = 'draft' AND i.kind = 'invoice' AND i.window_start IS NOT NULL;
