-- What re-rating needs to rate a call as its stop rated it (decision 0032, addendum
-- 2026-12-07, re-rating):
--
-- rating_plan: the plan whose deck rated the call when it is not the account's own (a
--   calling card's call that came in on an access number with a plan of its own);
--   NULL: the account's plan (cdrs.plan_id), and on every CDR written before this.
-- answered_at: where the call's price placed its start on the time bands: its answer as
--   its live entry held it, or its authorization when no answer was reported. NULL on
--   CDRs written before this, on imported records and on usage events; re-rating then
--   takes the end less the duration (never before the authorization).
--
-- Neither has a default: adding them rewrites nothing (docs: migrations README).
ALTER TABLE cdrs ADD COLUMN rating_plan TEXT;
ALTER TABLE cdrs ADD COLUMN answered_at TIMESTAMPTZ;
