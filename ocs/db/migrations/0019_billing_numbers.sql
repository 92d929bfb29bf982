-- Billing (issue 12): the numbers assigned to each account, each triggering a charge
-- ("Number Recurring Charge", "Toll Free Number Recurring Charge"). Number sets assign
-- them in a later issue; billing reads this table. A triggered charge with a cadence
-- recurs per number and period, prorated like any recurring charge; without one it is
-- billed once, when the number is assigned.

-- A triggered charge may now carry a cadence; a one-time charge still has none and a
-- recurring charge still needs one.
ALTER TABLE charges DROP CONSTRAINT charges_check;
ALTER TABLE charges ADD CONSTRAINT charges_cadence_by_kind
    CHECK (CASE kind WHEN 'recurring' THEN cadence IS NOT NULL
                     WHEN 'one_time' THEN cadence IS NULL
                     ELSE true END);

-- end_date is the first day the number is no longer the account's (excluded).
CREATE TABLE account_numbers (
    id          BIGSERIAL PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    number      TEXT NOT NULL CHECK (number ~ '^[0-9A-Za-z+*#._-]{1,64}$'),
    charge_id   TEXT NOT NULL REFERENCES charges (id),
    start_date  DATE NOT NULL,
    end_date    DATE CHECK (end_date IS NULL OR end_date >= start_date),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX account_numbers_account_idx ON account_numbers (account_id);
-- A number triggers each charge once at a time (it may trigger several: a recurring
-- charge and a set-up fee).
CREATE UNIQUE INDEX account_numbers_once ON account_numbers (number, charge_id)
    WHERE end_date IS NULL;

-- The charge a number triggers is a triggered charge in the account's currency.
CREATE FUNCTION billing_number_charge_check() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM charges c JOIN accounts a ON a.id = NEW.account_id
                   WHERE c.id = NEW.charge_id AND c.kind = 'triggered'
                     AND c.currency = a.currency) THEN
        RAISE EXCEPTION 'number %: charge % is not a triggered charge in the account''s currency',
            NEW.number, NEW.charge_id USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER account_numbers_charge BEFORE INSERT OR UPDATE OF charge_id, account_id
    ON account_numbers FOR EACH ROW EXECUTE FUNCTION billing_number_charge_check();

-- The number a line bills (triggered charges), for tracing and for reconciling.
ALTER TABLE invoice_lines ADD COLUMN number TEXT;
