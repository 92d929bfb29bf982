-- Core schema: catalog v1 (plans, zones, prefixes, tariffs), accounts, CDRs, ledger.
-- Every amount is BIGINT micro-units (1e-6 of the currency); no float column holds money.

CREATE TABLE plans (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    currency           CHAR(3) NOT NULL,
    credit_limit       BIGINT NOT NULL DEFAULT 0 CHECK (credit_limit >= 0),
    min_balance        BIGINT NOT NULL DEFAULT 0 CHECK (min_balance >= 0),
    max_lines          INTEGER NOT NULL DEFAULT 1 CHECK (max_lines >= 1),
    max_call_duration  INTEGER NOT NULL DEFAULT 14400 CHECK (max_call_duration >= 1),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE zones (
    id    BIGSERIAL PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE
);

-- Prefixes of a plan's rate deck, each reaching one zone; longest match wins.
CREATE TABLE prefixes (
    plan_id  TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    prefix   TEXT NOT NULL CHECK (prefix ~ '^[0-9]{1,32}$'),
    zone_id  BIGINT NOT NULL REFERENCES zones (id),
    PRIMARY KEY (plan_id, prefix)
);

CREATE TABLE tariffs (
    plan_id           TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    zone_id           BIGINT NOT NULL REFERENCES zones (id),
    direction         TEXT NOT NULL DEFAULT 'outbound' CHECK (direction IN ('outbound', 'inbound')),
    connect_fee       BIGINT NOT NULL CHECK (connect_fee >= 0),
    first_block       INTEGER NOT NULL CHECK (first_block >= 0),
    increment         INTEGER NOT NULL CHECK (increment >= 1),
    price_per_minute  BIGINT NOT NULL CHECK (price_per_minute >= 0),
    PRIMARY KEY (plan_id, zone_id, direction)
);

CREATE TABLE accounts (
    id            TEXT PRIMARY KEY,
    plan_id       TEXT NOT NULL REFERENCES plans (id),
    currency      CHAR(3) NOT NULL,
    credit_limit  BIGINT NOT NULL CHECK (credit_limit >= 0),
    max_lines     INTEGER NOT NULL CHECK (max_lines >= 1),
    status        TEXT NOT NULL CHECK (status IN ('active', 'locked', 'suspended')),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per balance change, written from the Redis ledger stream.
-- entry_id is "<bucket>-<stream id>": inserting the same entry twice is a no-op.
CREATE TABLE ledger (
    entry_id       TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    kind           TEXT NOT NULL,
    amount         BIGINT NOT NULL,
    balance_after  BIGINT NOT NULL,
    reference      TEXT,
    occurred_at    TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_account_idx ON ledger (account_id, occurred_at);

-- One row per rated call, from the same stream entry as its ledger row.
CREATE TABLE cdrs (
    entry_id          TEXT PRIMARY KEY,
    call_id           TEXT NOT NULL,
    account_id        TEXT NOT NULL,
    plan_id           TEXT NOT NULL,
    zone              TEXT NOT NULL,
    destination       TEXT NOT NULL,
    caller            TEXT,
    currency          CHAR(3) NOT NULL,
    authorized_at     TIMESTAMPTZ NOT NULL,
    stopped_at        TIMESTAMPTZ NOT NULL,
    duration          INTEGER NOT NULL,
    billed_seconds    INTEGER NOT NULL,
    connect_fee       BIGINT NOT NULL,
    first_block       INTEGER NOT NULL,
    increment         INTEGER NOT NULL,
    price_per_minute  BIGINT NOT NULL,
    rated_cost        BIGINT NOT NULL,
    charged           BIGINT NOT NULL,
    recorded_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX cdrs_account_idx ON cdrs (account_id, stopped_at);
CREATE INDEX cdrs_call_idx ON cdrs (account_id, call_id);
