-- Time bands: a plan's weekly schedule and holidays in its time zone
-- ({"time_zone", "rules": [{"band", "days", "start", "end"}], "holidays": [...]}),
-- and each tariff's base price per band ({"peak": micro, ...}); see
-- ocs/charging/bands.py and the rating rules in ocs/charging/rating.py.
ALTER TABLE plans ADD COLUMN bands JSONB NOT NULL DEFAULT '{}';
ALTER TABLE tariffs ADD COLUMN band_prices JSONB NOT NULL DEFAULT '{}';
