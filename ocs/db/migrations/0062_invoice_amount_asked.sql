-- What a posted invoice asks to be paid, stored once at posting (decision 0027, addendum
-- 2026-12-07): max(min(amount_due, new_charges), 0) rounded once to the currency's ISO 4217
-- minor unit, half away from zero, as lines are (decision 0019; ocs.billing.owed.asked).
-- The statement's figures are the ledger's exact micro-units, so an invoice asked
-- 12.344871 EUR and a payment of 12.34 (what a bank or a gateway pays) never settled it:
-- it stayed unpaid, was dunned for 0.004871 and its account suspended.
-- Payments, credit, dunning and the documents read this column (owed.asks_sql).
ALTER TABLE invoices ADD COLUMN amount_asked BIGINT CHECK (amount_asked >= 0);

-- Invoices posted before: the same rule, here in SQL once. The minor unit of every ISO 4217
-- currency whose exponent is not 2 (as the iso4217 package ships the table, decision 0019;
-- no invoice can be in a code without one). For x >= 0 and an even step (10^(6 - e)),
-- (x + step / 2) / step in integer division is x / step rounded half away from zero.
-- A void invoice keeps what it said (the transition trigger refuses any change) and asks
-- nothing: it stays NULL.
WITH minor (code, exponent) AS (VALUES
    ('BHD', 3), ('BIF', 0), ('CLF', 4), ('CLP', 0), ('DJF', 0), ('GNF', 0),
    ('IQD', 3), ('ISK', 0), ('JOD', 3), ('JPY', 0), ('KMF', 0), ('KRW', 0),
    ('KWD', 3), ('LYD', 3), ('OMR', 3), ('PYG', 0), ('RWF', 0), ('TND', 3),
    ('UGX', 0), ('UYI', 0), ('UYW', 4), ('VND', 0), ('VUV', 0), ('XAF', 0),
    ('XOF', 0), ('XPF', 0)
),
asks AS (
    SELECT i.id, GREATEST(LEAST(i.amount_due, i.new_charges), 0) AS exact,
           (10::numeric ^ (6 - COALESCE(m.exponent, 2)))::bigint AS step
    FROM invoices i LEFT JOIN minor m ON m.code = i.currency::text
    WHERE i.state = 'posted'
)
-- An invoice paid under the old rule (its exact ask) stays paid: were its ask rounded up
-- (12.345 to 12.35), dunning would pursue the half cent, and every later payment would
-- fill such remnants first. It asks at most what it was paid.
UPDATE invoices i SET amount_asked = CASE
        WHEN i.amount_paid >= a.exact
            THEN LEAST((a.exact + a.step / 2) / a.step * a.step, i.amount_paid)
        ELSE (a.exact + a.step / 2) / a.step * a.step
    END
FROM asks a WHERE i.id = a.id;

-- One that its payments now settle (12.34 paid on an ask of 12.344871) is paid now.
UPDATE invoices SET paid_at = now()
WHERE state = 'posted' AND paid_at IS NULL AND amount_asked > 0
    AND amount_paid >= amount_asked;

-- Every posted invoice (and credit note, which asks 0) has its figure.
ALTER TABLE invoices ADD CONSTRAINT invoices_posted_asks
    CHECK (state <> 'posted' OR amount_asked IS NOT NULL);

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
