-- Billing (issue 12): charges, plan billing settings, subscriptions, invoice runs and
-- their chunks, invoices, their lines and the gapless invoice number sequences.
-- Amounts are BIGINT micro-units; an invoice line's amount is already rounded once to
-- its currency's ISO 4217 minor unit (decision 0019), and totals are sums of lines.
-- Periods are half-open [start, end) instants cut at local midnights of the plan's zone.
--
-- The database, not only the code, holds the invoice rules: one invoice per account
-- and period (a unique index), the state machine draft -> posted -> void (a trigger),
-- posted invoices and their lines frozen (triggers), a number on every posted invoice
-- and none on a draft (a check).

-- A charge: a fee of a product. plan_id set: a plan's custom charge, which applies to
-- every account subscribed to that plan; NULL: a catalog charge a subscription adds.
CREATE TABLE charges (
    id            TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    name          TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    product_code  TEXT NOT NULL CHECK (length(product_code) BETWEEN 1 AND 64),
    currency      CHAR(3) NOT NULL,
    amount        BIGINT NOT NULL CHECK (amount >= 0),
    kind          TEXT NOT NULL CHECK (kind IN ('recurring', 'one_time', 'triggered')),
    cadence       TEXT CHECK (cadence IN ('weekly', 'monthly', 'quarterly', 'yearly', 'days')),
    every_days    INTEGER CHECK (every_days BETWEEN 1 AND 3660),
    timing        TEXT NOT NULL DEFAULT 'arrears' CHECK (timing IN ('advance', 'arrears')),
    tax_code      TEXT NOT NULL DEFAULT '',
    gl_code       TEXT NOT NULL DEFAULT '',
    plan_id       TEXT REFERENCES plans (id) ON DELETE CASCADE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A recurring charge has a cadence, the others none; "days" needs its N.
    CHECK ((kind = 'recurring') = (cadence IS NOT NULL)),
    CHECK ((cadence = 'days') = (every_days IS NOT NULL)),  -- NULL (no cadence) passes
    CHECK (cadence IS NOT NULL OR every_days IS NULL)
);
CREATE INDEX charges_plan_idx ON charges (plan_id) WHERE plan_id IS NOT NULL;

-- How a plan is invoiced (seed: "How to Create Subscription Plans").
CREATE TABLE plan_billing (
    plan_id          TEXT PRIMARY KEY REFERENCES plans (id) ON DELETE CASCADE,
    cycle            TEXT NOT NULL CHECK (cycle IN ('fixed_period', 'fixed_date', 'week',
                                                     'subscription_date', 'manual', 'on_demand')),
    cycle_day        INTEGER CHECK (cycle_day BETWEEN 1 AND 31),
    cycle_weekday    INTEGER CHECK (cycle_weekday BETWEEN 0 AND 6),   -- 0 Monday .. 6 Sunday
    every_days       INTEGER CHECK (every_days BETWEEN 1 AND 3660),
    effective_date   DATE NOT NULL,
    time_zone        TEXT NOT NULL DEFAULT 'UTC',
    grace_days       INTEGER NOT NULL DEFAULT 0 CHECK (grace_days BETWEEN 0 AND 366),
    invoice_message  TEXT NOT NULL DEFAULT '',
    invoice_timing   TEXT NOT NULL DEFAULT 'end_of_cycle'
                     CHECK (invoice_timing IN ('end_of_cycle', 'start_of_cycle')),
    issuer           TEXT NOT NULL DEFAULT 'INV' CHECK (issuer ~ '^[A-Z0-9]{1,16}$'),
    CONSTRAINT plan_billing_advance_needs_a_cycle
        CHECK (invoice_timing = 'end_of_cycle' OR cycle NOT IN ('manual', 'on_demand')),
    CHECK (cycle <> 'fixed_period' OR every_days IS NOT NULL),
    CHECK (cycle <> 'fixed_date' OR cycle_day IS NOT NULL),
    CHECK (cycle <> 'week' OR cycle_weekday IS NOT NULL)
);

-- Currency and invoice timing are fixed once an account uses the plan: its balance,
-- ledger and invoices are in that currency, its invoices follow that timing.
CREATE FUNCTION billing_refuse_used_plan_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    -- Through jsonb: PL/pgSQL resolves OLD.<column> even in a CASE branch not taken.
    plan TEXT := to_jsonb(OLD) ->> CASE TG_TABLE_NAME WHEN 'plans' THEN 'id' ELSE 'plan_id' END;
    what TEXT := CASE TG_TABLE_NAME WHEN 'plans' THEN 'currency' ELSE 'invoice timing' END;
BEGIN
    IF EXISTS (SELECT 1 FROM accounts WHERE plan_id = plan) THEN
        RAISE EXCEPTION 'plan % is used by accounts: its % cannot change', plan, what
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER plans_currency_fixed_once_used
    BEFORE UPDATE OF currency ON plans
    FOR EACH ROW WHEN (OLD.currency IS DISTINCT FROM NEW.currency)
    EXECUTE FUNCTION billing_refuse_used_plan_change();
CREATE TRIGGER plan_billing_timing_fixed_once_used
    BEFORE UPDATE OF invoice_timing ON plan_billing
    FOR EACH ROW WHEN (OLD.invoice_timing IS DISTINCT FROM NEW.invoice_timing)
    EXECUTE FUNCTION billing_refuse_used_plan_change();

-- An account's subscription: its plan (one per account, as accounts.plan_id) or a
-- product, with the charges it adds. end_date is the first day without service.
CREATE TABLE subscriptions (
    id               BIGSERIAL PRIMARY KEY,
    account_id       TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    plan_id          TEXT NOT NULL REFERENCES plans (id),
    category         TEXT NOT NULL DEFAULT '',
    service          TEXT NOT NULL DEFAULT '',
    billing_address  TEXT NOT NULL DEFAULT '',
    salesperson      TEXT NOT NULL DEFAULT '',
    start_date       DATE NOT NULL,
    end_date         DATE CHECK (end_date IS NULL OR end_date >= start_date),
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'active', 'suspended', 'cancelled')),
    cancelled_on     DATE,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((status = 'cancelled') = (cancelled_on IS NOT NULL))
);
CREATE INDEX subscriptions_account_idx ON subscriptions (account_id);

-- pending -> active -> suspended -> active ...; any but cancelled -> cancelled.
CREATE FUNCTION billing_subscription_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = OLD.status
       OR (OLD.status = 'pending' AND NEW.status IN ('active', 'cancelled'))
       OR (OLD.status = 'active' AND NEW.status IN ('suspended', 'cancelled'))
       OR (OLD.status = 'suspended' AND NEW.status IN ('active', 'cancelled')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'subscription %: % -> % is not allowed', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER subscriptions_transitions BEFORE UPDATE OF status ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION billing_subscription_transition();

-- The charges a subscription adds, each from its own day (NULL: the subscription's)
-- to its own end (excluded; NULL: the subscription's). A mid-cycle change ends one
-- row and starts another on the same day; proration follows from the dates.
CREATE TABLE subscription_charges (
    id               BIGSERIAL PRIMARY KEY,
    subscription_id  BIGINT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    charge_id        TEXT NOT NULL REFERENCES charges (id),
    quantity         INTEGER NOT NULL DEFAULT 1 CHECK (quantity >= 1),
    start_date       DATE,
    end_date         DATE CHECK (end_date IS NULL OR start_date IS NULL OR end_date >= start_date),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX subscription_charges_sub_idx ON subscription_charges (subscription_id);

-- An invoice run: a period of the plans' cycles, made into drafts by chunks.
CREATE TABLE invoice_runs (
    id               BIGSERIAL PRIMARY KEY,
    period           TEXT NOT NULL,
    plan_id          TEXT REFERENCES plans (id),          -- NULL: every plan with a cycle
    invoice_date     DATE NOT NULL,
    charge_cutoff    TIMESTAMPTZ,                          -- NULL: every charge
    usage_cutoff     TIMESTAMPTZ,                          -- NULL: the period's end
    calculate_taxes  BOOLEAN NOT NULL DEFAULT true,
    state            TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done')),
    accounts_total   INTEGER NOT NULL DEFAULT 0 CHECK (accounts_total >= 0),
    accounts_done    INTEGER NOT NULL DEFAULT 0 CHECK (accounts_done >= 0),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ,
    CHECK (accounts_done <= accounts_total)
);

-- A run's work, in chunks of accounts sharing one plan and one period. A worker
-- claims one with SELECT ... FOR UPDATE SKIP LOCKED and a lease; a chunk whose lease
-- ran out (its worker died) is claimed again. Done in the transaction that wrote its
-- drafts, so a crash leaves it either done with its drafts or not done.
CREATE TABLE invoice_run_chunks (
    run_id        BIGINT NOT NULL REFERENCES invoice_runs (id) ON DELETE CASCADE,
    chunk         INTEGER NOT NULL,
    plan_id       TEXT NOT NULL,
    cycle_anchor  DATE,               -- subscription-date cycle: the accounts' start date
    period_start  TIMESTAMPTZ NOT NULL,
    period_end    TIMESTAMPTZ NOT NULL,
    account_ids   TEXT[] NOT NULL,
    lease_owner   TEXT,
    lease_until   TIMESTAMPTZ,
    attempts      INTEGER NOT NULL DEFAULT 0,
    done_at       TIMESTAMPTZ,
    PRIMARY KEY (run_id, chunk),
    CHECK (period_start < period_end)
);
CREATE INDEX invoice_run_chunks_todo_idx ON invoice_run_chunks (run_id, chunk)
    WHERE done_at IS NULL;

CREATE TABLE invoices (
    id                BIGSERIAL PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES accounts (id),
    plan_id           TEXT NOT NULL,
    kind              TEXT NOT NULL DEFAULT 'invoice' CHECK (kind IN ('invoice', 'credit_note')),
    state             TEXT NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'posted', 'void')),
    period_start      TIMESTAMPTZ NOT NULL,
    period_end        TIMESTAMPTZ NOT NULL,
    period_label      TEXT NOT NULL,
    currency          CHAR(3) NOT NULL,
    invoice_date      DATE NOT NULL,
    issuer            TEXT NOT NULL DEFAULT 'INV',
    number            TEXT UNIQUE,
    subtotal          BIGINT NOT NULL DEFAULT 0,
    tax_total         BIGINT NOT NULL DEFAULT 0,
    total             BIGINT NOT NULL DEFAULT 0,
    taxes_calculated  BOOLEAN NOT NULL DEFAULT false,
    message           TEXT NOT NULL DEFAULT '',
    run_id            BIGINT REFERENCES invoice_runs (id) ON DELETE SET NULL,
    voids_invoice_id  BIGINT UNIQUE REFERENCES invoices (id),
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    posted_at         TIMESTAMPTZ,
    voided_at         TIMESTAMPTZ,
    CHECK (period_start < period_end),
    CHECK ((state = 'draft') = (number IS NULL)),
    CHECK ((kind = 'credit_note') = (voids_invoice_id IS NOT NULL)),
    CHECK (kind = 'invoice' OR state <> 'void'),
    CHECK (total = subtotal + tax_total)
);
-- At most one invoice per account and period (credit notes share their invoice's).
CREATE UNIQUE INDEX invoices_one_per_period ON invoices (account_id, period_start)
    WHERE kind = 'invoice';
CREATE INDEX invoices_run_idx ON invoices (run_id);

CREATE TABLE invoice_lines (
    id              BIGSERIAL PRIMARY KEY,
    invoice_id      BIGINT NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position        INTEGER NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('recurring', 'proration', 'one_time',
                                                  'usage', 'reversal')),
    description     TEXT NOT NULL,
    period_start    TIMESTAMPTZ,
    period_end      TIMESTAMPTZ,
    quantity        BIGINT NOT NULL DEFAULT 1,
    amount          BIGINT NOT NULL,      -- rounded once to the currency's minor unit
    exact_amount    BIGINT NOT NULL,      -- before that rounding, for checking by hand
    -- Posting moves this line's money through the ledger (a charge); false: the real-time
    -- path already debited it (usage), the line only reports it.
    moves_money     BOOLEAN NOT NULL,
    -- Traceability: the charge and subscription charge it bills; for usage, the zone,
    -- direction and the CDRs' first and last entry ids (the CDRs are those of the
    -- account, zone and direction stopped in [period_start, period_end)).
    charge_id       TEXT,
    item_id         BIGINT,
    zone            TEXT,
    direction       TEXT,
    calls           INTEGER,
    seconds         BIGINT,
    billed_seconds  BIGINT,
    first_cdr       TEXT,
    last_cdr        TEXT,
    -- The ledger: reference "inv:<line id>"; once the money moved, when, and its stream
    -- entry (none for a zero line, which moves nothing).
    ledger_entry    TEXT,
    moved_at        TIMESTAMPTZ,
    CHECK (moved_at IS NOT NULL OR ledger_entry IS NULL),
    reverses_line   BIGINT REFERENCES invoice_lines (id),
    UNIQUE (invoice_id, position)
);
-- A one-time charge is billed once: the line that bills a subscription charge.
CREATE INDEX invoice_lines_item_idx ON invoice_lines (item_id) WHERE item_id IS NOT NULL;

-- Gapless numbers per issuer and year, taken under this row's lock at posting.
CREATE TABLE invoice_sequences (
    issuer       TEXT NOT NULL,
    year         INTEGER NOT NULL CHECK (year BETWEEN 2000 AND 9999),
    next_number  BIGINT NOT NULL DEFAULT 1 CHECK (next_number >= 1),
    PRIMARY KEY (issuer, year)
);

-- The invoice state machine: draft -> posted -> void, nothing else; a posted or void
-- invoice changes only by that one step, and only a draft may be deleted.
CREATE FUNCTION billing_invoice_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.state <> 'draft' THEN
            RAISE EXCEPTION 'invoice %: a % invoice cannot be deleted', OLD.id, OLD.state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.state = 'draft' THEN
        IF NEW.state NOT IN ('draft', 'posted') THEN
            RAISE EXCEPTION 'invoice %: draft -> % is not allowed', OLD.id, NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF OLD.state = 'posted' AND NEW.state = 'void' AND OLD.kind = 'invoice'
       AND (NEW.id, NEW.account_id, NEW.kind, NEW.period_start, NEW.period_end, NEW.currency,
            NEW.number, NEW.subtotal, NEW.tax_total, NEW.total, NEW.invoice_date, NEW.posted_at)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.account_id, OLD.kind, OLD.period_start, OLD.period_end, OLD.currency,
            OLD.number, OLD.subtotal, OLD.tax_total, OLD.total, OLD.invoice_date, OLD.posted_at)
    THEN
        RETURN NEW;
    END IF;
    IF OLD.state = 'posted' AND NEW.state = 'posted' AND NEW.number = OLD.number
       AND NEW.total = OLD.total AND NEW.subtotal = OLD.subtotal
       AND NEW.tax_total = OLD.tax_total AND NEW.account_id = OLD.account_id
       AND NEW.period_start = OLD.period_start AND NEW.voided_at IS NULL THEN
        RETURN NEW;  -- no change to what the invoice says (e.g. run_id set null)
    END IF;
    RAISE EXCEPTION 'invoice %: % -> % is not allowed (a posted invoice is final; void it)',
        OLD.id, OLD.state, NEW.state USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER invoices_transitions BEFORE UPDATE OR DELETE ON invoices
    FOR EACH ROW EXECUTE FUNCTION billing_invoice_transition();

-- A posted invoice's lines are final: none added, removed or changed, except the one
-- step posting takes after the money moved, recording its ledger entry once.
CREATE FUNCTION billing_line_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    invoice_state TEXT;
BEGIN
    SELECT state INTO invoice_state FROM invoices
        WHERE id = CASE TG_OP WHEN 'INSERT' THEN NEW.invoice_id ELSE OLD.invoice_id END;
    IF invoice_state IS NULL OR invoice_state = 'draft' THEN
        -- Deleting a draft cascades to its lines; a draft's lines are recomputed freely.
        RETURN CASE TG_OP WHEN 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.moved_at IS NULL AND NEW.moved_at IS NOT NULL
       AND OLD.ledger_entry IS NULL AND NEW.moves_money
       AND (NEW.id, NEW.invoice_id, NEW.position, NEW.kind, NEW.amount, NEW.exact_amount,
            NEW.description, NEW.quantity, NEW.period_start, NEW.period_end)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.invoice_id, OLD.position, OLD.kind, OLD.amount, OLD.exact_amount,
            OLD.description, OLD.quantity, OLD.period_start, OLD.period_end) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the lines of a % invoice are final (% refused)', invoice_state, TG_OP
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER invoice_lines_frozen BEFORE INSERT OR UPDATE OR DELETE ON invoice_lines
    FOR EACH ROW EXECUTE FUNCTION billing_line_frozen();
