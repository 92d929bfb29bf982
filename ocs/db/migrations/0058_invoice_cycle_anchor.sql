-- The anchor a subscription-date invoice's period was computed from (decision 0019,
-- addendum 2026-12-07). A subscription-date account's periods were counted from the
-- first start date of its subscriptions to the plan (or the day it was created), read
-- again on every run: a subscription dated earlier, or a first subscription recorded
-- after the account was invoiced, moved every later period, which overlapped the
-- invoiced ones (Jan 15 - Feb 15 invoiced, then Feb 1 - Mar 1: a call of Feb 5 billed
-- twice) or left a gap. As 0045 fixes a plan's cycle once invoiced, an account's anchor
-- is now fixed by its latest invoice of the plan that is not void (ocs/billing/anchors.py).
-- NULL for the other cycles.
ALTER TABLE invoices ADD COLUMN cycle_anchor DATE;

-- Invoices made before this migration: the anchor of the run chunk that drafted them
-- (void ones are never read for it, and a void invoice may not change).
UPDATE invoices i SET cycle_anchor = c.cycle_anchor
FROM invoice_run_chunks c
WHERE c.run_id = i.run_id AND c.plan_id = i.plan_id AND c.period_start = i.period_start
  AND c.cycle_anchor IS NOT NULL AND i.account_id = ANY (c.account_ids)
  AND i.kind = 'invoice' AND i.state <> 'void';
