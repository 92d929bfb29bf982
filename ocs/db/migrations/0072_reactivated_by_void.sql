-- A void's reactivation of an account dunning suspended says "void" (decision 0028,
-- addendum 2026-12-07): voiding the unpaid overdue invoices lifts the suspension at once,
-- and it was recorded as a payment's, so an operator looking for the payment that
-- reactivated the account found none. dunning_suspensions has a row per suspension, a
-- small table: the new check is validated here (every row passes: the old values stay).
ALTER TABLE dunning_suspensions DROP CONSTRAINT dunning_suspensions_reactivated_by_check;
ALTER TABLE dunning_suspensions ADD CONSTRAINT dunning_suspensions_reactivated_by_check
    CHECK (reactivated_by IN ('payment', 'void', 'run', 'operator'));
