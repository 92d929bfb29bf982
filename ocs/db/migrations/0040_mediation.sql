-- Usage mediation (issue 15, decision 0032): rate types, a plan's rates keyed by rate
-- type, each supplier's rate-type overrides, versioned usage import templates, the
-- imports themselves, and the CDR columns that name where an imported record came from.

-- Named classes of usage ("Canada On-Net", "Inbound Toll-free", "Data MB").
CREATE TABLE rate_types (
    name         TEXT PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 100
                                         AND name !~ '[[:cntrl:]]'),
    description  TEXT NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A plan's usage rate keyed by rate type (as ``tariffs`` keys one by zone): same price
-- shape, plus the rate's own name, currency (the plan's), tax code and G/L code.
CREATE TABLE rate_type_rates (
    plan_id               TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    rate_type             TEXT NOT NULL REFERENCES rate_types (name),
    name                  TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    currency              CHAR(3) NOT NULL,
    connect_fee           BIGINT NOT NULL DEFAULT 0 CHECK (connect_fee >= 0),
    first_block           INTEGER NOT NULL DEFAULT 0 CHECK (first_block >= 0),
    increment             INTEGER NOT NULL DEFAULT 1 CHECK (increment >= 1),
    price_per_minute      BIGINT NOT NULL CHECK (price_per_minute >= 0),
    per                   INTEGER NOT NULL DEFAULT 60 CHECK (per >= 1),
    tiers                 JSONB NOT NULL DEFAULT '[]',
    max_cost              BIGINT NOT NULL DEFAULT 0 CHECK (max_cost >= 0),
    cut_at_max_cost       BOOLEAN NOT NULL DEFAULT false,
    surcharge_percent_bp  INTEGER NOT NULL DEFAULT 0 CHECK (surcharge_percent_bp >= 0),
    surcharge_flat        BIGINT NOT NULL DEFAULT 0 CHECK (surcharge_flat >= 0),
    band_prices           JSONB NOT NULL DEFAULT '{}',
    tax_code              TEXT,
    gl_code               TEXT,
    PRIMARY KEY (plan_id, rate_type)
);

-- Each supplier's regrouping of granular rate types: from (any text a template
-- classifies to) -> to (a defined rate type).
CREATE TABLE rate_type_overrides (
    supplier        TEXT NOT NULL CHECK (supplier ~ '^[A-Za-z0-9._-]{1,64}$'),
    from_rate_type  TEXT NOT NULL CHECK (length(from_rate_type) BETWEEN 1 AND 100),
    to_rate_type    TEXT NOT NULL REFERENCES rate_types (name),
    PRIMARY KEY (supplier, from_rate_type)
);

-- Usage import templates, one per supplier or source, versioned: a change is a new
-- version; a CDR names the version that read it. ``definition`` is the template's JSON
-- (ocs.mediation.template).
CREATE TABLE usage_templates (
    name        TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    version     INTEGER NOT NULL CHECK (version >= 1),
    supplier    TEXT NOT NULL CHECK (supplier ~ '^[A-Za-z0-9._-]{1,64}$'),
    definition  JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- One import of one or more files through a template: its progress and outcome.
CREATE TABLE usage_imports (
    id              BIGSERIAL PRIMARY KEY,
    template        TEXT NOT NULL,
    template_version TEXT NOT NULL,
    supplier        TEXT NOT NULL,
    files           TEXT[] NOT NULL,
    mode            TEXT NOT NULL CHECK (mode IN ('good_rows', 'all_or_nothing')),
    state           TEXT NOT NULL DEFAULT 'running'
                    CHECK (state IN ('running', 'done', 'refused', 'failed')),
    rows_read       BIGINT NOT NULL DEFAULT 0,
    rows_filtered   BIGINT NOT NULL DEFAULT 0,
    rows_charged    BIGINT NOT NULL DEFAULT 0,
    rows_repeated   BIGINT NOT NULL DEFAULT 0,
    rows_rejected   BIGINT NOT NULL DEFAULT 0,
    amounts         JSONB NOT NULL DEFAULT '{}',  -- currency -> micro-units charged
    rejects_path    TEXT,
    report_path     TEXT,
    error           TEXT,
    started_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ
);

-- Where an imported record came from. NULL for the real-time path's own calls.
ALTER TABLE cdrs ADD COLUMN supplier TEXT;
ALTER TABLE cdrs ADD COLUMN record_id TEXT;
ALTER TABLE cdrs ADD COLUMN usage_template TEXT;
-- A supplier's record is debited once: the import looks its records up here first.
CREATE INDEX cdrs_supplier_record_idx ON cdrs (supplier, record_id) WHERE supplier IS NOT NULL;
