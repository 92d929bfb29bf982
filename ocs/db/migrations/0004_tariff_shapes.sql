-- Tariff shapes beyond connect fee, first block, increment and price: graduated
-- tiers and a max cost per call (rating rules: ocs/charging/rating.py).
-- tiers: [{"start": s, "price_per_minute": micro, "increment": s, "flat": micro}, ...]
ALTER TABLE tariffs ADD COLUMN tiers JSONB NOT NULL DEFAULT '[]';
ALTER TABLE tariffs ADD COLUMN max_cost BIGINT NOT NULL DEFAULT 0 CHECK (max_cost >= 0);
ALTER TABLE tariffs ADD COLUMN cut_at_max_cost BOOLEAN NOT NULL DEFAULT false;
