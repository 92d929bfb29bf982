-- When an end of service was recorded (decision 0046): a subscription's end or
-- cancellation, a subscription charge's end, a number's release. An end recorded after
-- the invoices that billed days beyond it were made is caught by the next invoice, which
-- credits those days; an end recorded before them needs nothing more (ocs/billing/
-- drafts.py compares this time with the account's newest earlier invoice's created_at).
-- So a run reads what older invoices billed only for the few items whose end is new.
--
-- Set by the database, not by each writer: store.set_status, store.end_charge,
-- store.release_number and any UPDATE an operator types all record it the same way.
-- now() is the writing transaction's start, as created_at is everywhere.
--
-- Nullable columns without a default: adding them rewrites nothing, and an end recorded
-- before this migration has none: it was recorded before any invoice made from now on,
-- which is what NULL reads as (GREATEST ignores it; a comparison with it is not true).
ALTER TABLE subscriptions ADD COLUMN end_recorded_at TIMESTAMPTZ;
ALTER TABLE subscription_charges ADD COLUMN end_recorded_at TIMESTAMPTZ;
ALTER TABLE account_numbers ADD COLUMN end_recorded_at TIMESTAMPTZ;

-- One function for the three tables: it only stamps the row; each trigger's WHEN says
-- which columns are its end. The transition and number checks (0018, 0019) are other
-- triggers on other columns and run beside these.
CREATE FUNCTION billing_end_recorded() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.end_recorded_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER subscriptions_end_recorded BEFORE UPDATE OF end_date, cancelled_on
    ON subscriptions FOR EACH ROW
    WHEN (NEW.end_date IS DISTINCT FROM OLD.end_date
          OR NEW.cancelled_on IS DISTINCT FROM OLD.cancelled_on)
    EXECUTE FUNCTION billing_end_recorded();
CREATE TRIGGER subscriptions_end_given BEFORE INSERT ON subscriptions FOR EACH ROW
    WHEN (NEW.end_date IS NOT NULL OR NEW.cancelled_on IS NOT NULL)
    EXECUTE FUNCTION billing_end_recorded();

CREATE TRIGGER subscription_charges_end_recorded BEFORE UPDATE OF end_date
    ON subscription_charges FOR EACH ROW
    WHEN (NEW.end_date IS DISTINCT FROM OLD.end_date)
    EXECUTE FUNCTION billing_end_recorded();
CREATE TRIGGER subscription_charges_end_given BEFORE INSERT ON subscription_charges
    FOR EACH ROW WHEN (NEW.end_date IS NOT NULL)
    EXECUTE FUNCTION billing_end_recorded();

CREATE TRIGGER account_numbers_end_recorded BEFORE UPDATE OF end_date
    ON account_numbers FOR EACH ROW
    WHEN (NEW.end_date IS DISTINCT FROM OLD.end_date)
    EXECUTE FUNCTION billing_end_recorded();
CREATE TRIGGER account_numbers_end_given BEFORE INSERT ON account_numbers
    FOR EACH ROW WHEN (NEW.end_date IS NOT NULL)
    EXECUTE FUNCTION billing_end_recorded();
