-- A bundle's flat fee line names the rule it bills, by its position in the bundle
-- (decision 0023, addendum 2026-12-07): an invoice knew that an earlier one had billed a
-- fee period by the line's period and the beginning of its description (the bundle's
-- name and the rule's description). An operator renaming the bundle or the rule made
-- every fee period already billed look unbilled, and the next invoice billed it again.
-- The line now says which rule it bills, as it says which subscription bundle (0052).
--
-- Only the fast part is here (a column, no default, no scan). The fee lines written
-- before are filled by the step registered for 0066 (ocs.db.migration_steps), in id
-- ranges: each gets the position of the flat fee rule of its subscription bundle's bundle
-- whose name and description its own description begins with (the longest, where one
-- rule's description begins another's). A line matching none (its bundle renamed before
-- this release), or whose longest match is the description of two rules or more (a
-- bundle's fee rules may share one), keeps none, and is matched by its description as
-- before.
ALTER TABLE invoice_lines ADD COLUMN bundle_rule_position INTEGER;

-- The lines of a posted or void invoice stay final (0027, 0031: this is 0031's function,
-- one change more allowed).
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
        -- The changes allowed to a final line: posting records its ledger entry once,
        -- after its money moved; 0066's backfill names a fee line's rule once, nothing
        -- else changed: only a flat fee line naming its subscription bundle, and only a
        -- flat fee rule of that bundle. A line moved into a final invoice is refused too.
        SELECT i.state INTO invoice_state FROM old_lines o JOIN invoices i ON i.id = o.invoice_id
            WHERE i.state <> 'draft' AND NOT EXISTS (
                SELECT 1 FROM new_lines n
                WHERE n.id = o.id AND o.moved_at IS NULL AND n.moved_at IS NOT NULL
                  AND o.ledger_entry IS NULL AND n.moves_money
                  AND (n.invoice_id, n.position, n.kind, n.amount, n.exact_amount,
                       n.description, n.quantity, n.period_start, n.period_end)
                      IS NOT DISTINCT FROM
                      (o.invoice_id, o.position, o.kind, o.amount, o.exact_amount,
                       o.description, o.quantity, o.period_start, o.period_end)
            ) AND NOT EXISTS (
                SELECT 1 FROM new_lines n
                WHERE n.id = o.id AND o.bundle_rule_position IS NULL
                  AND n.bundle_rule_position IS NOT NULL
                  AND to_jsonb(n) - 'bundle_rule_position' = to_jsonb(o) - 'bundle_rule_position'
                  AND o.kind = 'bundle_fee' AND o.subscription_bundle_id IS NOT NULL
                  AND EXISTS (
                      SELECT 1 FROM subscription_bundles sb
                      JOIN bundle_rules r ON r.bundle_id = sb.bundle_id
                      WHERE sb.id = o.subscription_bundle_id
                        AND r.position = n.bundle_rule_position AND r.kind = 'flat_fee')
            )
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
