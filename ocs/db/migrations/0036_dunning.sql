-- Issue 14: dunning. After an invoice's due date (invoice_date + plan_billing.grace_days)
-- a plan's accounts get up to max_notices notices, notice_interval_days apart, then are
-- suspended; paying in full reactivates them (ocs/billing/dunning.py, decision 0028).
--
-- NULL settings: the plan does no dunning (opt-in: invoices posted before payments were
-- recorded all read as unpaid, and must not suspend every account on upgrade).
ALTER TABLE plan_billing
    ADD COLUMN max_notices INTEGER CHECK (max_notices BETWEEN 0 AND 52),
    ADD COLUMN notice_interval_days INTEGER CHECK (notice_interval_days BETWEEN 1 AND 366),
    ADD CONSTRAINT plan_billing_dunning_whole
        CHECK ((max_notices IS NULL) = (notice_interval_days IS NULL));

-- The steps taken for an unpaid invoice: its notices 1..n, then its suspension. The
-- unique key makes each step happen once, however many runs (and workers) see it due.
CREATE TABLE dunning_steps (
    id          BIGSERIAL PRIMARY KEY,
    invoice_id  BIGINT NOT NULL REFERENCES invoices (id),
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    step        TEXT NOT NULL CHECK (step IN ('notice', 'suspension')),
    notice      INTEGER NOT NULL DEFAULT 0,          -- 1..n for a notice; 0 for the suspension
    due_at      TIMESTAMPTZ NOT NULL,                -- when the schedule made it due
    taken_at    TIMESTAMPTZ NOT NULL,                -- the run's clock when it was taken
    -- notice: 'sent'; suspension: 'suspended', or 'already_suspended' (by an operator or
    -- by another invoice's suspension: nothing more to do).
    outcome     TEXT NOT NULL CHECK (outcome IN ('sent', 'suspended', 'already_suspended')),
    CHECK ((step = 'notice') = (notice >= 1)),
    CHECK (step = 'notice' OR notice = 0),
    UNIQUE (invoice_id, step, notice)
);
CREATE INDEX dunning_steps_account_idx ON dunning_steps (account_id, taken_at);

-- An account suspended by dunning, and what to put back when it has paid. Only an open
-- row (reactivated_at NULL) lets dunning reactivate the account: an operator's
-- suspension has none and stays.
CREATE TABLE dunning_suspensions (
    id                BIGSERIAL PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    invoice_id        BIGINT NOT NULL UNIQUE REFERENCES invoices (id),
    previous_status   TEXT NOT NULL,
    previous_lock     TEXT NOT NULL DEFAULT '',
    subscription_ids  BIGINT[] NOT NULL DEFAULT '{}',  -- the ones dunning suspended
    suspended_at      TIMESTAMPTZ NOT NULL,
    reactivated_at    TIMESTAMPTZ,
    -- payment: reactivate_paid (a payment); run: a dunning run found nothing overdue;
    -- operator: the account's status had been changed by hand meanwhile (left as is).
    reactivated_by    TEXT CHECK (reactivated_by IN ('payment', 'run', 'operator')),
    CHECK ((reactivated_at IS NULL) = (reactivated_by IS NULL))
);
CREATE UNIQUE INDEX dunning_suspensions_open_idx
    ON dunning_suspensions (account_id) WHERE reactivated_at IS NULL;
