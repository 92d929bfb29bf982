-- The instance a charge line bills: the subscription, or the number's assignment
-- (account_numbers row). Advance charges are reconciled per instance (decision 0041):
-- a plan's own charge and a number's charge have no subscription charge (item_id), so
-- two subscriptions to one plan on one account, or one number assigned twice, could
-- not be told apart and each took the other's billing for its own.
--
-- Lines written before this migration keep both NULL: such a line matches every
-- instance of its (charge, item, number), as before (ocs/billing/lines.py). No
-- backfill: the lines of posted invoices are final (migration 0027), which of two
-- instances an old line billed cannot always be told, and old lines stop being read
-- once the charge periods they billed ahead are over.
--
-- Nullable columns without a default: adding them rewrites nothing. No foreign keys,
-- as item_id has none: a line is a record of what was billed, kept after its source.
ALTER TABLE invoice_lines ADD COLUMN subscription_id   BIGINT;
ALTER TABLE invoice_lines ADD COLUMN account_number_id BIGINT;
-- One source at most. NOT VALID: every existing line has neither, and checking them
-- would scan the whole table under the ALTER's lock; new and changed lines are checked.
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_one_source
    CHECK (subscription_id IS NULL OR account_number_id IS NULL) NOT VALID;
