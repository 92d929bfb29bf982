-- Issue 13: a plan chooses who taxes its invoices, and a subscription's billing address is
-- structured, so an external tax engine can source taxes by it.
-- plan_billing.tax_engine: 'internal' (the plan's own tax rules, ocs/billing/taxes.py) or
-- 'external' (the configured HTTP engine, docs/tax-engine.md).
ALTER TABLE plan_billing
    ADD COLUMN tax_engine TEXT NOT NULL DEFAULT 'internal'
        CONSTRAINT plan_billing_tax_engine_check CHECK (tax_engine IN ('internal', 'external'));

-- The billing address's parts; billing_address keeps the street lines as printed.
-- billing_country is ISO 3166-1 alpha-2 ("US"), billing_region a state or province ("TX").
ALTER TABLE subscriptions
    ADD COLUMN billing_city TEXT NOT NULL DEFAULT '',
    ADD COLUMN billing_county TEXT NOT NULL DEFAULT '',
    ADD COLUMN billing_region TEXT NOT NULL DEFAULT '',
    ADD COLUMN billing_postal_code TEXT NOT NULL DEFAULT '',
    ADD COLUMN billing_country TEXT NOT NULL DEFAULT ''
        CONSTRAINT subscriptions_billing_country_check
        CHECK (billing_country = '' OR billing_country ~ '^[A-Z]{2}$');
