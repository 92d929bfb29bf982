-- A PIN batch's PIN length (decision 0042, addendum 2026-12-07): a new batch is refused
-- when, with the live cards of its length already issued, more than one PIN in 1000 of
-- that length would open a card. The rule was checked per batch, so 100 batches of 10,000
-- 7-digit PINs made one guess in ten open a card. Batches made before have no recorded
-- length (a PIN is kept only as a digest): NULL, and not counted.
ALTER TABLE pin_batches ADD COLUMN pin_length INTEGER CHECK (pin_length BETWEEN 6 AND 20);
