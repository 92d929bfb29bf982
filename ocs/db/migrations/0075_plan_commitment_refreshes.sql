-- What the billing worker last committed each plan's accounts for (decision 0020,
-- addendum "the committed amount is kept current").
--
-- `stamp` names everything a plan's committed amounts follow besides the accounts'
-- own subscriptions: the period holding now (a new cycle), the plan's lock setting, its
-- billing settings and its custom charges. The worker refreshes a plan's accounts when
-- the stamp it reads differs from the one stored, then stores it: once a cycle, and
-- once after each change of the plan's charges or settings, whatever the number of
-- workers or restarts (a second refresh sets the same amounts).
CREATE TABLE plan_commitment_refreshes (
    plan_id      text PRIMARY KEY REFERENCES plans (id) ON DELETE CASCADE,
    stamp        text NOT NULL,
    refreshed_at timestamptz NOT NULL DEFAULT now()
);
