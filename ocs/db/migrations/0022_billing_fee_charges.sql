-- Billing (issue 12, item 1): the existing plan and counter recurring fees become
-- charges of the billing model, not a second mechanism (decision 0020).
--
-- plans.recurring_fee > 0 is the plan's custom charge "<plan> monthly fee": recurring,
-- monthly, billed in advance, origin 'plan_fee'; invoices bill it like any plan charge
-- and posting moves its money. counters.recurring_fee > 0 is a charge of kind 'counter'
-- (origin 'counter_fee'): the real-time path charges it (on purchase and at each
-- counter cycle, ledger kind "fee", reference counter:<id>:...), so an invoice only
-- shows those ledger entries as 'counter' lines that move no money. Triggers keep the
-- charges in step with the fees: set, changed (amount, name, currency), or removed (0).

ALTER TABLE charges DROP CONSTRAINT charges_kind_check;
ALTER TABLE charges ADD CONSTRAINT charges_kind_check
    CHECK (kind IN ('recurring', 'one_time', 'triggered', 'counter'));
ALTER TABLE charges ADD COLUMN origin TEXT CHECK (origin IN ('plan_fee', 'counter_fee'));
ALTER TABLE charges ADD COLUMN counter_id TEXT UNIQUE REFERENCES counters (id) ON DELETE CASCADE;
ALTER TABLE charges ADD CONSTRAINT charges_counter_kind
    CHECK ((kind = 'counter') = (counter_id IS NOT NULL)
           AND (kind = 'counter') = (origin IS NOT DISTINCT FROM 'counter_fee')
           AND (origin IS DISTINCT FROM 'plan_fee' OR (plan_id IS NOT NULL AND kind = 'recurring')));
-- One fee charge per plan.
CREATE UNIQUE INDEX charges_one_plan_fee ON charges (plan_id) WHERE origin = 'plan_fee';

-- A charge id from a prefix and a plan or counter id: the id itself when it fits the
-- charge id rule, else its md5.
CREATE FUNCTION billing_fee_charge_id(prefix TEXT, source TEXT) RETURNS TEXT
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN prefix || source ~ '^[A-Za-z0-9._-]{1,64}$' THEN prefix || source
                ELSE prefix || md5(source) END
$$;

CREATE FUNCTION billing_plan_fee_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.recurring_fee > 0 THEN
        INSERT INTO charges (id, name, product_code, currency, amount, kind, cadence, timing,
                             plan_id, origin)
        VALUES (billing_fee_charge_id('plan-fee.', NEW.id),
                left(COALESCE(NULLIF(NEW.name, ''), NEW.id) || ' monthly fee', 200),
                'PLAN-FEE', NEW.currency, NEW.recurring_fee, 'recurring', 'monthly', 'advance',
                NEW.id, 'plan_fee')
        ON CONFLICT (plan_id) WHERE origin = 'plan_fee' DO UPDATE
            SET amount = EXCLUDED.amount, name = EXCLUDED.name, currency = EXCLUDED.currency;
    ELSE
        DELETE FROM charges WHERE plan_id = NEW.id AND origin = 'plan_fee';
    END IF;
    -- A counter's fee is in its plan's currency (changeable only while no account uses it).
    UPDATE charges SET currency = NEW.currency
        WHERE plan_id = NEW.id AND origin = 'counter_fee' AND currency <> NEW.currency;
    RETURN NULL;
END
$$;
CREATE TRIGGER plans_fee_charge AFTER INSERT OR UPDATE OF recurring_fee, currency, name
    ON plans FOR EACH ROW EXECUTE FUNCTION billing_plan_fee_sync();

CREATE FUNCTION billing_counter_fee_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.recurring_fee > 0 THEN
        INSERT INTO charges (id, name, product_code, currency, amount, kind, timing, plan_id,
                             origin, counter_id)
        SELECT billing_fee_charge_id('counter.', NEW.id), left('Bundle ' || NEW.id, 200),
               'COUNTER', p.currency, NEW.recurring_fee, 'counter', 'advance', NEW.plan_id,
               'counter_fee', NEW.id
        FROM plans p WHERE p.id = NEW.plan_id
        ON CONFLICT (counter_id) DO UPDATE
            SET amount = EXCLUDED.amount, currency = EXCLUDED.currency,
                plan_id = EXCLUDED.plan_id;
    ELSE
        DELETE FROM charges WHERE counter_id = NEW.id;
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER counters_fee_charge AFTER INSERT OR UPDATE OF recurring_fee, plan_id
    ON counters FOR EACH ROW EXECUTE FUNCTION billing_counter_fee_sync();

-- The fees set before this migration.
UPDATE plans SET recurring_fee = recurring_fee WHERE recurring_fee > 0;
UPDATE counters SET recurring_fee = recurring_fee WHERE recurring_fee > 0;
