-- A carrier's cost deck is priced in a currency of its own (decision 0030, addendum
-- 2026-12-07). Before, the margin check compared a carrier's micro-units with the plan's
-- as if one currency: a route set shared by a HUF plan and a EUR plan kept the same
-- carriers for both, so a 4.00 HUF/min sell price "beat" a 0.02 EUR/min carrier and
-- calls were routed at a loss. Now a carrier is compared with, and offered to, the plans
-- of its own currency only; one of unknown currency (NULL) to none.
--
-- Carriers are few (tens, not millions): the fill runs here, in the file. A carrier takes
-- the currency its use says it was priced in:
--   * the one currency of every plan routed through one of its route sets, when they
--     all agree;
--   * for a carrier no plan is routed through, the one currency of every plan, when the
--     deployment has plans of one currency only.
-- Plans of two currencies routed through it (the case this fixes), or no plan at all:
-- left NULL, and the operator names it (POST /v1/carriers with `currency`); until then
-- no plan's call is offered it, and each ocs process logs it once and counts it in
-- ocs_catalog_size{what="routes_in_other_currency"}. NULL stays allowed: a release before
-- this one, still serving while this one migrates, creates carriers without it.
ALTER TABLE carriers ADD COLUMN currency CHAR(3) NULL
    CONSTRAINT carriers_currency_code CHECK (currency ~ '^[A-Z]{3}$');

WITH routed AS (
    SELECT rsc.carrier_id, min(p.currency) AS currency
    FROM route_set_carriers rsc
    JOIN plans p ON p.route_set_id = rsc.route_set_id
    GROUP BY rsc.carrier_id
    HAVING count(DISTINCT p.currency) = 1
), only_currency AS (
    SELECT min(currency) AS currency FROM plans HAVING count(DISTINCT currency) = 1
)
UPDATE carriers c
SET currency = COALESCE(
    (SELECT r.currency FROM routed r WHERE r.carrier_id = c.id),
    CASE WHEN NOT EXISTS (
        SELECT 1 FROM route_set_carriers rsc
        JOIN plans p ON p.route_set_id = rsc.route_set_id
        WHERE rsc.carrier_id = c.id
    ) THEN (SELECT o.currency FROM only_currency o) END
);
