-- Bundles (issue 13, item 5; decision 0023): cycle rules over usage indicators on a
-- subscription. A bundle is defined once in the catalog (its indicators, its rules, its
-- commitment term and resiliation rule) and added to subscriptions, each from its own
-- day to its own end. Amounts are BIGINT micro-units in the bundle's currency; rates are
-- millionths of a percent, as taxes' (10% = 10000000).

-- A usage class for the filters; set by usage import (issue 15), NULL until then.
ALTER TABLE cdrs ADD COLUMN IF NOT EXISTS rate_type TEXT;

CREATE TABLE bundles (
    id                 TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    name               TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    currency           CHAR(3) NOT NULL,
    -- A commitment term from the subscription bundle's start, and what ending the
    -- subscription before the term's end costs: nothing, a fixed fee, or the fee
    -- times the months left (the month in progress counts as left).
    commitment_months  INTEGER CHECK (commitment_months BETWEEN 1 AND 120),
    resiliation        TEXT NOT NULL DEFAULT 'none'
                       CHECK (resiliation IN ('none', 'fixed', 'remaining_months')),
    resiliation_fee    BIGINT NOT NULL DEFAULT 0 CHECK (resiliation_fee >= 0),
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (resiliation = 'none' OR (commitment_months IS NOT NULL AND resiliation_fee > 0))
);

-- An indicator: one aggregate over the cycle's CDRs of the subscription's account.
--   measure duration:    calls' seconds (usage events left out);
--   measure consumption: usage events' metered quantity (MB, kWh; unit names it);
--   measure amount:      what the real-time path debited (calls and usage events);
-- function count counts the CDRs the measure and filters keep. Filters: zone, rate
-- type, service (a usage event's service, so not with duration).
CREATE TABLE bundle_indicators (
    bundle_id  TEXT NOT NULL REFERENCES bundles (id) ON DELETE CASCADE,
    name       TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    function   TEXT NOT NULL CHECK (function IN ('sum', 'avg', 'min', 'max', 'count')),
    measure    TEXT NOT NULL CHECK (measure IN ('duration', 'consumption', 'amount')),
    unit       TEXT NOT NULL DEFAULT '' CHECK (length(unit) <= 16),
    zone       TEXT,
    rate_type  TEXT,
    service    TEXT,
    PRIMARY KEY (bundle_id, name),
    CHECK (service IS NULL OR measure <> 'duration')
);

-- A bundle's rules, in order:
--   free:       the first `allowance` indicator units of the cycle are free (a credit of
--               what the real-time path debited for them); indicator sum or count;
--   discount:   a percentage off the indicator's usage amount (after free units) when
--               the indicator reaches a tier's threshold (bundle_discount_tiers; the
--               highest tier reached applies to the whole amount);
--   commitment: a minimum spend per cycle (`amount`, prorated by the bundle's days in
--               a partial cycle): the shortfall of the indicator (sum of amount) is charged;
--   flat_fee:   `amount` per period (one_shot, monthly, yearly, from the bundle's start),
--               billed upfront (the invoice billing advance charges of its start) or on
--               the due date (the invoice of the cycle holding its last day).
CREATE TABLE bundle_rules (
    bundle_id    TEXT NOT NULL REFERENCES bundles (id) ON DELETE CASCADE,
    position     INTEGER NOT NULL CHECK (position >= 1),
    kind         TEXT NOT NULL CHECK (kind IN ('free', 'discount', 'commitment', 'flat_fee')),
    description  TEXT NOT NULL CHECK (length(description) BETWEEN 1 AND 200),
    indicator    TEXT,
    allowance    BIGINT CHECK (allowance > 0),
    amount       BIGINT CHECK (amount > 0),
    periodicity  TEXT CHECK (periodicity IN ('one_shot', 'monthly', 'yearly')),
    timing       TEXT CHECK (timing IN ('upfront', 'due_date')),
    PRIMARY KEY (bundle_id, position),
    FOREIGN KEY (bundle_id, indicator) REFERENCES bundle_indicators (bundle_id, name),
    CHECK ((kind = 'flat_fee') = (indicator IS NULL)),
    CHECK ((kind = 'free') = (allowance IS NOT NULL)),
    CHECK ((kind IN ('commitment', 'flat_fee')) = (amount IS NOT NULL)),
    CHECK ((kind = 'flat_fee') = (periodicity IS NOT NULL AND timing IS NOT NULL))
);

CREATE TABLE bundle_discount_tiers (
    bundle_id  TEXT NOT NULL,
    position   INTEGER NOT NULL,
    threshold  BIGINT NOT NULL CHECK (threshold >= 0),  -- indicator units
    rate       BIGINT NOT NULL CHECK (rate BETWEEN 1 AND 100000000),  -- millionths of a %
    PRIMARY KEY (bundle_id, position, threshold),
    FOREIGN KEY (bundle_id, position) REFERENCES bundle_rules (bundle_id, position)
        ON DELETE CASCADE
);

-- A bundle on a subscription, from its own day (NULL: the subscription's) to its own
-- end (excluded; NULL: the subscription's).
CREATE TABLE subscription_bundles (
    id               BIGSERIAL PRIMARY KEY,
    subscription_id  BIGINT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    bundle_id        TEXT NOT NULL REFERENCES bundles (id),
    start_date       DATE,
    end_date         DATE CHECK (end_date IS NULL OR start_date IS NULL OR end_date >= start_date),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX subscription_bundles_sub_idx ON subscription_bundles (subscription_id);

-- Bundle lines (moves_money: posting credits or charges them; the real-time path debited
-- the usage): bundle_free, bundle_discount (credits), bundle_commitment, bundle_fee,
-- resiliation (charges). basis and rate (0023) show what each was computed from.
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_kind_check
    CHECK (kind IN ('recurring', 'proration', 'one_time', 'usage', 'reversal',
                    'usage_event', 'counter', 'counter_usage', 'tax', 'surcharge',
                    'bundle_free', 'bundle_discount', 'bundle_commitment', 'bundle_fee',
                    'resiliation'));
