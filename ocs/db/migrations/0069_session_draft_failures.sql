-- The billing worker's tries of a closed on-demand session's missing invoice are kept
-- with the session (decision 0020, addendum 2026-12-07, amended): they were the worker
-- process's, so every restart (a deploy, a crash) tried a session given up 3 times more,
-- counted 3 more failures, and fired OcsBillingStepFailed again for a session an
-- operator had not fixed yet. `draft_failures` counts the failed drafts; `given_up_at`
-- is set when the worker gives the session up (a refusal, or the last try), and cleared
-- with the count by `ocs billing retry-sessions` once the operator fixed the cause.
-- Constant defaults are stored in the catalog: no rewrite, no scan.
ALTER TABLE billing_sessions
    ADD COLUMN draft_failures INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN given_up_at TIMESTAMPTZ;
