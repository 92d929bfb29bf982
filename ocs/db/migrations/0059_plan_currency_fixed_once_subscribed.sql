-- A plan's currency is fixed once an account subscribes to it, not only once an account
-- is on it (0018): a subscription bills the plan's fee and charges in the account's
-- currency, so a plan whose currency changed under its subscribers would bill 1000 JPY
-- as 1000.00 EUR. ocs.billing.store.subscribe refuses a plan in another currency than
-- the account's, holding the plan row (FOR SHARE) until its insert commits; this keeps
-- the currency from changing after. The invoice timing rule is unchanged (accounts only).
CREATE OR REPLACE FUNCTION billing_refuse_used_plan_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- Through jsonb: PL/pgSQL resolves OLD.<column> even in a CASE branch not taken.
    plan TEXT := to_jsonb(OLD) ->> CASE TG_TABLE_NAME WHEN 'plans' THEN 'id' ELSE 'plan_id' END;
    what TEXT := CASE TG_TABLE_NAME WHEN 'plans' THEN 'currency' ELSE 'invoice timing' END;
BEGIN
    IF EXISTS (SELECT 1 FROM accounts WHERE plan_id = plan) THEN
        RAISE EXCEPTION 'plan % is used by accounts: its % cannot change', plan, what
            USING ERRCODE = 'check_violation';
    END IF;
    IF TG_TABLE_NAME = 'plans' AND EXISTS (SELECT 1 FROM subscriptions WHERE plan_id = plan) THEN
        RAISE EXCEPTION 'plan % is subscribed to: its % cannot change', plan, what
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
