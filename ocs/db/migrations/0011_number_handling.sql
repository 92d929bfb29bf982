-- Number handling before the match (rating issue): access numbers and on-net ranges.

-- Access numbers (DNIS): a call that came in through one of a plan's access numbers
-- (a calling card's toll-free or local number) is rated by another plan's deck, its
-- "rating plan"; funds, lines and limits stay the account's own plan's.
CREATE TABLE access_numbers (
    plan_id      TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    number       TEXT NOT NULL CHECK (number ~ '^[0-9]{1,32}$'),
    rating_plan  TEXT NOT NULL REFERENCES plans (id) ON DELETE CASCADE,
    PRIMARY KEY (plan_id, number)
);

-- The operator's own number ranges. A destination in them is "on-net": it is rated
-- at the plan's tariff of the zone named "On-net" (when the plan has one), before
-- the plan's deck is consulted.
CREATE TABLE onnet_prefixes (
    prefix  TEXT PRIMARY KEY CHECK (prefix ~ '^[0-9]{1,32}$')
);
