-- Issue 14 items 5 and 6 (decision 0030): number sets (pools of DIDs and toll-free
-- numbers, assigned to plans with a selection priority, each number taken by at most
-- one account), and IVR settings (a plan's default, an account's override) with the
-- plan's voicemail server.

CREATE TABLE number_sets (
    id          TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_.-]{1,64}$'),
    kind        TEXT NOT NULL CHECK (kind IN ('did', 'toll_free')),
    name        TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A number is the primary key: it is in one set, once, and taken by at most one
-- account (account_id), so two accounts can never hold the same number.
CREATE TABLE number_set_numbers (
    number         TEXT PRIMARY KEY CHECK (number ~ '^[0-9]{1,32}$'),
    number_set_id  TEXT NOT NULL REFERENCES number_sets (id) ON DELETE CASCADE,
    -- On-net only: ocs's own number; calls to it rate in the plan's On-net zone.
    on_net         BOOLEAN NOT NULL DEFAULT false,
    account_id     TEXT REFERENCES accounts (id) ON DELETE SET NULL,
    assigned_on    DATE,
    CHECK ((account_id IS NULL) = (assigned_on IS NULL))
);
-- The free numbers of a set, in the order they are handed out.
CREATE INDEX number_set_numbers_free ON number_set_numbers (number_set_id, number)
    WHERE account_id IS NULL;
CREATE INDEX number_set_numbers_account ON number_set_numbers (account_id)
    WHERE account_id IS NOT NULL;

-- A set serves a plan's accounts; the highest priority set is drawn from first.
-- charge_id: the triggered charge its numbers trigger (NULL: the plan's charge named
-- after the set's kind, "Number Recurring Charge" or "Toll-Free Number Recurring Charge").
CREATE TABLE number_set_plans (
    number_set_id  TEXT NOT NULL REFERENCES number_sets (id) ON DELETE CASCADE,
    plan_id        TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    priority       INTEGER NOT NULL CHECK (priority BETWEEN 0 AND 1000000),
    charge_id      TEXT REFERENCES charges (id),
    PRIMARY KEY (number_set_id, plan_id)
);
CREATE INDEX number_set_plans_plan ON number_set_plans (plan_id, priority DESC);

-- A plan's IVR default: what to announce, in which language (NULL: the account's
-- prompt language), and its voicemail server.
CREATE TABLE plan_ivr (
    plan_id            TEXT PRIMARY KEY REFERENCES plans (id) ON DELETE CASCADE,
    announce           TEXT NOT NULL DEFAULT 'balance'
                       CHECK (announce IN ('none', 'balance', 'time', 'both')),
    language           TEXT CHECK (language ~ '^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$'),
    voicemail_enabled  BOOLEAN NOT NULL DEFAULT false,
    voicemail_server   TEXT NOT NULL DEFAULT '' CHECK (length(voicemail_server) <= 200),
    CHECK (NOT voicemail_enabled OR voicemail_server <> '')
);

-- An account's override of its plan's IVR default (NULL: the plan's).
CREATE TABLE account_ivr (
    account_id  TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    announce    TEXT CHECK (announce IN ('none', 'balance', 'time', 'both')),
    language    TEXT CHECK (language ~ '^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$')
);
