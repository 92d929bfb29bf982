-- Tariffs priced per unit (MB, kWh, messages) rather than per minute: the
-- quantity the price is for (60 = per minute of seconds, 1 = per unit).
ALTER TABLE tariffs ADD COLUMN per INTEGER NOT NULL DEFAULT 60 CHECK (per >= 1);
