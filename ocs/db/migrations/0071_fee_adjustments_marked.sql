-- A flat fee line that adjusts a fee period says so in a column of its own (decision 0023,
-- addendum 2026-12-07): a take-back ("Credit of 3.21 on Pro: monthly fee 2026-02 taken
-- back: ...") or a take-back's reversal ("Take-back of 3.21 on Pro: monthly fee 2026-02
-- reversed: ..."). The runs told them from the period's other lines by those words in the
-- description; a description is cut at 200 characters, and a bundle or rule name long
-- enough (each may be 200) pushed the words past the cut: a take-back was read as a
-- charge, and a take-back whose credit was voided since was never reversed (the customer
-- paid it twice). A credit note's line reversing one is marked as the line it reverses.
--
-- Only the fast part is here (a column, no default, no scan; the CHECK NOT VALID). The
-- lines written before are marked by the step registered for 0071
-- (ocs.db.migration_steps), in id ranges, by what their descriptions say: a flat fee
-- line naming its subscription bundle and rule, charging, whose description begins
-- "Credit of " and either says "taken back: " or is cut at 200 characters (a fee charge
-- of the rule itself, its bundle named so, excepted), is a take-back; one crediting
-- whose description begins "Take-back of " is a reversal (the only other credits are
-- "Credit: ..."). Then the CHECK is validated.
ALTER TABLE invoice_lines ADD COLUMN adjustment TEXT;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_adjustment
    CHECK (adjustment IS NULL
           OR (adjustment IN ('take_back', 'take_back_reversal')
               AND kind IN ('bundle_fee', 'reversal')))
    NOT VALID;

-- The lines of a posted or void invoice stay final (0027, 0031, 0066: this is 0066's
-- function, one change more allowed).
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
        -- flat fee rule of that bundle; 0071's backfill marks a fee period's adjustment
        -- once, nothing else changed: a take-back on a flat fee line charging "Credit of
        -- ...", a reversal on one crediting "Take-back of ...", both naming their rule,
        -- and on a credit note's line what the line it reverses is marked. A line moved
        -- into a final invoice is refused too.
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
            ) AND NOT EXISTS (
                SELECT 1 FROM new_lines n
                WHERE n.id = o.id AND o.adjustment IS NULL AND n.adjustment IS NOT NULL
                  AND to_jsonb(n) - 'adjustment' = to_jsonb(o) - 'adjustment'
                  AND ((o.kind = 'bundle_fee' AND o.subscription_bundle_id IS NOT NULL
                        AND o.bundle_rule_position IS NOT NULL
                        AND n.adjustment = CASE
                            WHEN o.exact_amount > 0 AND o.description LIKE 'Credit of %'
                            THEN 'take_back'
                            WHEN o.exact_amount < 0 AND o.description LIKE 'Take-back of %'
                            THEN 'take_back_reversal' END)
                       OR (o.kind = 'reversal' AND n.adjustment = (
                               SELECT r.adjustment FROM invoice_lines r
                               WHERE r.id = o.reverses_line)))
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

-- A release from before 0071 may still be drafting or voiding while this one migrates (the
-- upgrade procedure keeps the old processes serving until the restart,
-- docs/operations.md): it writes take-backs, reversals and their credit notes' copies
-- unmarked, after the step above has run, and this release would read such a take-back
-- as a charge. The line a writer leaves unmarked is marked here by the step's rule; a
-- line written marked (this release's) is left as written. This release's own unmarked
-- lines stay unmarked: a fee charge of a bundle named "Credit of ..." begins with its
-- rule's text, which the rule leaves alone. To be dropped once no release before 0071
-- can run against the database.
CREATE FUNCTION billing_line_adjustment_named() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.kind = 'reversal' THEN
        NEW.adjustment := (SELECT r.adjustment FROM invoice_lines r
                           WHERE r.id = NEW.reverses_line);
    ELSIF NEW.exact_amount < 0 AND NEW.description LIKE 'Take-back of %' THEN
        NEW.adjustment := 'take_back_reversal';
    ELSIF NEW.exact_amount > 0
          AND (NEW.description LIKE 'Credit of % taken back: %'
               OR (length(NEW.description) = 200 AND NEW.description LIKE 'Credit of % on %'))
          AND NOT EXISTS (
              SELECT 1 FROM subscription_bundles sb
              JOIN bundles b ON b.id = sb.bundle_id
              JOIN bundle_rules r ON r.bundle_id = b.id
              WHERE sb.id = NEW.subscription_bundle_id
                AND r.position = NEW.bundle_rule_position
                AND starts_with(NEW.description,
                                left(b.name || ': ' || r.description || ' ', 200)))
    THEN
        NEW.adjustment := 'take_back';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER invoice_lines_adjustment_named BEFORE INSERT ON invoice_lines
    FOR EACH ROW
    WHEN (NEW.adjustment IS NULL
          AND ((NEW.kind = 'bundle_fee' AND NEW.subscription_bundle_id IS NOT NULL
                AND NEW.bundle_rule_position IS NOT NULL
                AND (NEW.description LIKE 'Credit of %'
                     OR NEW.description LIKE 'Take-back of %'))
               OR (NEW.kind = 'reversal' AND NEW.reverses_line IS NOT NULL
                   AND (NEW.description LIKE 'Reversal: Credit of %'
                        OR NEW.description LIKE 'Reversal: Take-back of %'))))
    EXECUTE FUNCTION billing_line_adjustment_named();
