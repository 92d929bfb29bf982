-- A bundle's early-termination (resiliation) fee is billed by the next invoice when its
-- end is recorded after the invoice holding its last day of service was made (decision
-- 0023, amended as 0046 did for charges): cancelled on April 2 from April 1, after
-- March's invoice was posted, the fee was billed by no invoice.
--
-- When a subscription bundle's end was recorded, set by the database as 0044 does for
-- subscriptions, subscription charges and numbers (the same function): the bundle's end
-- is the least of its own and its subscription's, its recording time the latest of
-- theirs. Nullable, no default: an end recorded before this migration has none, and is
-- taken as seen by every invoice made from now on.
ALTER TABLE subscription_bundles ADD COLUMN end_recorded_at TIMESTAMPTZ;

CREATE TRIGGER subscription_bundles_end_recorded BEFORE UPDATE OF end_date
    ON subscription_bundles FOR EACH ROW
    WHEN (NEW.end_date IS DISTINCT FROM OLD.end_date)
    EXECUTE FUNCTION billing_end_recorded();
CREATE TRIGGER subscription_bundles_end_given BEFORE INSERT ON subscription_bundles
    FOR EACH ROW WHEN (NEW.end_date IS NOT NULL)
    EXECUTE FUNCTION billing_end_recorded();

-- The subscription bundle a bundle line bills (no foreign key, as item_id: a line is a
-- record kept after its source), so the fee billed late is billed once: an invoice
-- looks for an earlier invoice's resiliation line of the same subscription bundle,
-- through this index, which holds resiliation lines only.
ALTER TABLE invoice_lines ADD COLUMN subscription_bundle_id BIGINT;
CREATE INDEX IF NOT EXISTS invoice_lines_resiliation_idx
    ON invoice_lines (subscription_bundle_id) WHERE kind = 'resiliation';
