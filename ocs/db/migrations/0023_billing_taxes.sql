-- Taxes and surcharges on invoices (issue 13, decision 0022).
--
-- A tax is defined once (code, name, exact rate, jurisdiction level, currency, validity);
-- a plan assigns it to a tax code (the code charges and zones carry), a zone or a
-- charge, and only a tax in the plan's own currency (a composite foreign key). Rates
-- are integers of millionths of a percent: 20% = 20000000, 8.875% = 8875000; never
-- a float. Tax lines are computed per tax code (decision 0022), written as invoice
-- lines of kind 'tax' that move money at posting.

CREATE TABLE taxes (
    code         TEXT PRIMARY KEY CHECK (code ~ '^[A-Za-z0-9._-]{1,64}$'),
    name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    rate         BIGINT NOT NULL CHECK (rate BETWEEN 0 AND 100000000000),  -- millionths of a %
    level        TEXT NOT NULL CHECK (level IN ('federal', 'state', 'county', 'city', 'other')),
    currency     CHAR(3) NOT NULL,
    valid_from   DATE NOT NULL,
    valid_until  DATE CHECK (valid_until IS NULL OR valid_until > valid_from),  -- excluded
    -- A compound tax is a tax on a tax: its basis adds the non-compound taxes of its lines.
    compound     BOOLEAN NOT NULL DEFAULT false,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (code, currency)
);

-- A product's tax code: a charge whose own tax_code is empty takes its product's.
CREATE TABLE product_tax_codes (
    product_code  TEXT PRIMARY KEY,
    tax_code      TEXT NOT NULL CHECK (length(tax_code) BETWEEN 1 AND 64)
);

-- The tax code of usage in a zone (charges carry theirs in charges.tax_code), and of
-- usage of a rate type (cdrs.rate_type, migration 0024), which wins over its zone's.
CREATE TABLE zone_tax_codes (
    zone      TEXT PRIMARY KEY,
    tax_code  TEXT NOT NULL CHECK (length(tax_code) BETWEEN 1 AND 64)
);
CREATE TABLE rate_type_tax_codes (
    rate_type  TEXT PRIMARY KEY,
    tax_code   TEXT NOT NULL CHECK (length(tax_code) BETWEEN 1 AND 64)
);

ALTER TABLE plans ADD CONSTRAINT plans_id_currency_key UNIQUE (id, currency);

-- A plan's taxes: each assigned to one target, a tax code, a zone or a charge.
CREATE TABLE plan_taxes (
    id           BIGSERIAL PRIMARY KEY,
    plan_id      TEXT NOT NULL,
    currency     CHAR(3) NOT NULL,
    tax          TEXT NOT NULL,
    target_kind  TEXT NOT NULL CHECK (target_kind IN ('tax_code', 'zone', 'charge')),
    target       TEXT NOT NULL CHECK (length(target) BETWEEN 1 AND 64),
    UNIQUE (plan_id, tax, target_kind, target),
    -- Only a tax in the plan's currency: both keys carry the currency. A plan's currency
    -- change cascades here and then fails the tax's key, so it is refused too.
    FOREIGN KEY (plan_id, currency) REFERENCES plans (id, currency)
        ON UPDATE CASCADE ON DELETE CASCADE,
    FOREIGN KEY (tax, currency) REFERENCES taxes (code, currency) ON UPDATE CASCADE
);
CREATE INDEX plan_taxes_plan_idx ON plan_taxes (plan_id);

-- An exempt account: its reference (certificate) and the jurisdiction levels it covers.
CREATE TABLE account_tax_exemptions (
    account_id  TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    reference   TEXT NOT NULL CHECK (length(reference) BETWEEN 1 AND 200),
    levels      TEXT[] NOT NULL CHECK (cardinality(levels) >= 1 AND levels <@
                    ARRAY['federal', 'state', 'county', 'city', 'other']::text[])
);

-- Surcharges on charges: a percentage of, or a flat amount on, the lines of a zone or
-- a charge, on the invoice as their own lines.
CREATE TABLE surcharges (
    id           TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    plan_id      TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    kind         TEXT NOT NULL CHECK (kind IN ('percent', 'flat')),
    rate         BIGINT CHECK (rate BETWEEN 0 AND 100000000000),  -- millionths of a %
    amount       BIGINT CHECK (amount >= 0),                        -- micro-units
    target_kind  TEXT NOT NULL CHECK (target_kind IN ('zone', 'charge')),
    target       TEXT NOT NULL CHECK (length(target) BETWEEN 1 AND 64),
    CHECK ((kind = 'percent') = (rate IS NOT NULL) AND (kind = 'flat') = (amount IS NOT NULL))
);
CREATE INDEX surcharges_plan_idx ON surcharges (plan_id);

-- Tax and surcharge lines: their basis (the amount the rate applied to) and rate
-- (NULL: a flat amount, e.g. an external engine's federal fee or a flat surcharge).
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_kind_check
    CHECK (kind IN ('recurring', 'proration', 'one_time', 'usage', 'reversal',
                    'usage_event', 'counter', 'counter_usage', 'tax', 'surcharge'));
ALTER TABLE invoice_lines ADD COLUMN tax_code TEXT;
ALTER TABLE invoice_lines ADD COLUMN basis    BIGINT;
ALTER TABLE invoice_lines ADD COLUMN rate     BIGINT;
-- A usage line's rate type (its CDRs' cdrs.rate_type; NULL: none).
ALTER TABLE invoice_lines ADD COLUMN rate_type TEXT;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_tax_shows_basis
    CHECK (kind <> 'tax' OR (tax_code IS NOT NULL AND basis IS NOT NULL));

-- Why an invoice's taxes could not be computed (an external engine down): it stays a
-- draft with this reason until they are.
ALTER TABLE invoices ADD COLUMN tax_error TEXT;

-- Never posted untaxed: a draft is posted only once its taxes are calculated.
CREATE FUNCTION billing_refuse_untaxed_posting() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'invoice %: its taxes are not calculated, it cannot be posted', OLD.id
        USING ERRCODE = 'check_violation';
END
$$;
CREATE TRIGGER invoices_posted_taxed BEFORE UPDATE OF state ON invoices
    FOR EACH ROW WHEN (OLD.state = 'draft' AND NEW.state = 'posted' AND NOT NEW.taxes_calculated
                       AND NEW.kind = 'invoice')
    EXECUTE FUNCTION billing_refuse_untaxed_posting();
