-- A plan's billing cycle is fixed once it has invoices: its cycle, day, weekday, length,
-- time zone and effective date. The worker finds the periods still due from them and
-- drafts read what earlier invoices billed by local dates in the plan's zone; changed
-- after invoicing, the periods no longer line up with the invoiced ones, and a review
-- saw every past period drafted again (cycle_day 1 -> 15), or a whole month billed
-- twice ahead (UTC -> America/St_Johns: the stored 1 Feb 00:00Z reads as 31 Jan).
-- Before the first invoice every setting may still change (0018 fixes the invoice
-- timing already once accounts use the plan).
CREATE FUNCTION billing_refuse_invoiced_cycle_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM invoices WHERE plan_id = OLD.plan_id) THEN
        RAISE EXCEPTION 'plan % has invoices: its billing cycle (cycle, day, weekday, days, time zone, effective date) cannot change', OLD.plan_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER plan_billing_cycle_fixed_once_invoiced
    BEFORE UPDATE OF cycle, cycle_day, cycle_weekday, every_days, time_zone, effective_date
    ON plan_billing FOR EACH ROW
    WHEN ((OLD.cycle, OLD.cycle_day, OLD.cycle_weekday, OLD.every_days, OLD.time_zone,
           OLD.effective_date)
          IS DISTINCT FROM (NEW.cycle, NEW.cycle_day, NEW.cycle_weekday, NEW.every_days,
                            NEW.time_zone, NEW.effective_date))
    EXECUTE FUNCTION billing_refuse_invoiced_cycle_change();
