-- Real-time account policy: members and their lines, critical balance, funds
-- committed to recurring charges, usage counters (bundles of seconds) and
-- calling-card PIN batches. Plan columns are defaults copied to each new
-- account, which may override them.

ALTER TABLE plans ADD COLUMN max_members INTEGER CHECK (max_members >= 0);  -- NULL: no limit
ALTER TABLE plans ADD COLUMN member_max_lines INTEGER NOT NULL DEFAULT 0
    CHECK (member_max_lines >= 0);                                          -- 0: no limit
ALTER TABLE plans ADD COLUMN critical_balance BIGINT;                       -- NULL: none
ALTER TABLE plans ADD COLUMN recurring_fee BIGINT NOT NULL DEFAULT 0 CHECK (recurring_fee >= 0);
ALTER TABLE plans ADD COLUMN lock_prorated BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE plans ADD COLUMN language TEXT NOT NULL DEFAULT 'en';

ALTER TABLE accounts ADD COLUMN min_balance BIGINT NOT NULL DEFAULT 0 CHECK (min_balance >= 0);
ALTER TABLE accounts ADD COLUMN critical_balance BIGINT;
ALTER TABLE accounts ADD COLUMN committed BIGINT NOT NULL DEFAULT 0 CHECK (committed >= 0);
ALTER TABLE accounts ADD COLUMN max_members INTEGER CHECK (max_members >= 0);
ALTER TABLE accounts ADD COLUMN member_max_lines INTEGER NOT NULL DEFAULT 0
    CHECK (member_max_lines >= 0);
ALTER TABLE accounts ADD COLUMN expire_days INTEGER NOT NULL DEFAULT 0 CHECK (expire_days >= 0);
ALTER TABLE accounts ADD COLUMN language TEXT NOT NULL DEFAULT 'en';

-- Members of an account: SIP users, extensions, caller ids. A member identifies its
-- account and may have its own limit of simultaneous calls (NULL: the account's).
CREATE TABLE account_members (
    member      TEXT PRIMARY KEY CHECK (length(member) BETWEEN 1 AND 64),
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    max_lines   INTEGER CHECK (max_lines >= 1),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX account_members_account_idx ON account_members (account_id);

-- Usage counters: a bundle of seconds per cycle for some zones of a plan.
CREATE TABLE counters (
    id                    TEXT PRIMARY KEY,
    plan_id               TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    seconds               INTEGER NOT NULL CHECK (seconds >= 1),
    zones                 TEXT[] NOT NULL CHECK (cardinality(zones) >= 1),
    price_per_minute      BIGINT NOT NULL DEFAULT 0 CHECK (price_per_minute >= 0),
    increment             INTEGER NOT NULL DEFAULT 1 CHECK (increment >= 1),
    reject_on_threshold   BOOLEAN NOT NULL DEFAULT false,
    carryover             BOOLEAN NOT NULL DEFAULT false,
    mandatory             BOOLEAN NOT NULL DEFAULT true,
    recurring_fee         BIGINT NOT NULL DEFAULT 0 CHECK (recurring_fee >= 0),
    active                BOOLEAN NOT NULL DEFAULT true,
    taxes_follow_counter  BOOLEAN NOT NULL DEFAULT false,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Optional counters an account bought (mandatory ones apply to every account of the plan).
CREATE TABLE account_counters (
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    counter_id  TEXT NOT NULL REFERENCES counters (id) ON DELETE CASCADE,
    bought_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, counter_id)
);

-- Calling cards: a batch of PINs, each an account. Only a digest of each PIN is kept.
CREATE TABLE pin_batches (
    id          TEXT PRIMARY KEY,
    plan_id     TEXT NOT NULL REFERENCES plans (id),
    count       INTEGER NOT NULL CHECK (count >= 1),
    value       BIGINT NOT NULL CHECK (value >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE pins (
    pin_digest  TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL UNIQUE REFERENCES accounts (id) ON DELETE CASCADE,
    batch_id    TEXT NOT NULL REFERENCES pin_batches (id) ON DELETE CASCADE
);

-- A NAS's dynamic-authorization port (RFC 5176): where ocs sends a Disconnect-Request
-- to cut a call. NULL: the NAS takes none.
ALTER TABLE nas_clients ADD COLUMN coa_port INTEGER CHECK (coa_port BETWEEN 1 AND 65535);

-- A NAS's own translation set (JSON rules), used instead of the plan's for its calls.
ALTER TABLE nas_clients ADD COLUMN translation TEXT;

-- What a CDR's call used of the account: member, direction, the counter that paid
-- part of it and for how many seconds, and the carriers it was offered.
ALTER TABLE cdrs ADD COLUMN member TEXT;
ALTER TABLE cdrs ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound';
ALTER TABLE cdrs ADD COLUMN counter_id TEXT;
ALTER TABLE cdrs ADD COLUMN counter_seconds INTEGER NOT NULL DEFAULT 0;
