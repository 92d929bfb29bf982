-- Usage surcharges per zone tariff, part of the real-time cost: a percentage in
-- basis points (2.5% = 250) and a flat amount per answered call.
ALTER TABLE tariffs ADD COLUMN surcharge_percent_bp INTEGER NOT NULL DEFAULT 0
    CHECK (surcharge_percent_bp >= 0);
ALTER TABLE tariffs ADD COLUMN surcharge_flat BIGINT NOT NULL DEFAULT 0
    CHECK (surcharge_flat >= 0);
