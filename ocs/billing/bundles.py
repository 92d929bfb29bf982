"""Bundle lines: free units, discounts, commitments, flat fees and resiliation fees.

A bundle (migration 0024, decision 0023) sits on a subscription and defines
indicators over the cycle's CDRs (SUM, AVG, MIN, MAX or COUNT of calls'
seconds, usage events' consumption or the amount debited, filtered by zone,
rate type or service) and rules over them. ``bundle_lines`` computes a chunk's
lines set-based: one query for the accounts' bundles, one for their rules, and
one aggregation over their CDRs (per-CDR free units by a window function,
indicators by GROUP BY), then each rule gives at most one line per
subscription bundle and invoice:

- **free** (``bundle_free``): the first ``allowance`` units of the cycle, in
  the order the CDRs stopped, are credited with what the real-time path
  debited for them, over calls as amended (a late stop's CDR added to the
  close it amends); the CDR that crosses the allowance is credited pro rata
  (its amount x included units / its units, rounded half away from zero to
  the micro-unit in SQL's ``round(numeric)``). A CDR that several free rules
  cover (two rules over the same calls, a bundle on two subscriptions) is
  credited at most what it debited: each rule, in order of subscription bundle
  and position, credits what the ones before left of it; its units still count
  against each rule's allowance;
- **discount** (``bundle_discount``): when the indicator reaches a tier's
  threshold, the highest tier reached takes its rate off the usage amount of
  the indicator's CDRs, net of the free credits already given on them;
- **commitment** (``bundle_commitment``): a minimum spend per cycle, prorated
  by the bundle's days in the cycle (``proration.prorate``), the shortfall of
  the indicator charged. An on-demand session is no cycle (it may last minutes):
  there the minimum is a monthly one, prorated by the session's real duration
  the bundle is active in over the month from the session's first day
  (``session_minimum``). A bundle attached, detached or cancelled dated back into
  periods already invoiced (recorded after the account's newest earlier invoice) has
  those periods' shortfalls settled again by the next invoice, once: what its dates now
  ask less what earlier invoices that stand charged, one line per period, a charge or a
  credit (``_settled_shortfalls``); so is a period settled again that a void changed
  since (``shortfall_voids.changed_by_void``): to what its dates ask where its own
  invoice stands (the settling invoice voided), to nothing where that is void (the
  credit settling it charged back, ``voided_shortfall_line``);
- **flat fee** (``bundle_fee``): per one-shot, monthly or yearly period from the
  bundle's start, prorated by its days in the period; billed upfront (the
  invoice billing advance charges of the period's start) or on the due date
  (the invoice whose arrears period holds the period's last day). A period that
  invoice could not bill is billed by a later one unless an earlier invoice (void
  ones included: a voided fee is the operator's to bill again) billed it
  (``owed_fees``; the line names its subscription bundle): an upfront period
  starting in the arrears period (a bundle bought inside a period already
  invoiced ahead, or on the account's first invoice), and for a bundle
  recorded after the account's earlier invoices read the items, every period
  from where the account's billing began. An upfront period billed ahead and then
  cut short by the bundle's end (recorded after the account's newest earlier
  invoice) is credited by the next invoice for its unused days, once
  (``fee_credit_lines``); a credit whose fee was voided after it was given is
  charged back by the next invoice, once, and a take-back whose credit was voided
  since is reversed by the next invoice, once (``taken_back_lines``: recomputed from
  what stands of the period);
- **resiliation** (``resiliation``, from the bundle itself): the bundle ends
  (its own end, the subscription's end or cancellation) before its commitment
  term: a fixed fee, or the fee x months left, the month in progress counted as
  left; billed by the invoice whose arrears period holds the last day of service,
  or, when the end was recorded after the account's newest earlier invoice was
  made and lies before the arrears period (``late_end``), by the next invoice,
  unless an earlier invoice billed it (the line names its subscription bundle).

Every amount is net of tax (taxes apply after bundles), every line is rounded
once (``currency.round_line``) and moves money at posting (credits through the
ledger like any credit). Each line's description shows its basis and rate.

**What a line is taxed as** (decision 0022: a bundle line by the zone, charge
or tax code it names), so that taxes are net of bundles:

- free and discount credits are split by the zone and rate type of the CDRs
  they credit: one line per (zone, rate type), each computed from that part's
  own figures and rounded once, naming the zone and rate type, so each part
  is taxed as the usage it credits (the zone's taxes, the rate type's or
  zone's tax code). A rule whose CDRs are all of one zone and rate type gives
  one line, as before; a split line says which part it is;
- a commitment names its indicator's zone and rate type (a minimum on that
  usage is taxed as that usage); when its indicator names neither, the
  bundle's tax code;
- flat fees and the resiliation fee name the bundle's tax code: the product
  code of the bundle's id (``product_tax_codes``, ``taxes.set_bundle_tax_code``);
  none set, no tax.
"""

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import asyncpg

from ocs.billing.currency import minor_unit_exponent, round_half_away, round_line
from ocs.billing.lines import Line, Targets, targets
from ocs.billing.periods import Period, Unit, local_midnight, month_day
from ocs.billing.periods import Schedule as PeriodSchedule
from ocs.billing.proration import prorate
from ocs.billing.shortfall_voids import (
    CommitmentBilled,
    VoidedInvoice,
    changed_by_void,
    unseen_voids,
    voided_periods,
)
from ocs.money import MICRO

# A rate in millionths of a percent (as taxes' rates): 100% is 100_000_000.
FULL_RATE = 100_000_000

_BUNDLES_SQL = """
SELECT s.account_id, sb.id, b.id AS bundle_id, b.name, b.currency,
       GREATEST(s.start_date, COALESCE(sb.start_date, s.start_date)) AS start,
       LEAST(sb.end_date, s.end_date, s.cancelled_on) AS "end",
       b.commitment_months, b.resiliation, b.resiliation_fee, t.tax_code,
       GREATEST(sb.end_recorded_at, s.end_recorded_at) AS end_recorded,
       GREATEST(sb.created_at, s.created_at) AS recorded
FROM subscriptions s
JOIN subscription_bundles sb ON sb.subscription_id = s.id
JOIN bundles b ON b.id = sb.bundle_id
LEFT JOIN product_tax_codes t ON t.product_code = b.id
WHERE s.account_id = ANY($1::text[]) AND s.status <> 'pending'
"""

# Of the subscription bundles ($1), those an invoice of an earlier period than the one
# being drafted for it ($2) billed a resiliation fee for, whatever its state.
_RESILIATED_SQL = """
SELECT DISTINCT b.id AS subscription_bundle_id
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[]) AS b(id, period_start, account_id)
JOIN invoices i ON i.account_id = b.account_id AND i.kind = 'invoice'
               AND i.period_start < b.period_start
JOIN invoice_lines l ON l.invoice_id = i.id AND l.kind = 'resiliation'
                    AND (l.subscription_bundle_id = b.id OR l.subscription_bundle_id IS NULL)
"""

# The flat fee lines that invoices of earlier periods than the one being drafted ($3)
# billed for the subscription bundles ($1) from $4 on, each bundle's invoices read from $5
# (NULL: all); a line names its subscription bundle and rule (by position, migration 0066)
# and is matched by them and its period: not by its description, which an operator's
# renaming of the bundle or rule would no longer match. A line from before flat fees named
# their subscription bundle (0052) or rule names none, and is matched by its description
# and period (``owed_fee_lines``), as it was then. A void invoice's fee
# counts as billed: a fee billed and voided is the operator's to bill again, not the runs'
# (decisions 0023 and 0046, as a voided charge's days are).
_FEES_BILLED_SQL = """
SELECT b.id AS sb_id, l.subscription_bundle_id, l.bundle_rule_position, l.period_start,
       l.description
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[],
            $5::timestamptz[]) AS b(id, account_id, period_start, since, floor)
JOIN invoices i ON i.account_id = b.account_id AND i.kind = 'invoice'
               AND i.period_start < b.period_start
               AND (b.floor IS NULL OR i.period_start >= b.floor)
JOIN invoice_lines l ON l.invoice_id = i.id AND l.kind = 'bundle_fee'
                    AND l.period_start >= b.since
                    AND (l.subscription_bundle_id = b.id OR l.subscription_bundle_id IS NULL)
"""

# What invoices of earlier periods than the one being drafted ($3) that stand (a void
# invoice's fee was given back with it) billed, net, of the subscription bundles' ($1)
# fees from $4 on: per line naming the bundle and its rule (since migration 0066), its
# period start and exact amount. A credit of unused days (``fee_credit_lines``) starts
# on its first unused day, inside the fee period it credits.
_FEES_NET_SQL = """
SELECT b.id AS sb_id, l.bundle_rule_position, l.period_start, l.exact_amount
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[])
     AS b(id, account_id, period_start, since)
JOIN invoices i ON i.account_id = b.account_id AND i.kind = 'invoice'
               AND i.period_start < b.period_start AND i.state <> 'void'
JOIN invoice_lines l ON l.invoice_id = i.id AND l.kind = 'bundle_fee'
                    AND l.subscription_bundle_id = b.id
                    AND l.bundle_rule_position IS NOT NULL
                    AND l.period_start >= b.since
"""

# What marks a line as a take-back (``taken_back_lines``) or a take-back's reversal: an
# adjustment, recomputed from the period's other lines, never counted among them. The
# line says so in its own column (migration 0071): its description, cut at 200
# characters, loses the words that told it ("taken back:", "reversed:") behind a long
# bundle or rule name, and a bundle may be named like them.
_ADJUSTS = "(l.adjustment IS NOT NULL)"

# ``Line.adjustment`` of a take-back and of a take-back's reversal (the column's CHECK).
TAKE_BACK = "take_back"
TAKE_BACK_REVERSAL = "take_back_reversal"

# Of the subscription bundles ($1, of the accounts $2), the fee periods (rule position and
# period end: a credit of unused days ends where the period it credits does) that a void
# invoice of an earlier period than the one being drafted ($3) holds a line of (a charge,
# a credit or a take-back), whose adjustments on earlier invoices that stand are not what
# their other standing lines ask (``taken_back_lines``): those lines net below nothing
# (a credit given while the charge stood, the charge voided since) asks that surplus
# taken back, anything else asks no adjustment (the credit voided since too). Each with
# the other lines' net (``base``), the adjustments' net, the first day the standing
# credits and adjustments start on, and the numbers of the void invoices that charged or
# credited it and of the standing invoices holding its adjustments. Void invoices are
# few: they are read first, and only their periods summed.
_FEES_OVERCREDITED_SQL = f"""
WITH b AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[])
        AS t(id, account_id, period_start)
), voided AS (
    SELECT b.id AS sb_id, b.account_id, b.period_start AS before,
           l.bundle_rule_position AS position, l.period_end,
           COALESCE(array_agg(DISTINCT i.number ORDER BY i.number)
                    FILTER (WHERE l.exact_amount > 0 AND NOT {_ADJUSTS}), '{{}}') AS charged,
           COALESCE(array_agg(DISTINCT i.number ORDER BY i.number)
                    FILTER (WHERE l.exact_amount < 0 AND NOT {_ADJUSTS}), '{{}}') AS credited
    FROM b
    JOIN invoices i ON i.account_id = b.account_id AND i.kind = 'invoice'
                   AND i.state = 'void' AND i.period_start < b.period_start
    JOIN invoice_lines l ON l.invoice_id = i.id AND l.kind = 'bundle_fee'
                        AND l.subscription_bundle_id = b.id
                        AND l.bundle_rule_position IS NOT NULL
                        AND l.period_end IS NOT NULL
    GROUP BY b.id, b.account_id, b.period_start, l.bundle_rule_position, l.period_end
), standing AS (
    SELECT v.sb_id, v.position, v.period_end, v.charged, v.credited, i.number,
           l.period_start, l.exact_amount, {_ADJUSTS} AS adjusts
    FROM voided v
    JOIN invoices i ON i.account_id = v.account_id AND i.kind = 'invoice'
                   AND i.state <> 'void' AND i.period_start < v.before
    JOIN invoice_lines l ON l.invoice_id = i.id AND l.kind = 'bundle_fee'
                        AND l.subscription_bundle_id = v.sb_id
                        AND l.bundle_rule_position = v.position
                        AND l.period_end = v.period_end
), summed AS (
    SELECT sb_id, position, period_end, charged, credited,
           COALESCE(sum(exact_amount) FILTER (WHERE NOT adjusts), 0)::bigint AS base,
           COALESCE(sum(exact_amount) FILTER (WHERE adjusts), 0)::bigint AS adjusted,
           min(period_start) FILTER (WHERE exact_amount < 0 AND NOT adjusts) AS credited_from,
           min(period_start) FILTER (WHERE adjusts) AS adjusted_from,
           COALESCE(array_agg(DISTINCT number ORDER BY number) FILTER (WHERE adjusts),
                    '{{}}') AS adjusting
    FROM standing
    GROUP BY sb_id, position, period_end, charged, credited
)
SELECT * FROM summed WHERE greatest(-base, 0) <> adjusted
"""

# The arrears periods, as invoices of earlier periods than the one being drafted ($3)
# that stand billed them, that may hold a subscription bundle's ($1, of the accounts $2)
# days from $4 on (``settled_shortfalls``): the invoices' own periods, ending after $4
# (a start-of-cycle invoice's arrears period is the one before its own, ending before
# it: the caller keeps those ending after $4). A void invoice's shortfall was given
# back with it.
_INVOICED_SQL = """
SELECT b.id AS sb_id, i.period_start, i.period_end
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[])
     AS b(id, account_id, period_start, since)
JOIN invoices i ON i.account_id = b.account_id AND i.kind = 'invoice'
               AND i.state <> 'void' AND i.period_start < b.period_start
               AND i.period_end > b.since
"""

# The commitment lines earlier invoices than the one being drafted ($3) hold for the
# subscription bundles ($1, of the accounts $2) from $4 on: their shortfall lines and the
# lines settling them again (``settled_shortfalls``), each naming its subscription bundle
# and rule; a line from before they did names neither and is matched by its description
# (``standing_shortfall``). Void invoices' too, with when they were voided: what stands
# of a period leaves them out (a void invoice's line was given back with it), and a void
# since the period was last settled again asks it settled again (``changed_by_void``).
_SHORTFALLS_SQL = """
SELECT b.id AS sb_id, l.subscription_bundle_id, l.bundle_rule_position, l.description,
       l.period_start, l.exact_amount, i.number, i.period_start AS billed_start,
       i.period_end AS billed_end, i.created_at,
       CASE WHEN i.state = 'void' THEN COALESCE(i.voided_at, now()) END AS voided_at
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::timestamptz[])
     AS b(id, account_id, period_start, since)
JOIN invoices i ON i.account_id = b.account_id AND i.kind = 'invoice'
               AND i.period_start < b.period_start
JOIN invoice_lines l ON l.invoice_id = i.id AND l.kind = 'bundle_commitment'
                    AND (l.subscription_bundle_id = b.id OR l.subscription_bundle_id IS NULL)
                    AND l.period_start >= b.since
"""

# The void invoices of earlier periods than the one being drafted ($3) of the accounts ($2)
# of subscription bundles with a commitment ($1) (``settled_shortfalls``): each with its
# own period, when it was voided, and the first days of the bundle's commitment lines it
# held that name their rule. Void invoices are few: they are read first, and a period's
# lines only where one of them lies (``voided_periods``).
_VOIDED_SQL = """
SELECT b.id AS sb_id, i.number, i.period_start, i.period_end,
       COALESCE(i.voided_at, now()) AS voided_at,
       COALESCE(array_agg(l.period_start ORDER BY l.period_start)
                FILTER (WHERE l.id IS NOT NULL), '{}') AS line_starts
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS b(id, account_id, period_start)
JOIN invoices i ON i.account_id = b.account_id AND i.kind = 'invoice'
               AND i.state = 'void' AND i.period_start < b.period_start
LEFT JOIN invoice_lines l ON l.invoice_id = i.id AND l.kind = 'bundle_commitment'
                         AND l.subscription_bundle_id = b.id
                         AND l.bundle_rule_position IS NOT NULL
GROUP BY b.id, i.id
"""

_RULES_SQL = """
SELECT r.bundle_id, r.position, r.kind, r.description, r.indicator, r.allowance, r.amount,
       r.periodicity, r.timing, i.function, i.measure, i.unit, i.zone, i.rate_type,
       COALESCE((SELECT array_agg(t.threshold ORDER BY t.threshold) FROM bundle_discount_tiers t
                 WHERE (t.bundle_id, t.position) = (r.bundle_id, r.position)), '{}') AS thresholds,
       COALESCE((SELECT array_agg(t.rate ORDER BY t.threshold) FROM bundle_discount_tiers t
                 WHERE (t.bundle_id, t.position) = (r.bundle_id, r.position)), '{}') AS rates
FROM bundle_rules r
LEFT JOIN bundle_indicators i ON (i.bundle_id, i.name) = (r.bundle_id, r.indicator)
WHERE r.bundle_id = ANY($1::text[])
ORDER BY r.bundle_id, r.position
"""

# Which call a CDR is: a late stop's row, and the close by policy it amends (stop.lua's
# ``closed_by_us``), by call id and authorization (``call_at`` set); any other, itself
# (``call_at`` NULL).
_AMENDABLE = "'late-stop', 'start-timeout', 'expired', 'nas-reboot', 'cut'"

# One pass over the bundles' CDRs. ``u`` is what a free allowance counts (1 per CDR
# for a count indicator, none for a late stop's, which amends its call's), ``v`` the
# measured value. Free rules run over calls as amended (decision 0023, amended
# 2026-12-07): a late stop's row (what its Stop changed: seconds, amount, some negative)
# is added to its call's row, the call keeping its own place in stop order and its entry
# id; one whose call lies in an earlier cycle was measured there and takes no part. A
# free rule's running total of u in stop order gives each call's included units and
# credit (calls stopped at the same instant are ordered by entry id, so a recomputed
# draft is equal). Indicators sum ``charged`` net of the free credits on the same calls.
# Indicators come whole and in shares per (zone, rate type); free credits per
# (zone, rate type): a bundle line is taxed as the usage it credits.
_USAGE_CTES = """
WITH sb AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[],
                         $5::timestamptz[]) AS t(sb_id, account_id, bundle_id, w_start, w_end)
), ev AS (
    SELECT sb.sb_id, sb.bundle_id, i.name AS indicator, i.function, c.entry_id, c.stopped_at,
           c.charged, c.zone, c.rate_type,
           CASE WHEN i.function = 'count' THEN (c.termination_cause <> 'late-stop')::int
                WHEN i.measure = 'amount' THEN c.charged ELSE c.duration END AS u,
           CASE WHEN i.measure = 'amount' THEN c.charged ELSE c.duration END AS v,
           (c.termination_cause <> 'late-stop')::int AS event,
           CASE WHEN c.termination_cause IN ({amendable})
                THEN c.call_id ELSE c.entry_id END AS call,
           CASE WHEN c.termination_cause IN ({amendable})
                THEN c.authorized_at END AS call_at
    FROM sb
    JOIN bundle_indicators i ON i.bundle_id = sb.bundle_id
    JOIN cdrs c ON c.account_id = sb.account_id
               AND c.stopped_at >= sb.w_start AND c.stopped_at < sb.w_end
    WHERE (i.measure = 'amount' OR (i.measure = 'consumption') = (c.termination_cause = 'usage'))
      AND (i.zone IS NULL OR c.zone = i.zone)
      AND (i.rate_type IS NULL OR c.rate_type = i.rate_type)
      AND (i.service IS NULL OR (c.termination_cause = 'usage' AND c.destination = i.service))
), freed AS (
    SELECT e.*, r.position, r.allowance
    FROM ev e
    JOIN bundle_rules r ON (r.bundle_id, r.indicator) = (e.bundle_id, e.indicator)
                       AND r.kind = 'free'
), amended AS (
    -- Each free rule's calls as amended. A call no policy closed is its own row (most
    -- rows: only the rare closes by policy and their late stops are grouped). A close
    -- by policy and its late stops are one call: where and when it stopped and its
    -- entry id are the close's, its units and amount the sum (never below nothing).
    -- Late stops whose close lies outside the window (HAVING) are left out.
    SELECT sb_id, position, allowance, entry_id, stopped_at, zone, rate_type, charged, u
    FROM freed
    WHERE call_at IS NULL
    UNION ALL
    SELECT sb_id, position, allowance,
           min(entry_id) FILTER (WHERE event = 1), min(stopped_at) FILTER (WHERE event = 1),
           min(zone) FILTER (WHERE event = 1), min(rate_type) FILTER (WHERE event = 1),
           sum(charged)::bigint, GREATEST(sum(u), 0)::bigint
    FROM freed
    WHERE call_at IS NOT NULL
    GROUP BY sb_id, position, allowance, call, call_at
    HAVING sum(event) > 0
), running AS (
    SELECT a.*, sum(a.u) OVER (PARTITION BY a.sb_id, a.position
                               ORDER BY a.stopped_at, a.entry_id) AS upto
    FROM amended a
), included AS (
    SELECT sb_id, position, entry_id, charged, zone, rate_type,
           LEAST(u, GREATEST(allowance - (upto - u), 0)) AS included,
           CASE WHEN u = 0 THEN CASE WHEN upto < allowance THEN charged ELSE 0 END
                ELSE round(charged::numeric * LEAST(u, GREATEST(allowance - (upto - u), 0)) / u)
           END AS credit
    FROM running
), credited AS (
    -- A call is credited at most what it was charged as amended, and never less than
    -- nothing, whatever free rules cover it (two rules of a bundle over the same calls,
    -- or one bundle on two subscriptions): each rule, in order of bundle and position,
    -- credits what the ones before left.
    SELECT sb_id, position, entry_id, charged, zone, rate_type, included,
           GREATEST(LEAST(credit, charged - COALESCE(sum(credit) OVER (
               PARTITION BY entry_id ORDER BY sb_id, position
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)), 0) AS credit
    FROM included
), net AS (
    -- Each CDR's credits (over every free rule) beside its indicator rows, summed by a
    -- window over both: no join of the two, which the planner, misjudging them as one
    -- row each, made a nested loop re-aggregating the credits per CDR (quadratic).
    -- A call's credit is on its own row (the close, for a call a late stop amended) and
    -- lies between nothing and what the call came to as amended, so a call's rows sum
    -- to that net of its credit: a late stop's refund lowers the base by what it gave
    -- back, and the close's row, by the credit the call as amended had.
    SELECT sb_id, indicator, zone, rate_type, v, event, charged - cdr_credit AS net
    FROM (
        SELECT x.*, sum(x.credit) OVER (PARTITION BY x.sb_id, x.entry_id) AS cdr_credit
        FROM (
            SELECT sb_id, entry_id, indicator, zone, rate_type, v, event, charged,
                   0::numeric AS credit, true AS measured
            FROM ev
            UNION ALL
            SELECT sb_id, entry_id, NULL, NULL, NULL, NULL, NULL, NULL, credit, false
            FROM credited
        ) AS x
    ) AS y
    WHERE measured
)
""".replace("{amendable}", _AMENDABLE)

# MIN and MAX are over calls as amended (decision 0023, amended 2026-12-07): a late stop's
# row (what its Stop changed: seconds, amount, some negative) is added to its call's row
# (the same call id and authorization) and is never a call itself; one whose call lies
# in an earlier cycle was measured there, and is left out of this cycle's MIN and MAX
# (as it is of COUNT; SUM and AVG take it, as they always did). Every other row is a call
# (or usage event) of its own. Only indicators with MIN or MAX pay for this pass.
_EXTREMES = """
, calls AS (
    SELECT sb_id, indicator, sum(v) AS v
    FROM ev
    WHERE function IN ('min', 'max')
    GROUP BY sb_id, indicator, call, call_at
    HAVING sum(event) > 0
), extremes AS (
    SELECT sb_id, indicator, min(v)::bigint AS low, max(v)::bigint AS high
    FROM calls
    GROUP BY sb_id, indicator
)
"""
# Without MIN or MAX indicators: none computed.
_NO_EXTREMES = """
, extremes AS (
    SELECT NULL::bigint AS sb_id, NULL::text AS indicator, NULL::bigint AS low,
           NULL::bigint AS high
    WHERE false
)
"""

# Each indicator whole and in shares per (zone, rate type), for discounts and commitments.
_INDICATORS_SQL = """
SELECT 'indicator' AS what, g.sb_id, g.indicator, 0 AS position, NULL::text AS zone,
       NULL::text AS rate_type, g.events, g.total, g.average, x.low, x.high, g.net
FROM (
    SELECT sb_id, indicator, sum(event)::bigint AS events, sum(v)::bigint AS total,
           round(sum(v)::numeric / NULLIF(sum(event), 0))::bigint AS average,
           sum(net)::bigint AS net
    FROM net
    GROUP BY sb_id, indicator
) AS g
LEFT JOIN extremes x ON (x.sb_id, x.indicator) = (g.sb_id, g.indicator)
UNION ALL
SELECT 'share', sb_id, indicator, 0, zone, rate_type, sum(event)::bigint, sum(v)::bigint,
       NULL, NULL, NULL, sum(net)::bigint
FROM net
GROUP BY sb_id, indicator, zone, rate_type
"""

# Each free rule's credits per (zone, rate type).
_FREE_SQL = """
SELECT 'free' AS what, sb_id, NULL::text AS indicator, position, zone, rate_type,
       count(*) FILTER (WHERE included > 0)::bigint AS events, sum(included)::bigint AS total,
       NULL::bigint AS average, NULL::bigint AS low, NULL::bigint AS high,
       sum(credit)::bigint AS net
FROM credited
GROUP BY sb_id, position, zone, rate_type
"""

# Everything a chunk's bundles need; with free rules only, the credits alone. (An
# unreferenced CTE is never computed: without the indicators, ``net``, the window over
# every CDR twice, is skipped: about half the query for a free-minutes bundle.)
_USAGE_SQL = _USAGE_CTES + _NO_EXTREMES + _INDICATORS_SQL + "UNION ALL\n" + _FREE_SQL
_EXTREMES_SQL = _USAGE_CTES + _EXTREMES + _INDICATORS_SQL + "UNION ALL\n" + _FREE_SQL
_FREE_ONLY_SQL = _USAGE_CTES + _FREE_SQL


@dataclass(frozen=True, slots=True)
class BundleInvoice:
    """One invoice of a chunk: its account, currency, target periods and usage window;
    ``newest``: when the account's newest earlier invoice was made (None: none), for a
    bundle's end recorded after it (``late_end``); ``began``: the first day its first
    invoice billed arrears for (None: this is its first); ``seen``: until when its
    earlier invoices read the items (None: it has none), for a bundle recorded after
    them (``owed_fees``)."""

    account_id: str
    currency: str
    which: Targets
    window: tuple[datetime, datetime]
    newest: datetime | None = None
    began: date | None = None
    seen: datetime | None = None
    # The arrears period is an on-demand session [opened, closed), not a cycle.
    session: bool = False
    # The plan's cycle and invoice timing (``lines.targets``), which give an earlier
    # invoice's arrears period (``settled_shortfalls``; None: not looked for).
    cycle: PeriodSchedule | None = None
    timing: str = "end_of_cycle"


@dataclass(frozen=True, slots=True)
class Held:
    """A bundle on one of an account's subscriptions, active over local days [start, end)."""

    id: int
    account_id: str
    bundle_id: str
    name: str
    currency: str
    start: date
    end: date | None
    commitment_months: int | None
    resiliation: str
    resiliation_fee: int
    tax_code: str | None = None  # the bundle's own tax code (its fees, resiliation)
    # When its end was recorded, the latest of its own and its subscription's (0052).
    end_recorded: datetime | None = None
    # When it came to exist: the latest of its own and its subscription's ``created_at``.
    recorded: datetime | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a bundle, with its indicator's definition and its discount tiers."""

    bundle_id: str
    position: int
    kind: str
    description: str
    indicator: str | None
    allowance: int | None
    amount: int | None
    periodicity: str | None
    timing: str | None
    function: str | None
    measure: str | None
    unit: str
    tiers: tuple[tuple[int, int], ...]  # (threshold, rate), thresholds ascending
    zone: str | None = None  # the indicator's zone filter
    rate_type: str | None = None  # the indicator's rate type filter


@dataclass(frozen=True, slots=True)
class Indicator:
    """An indicator's figures over the cycle: events, sum, average, min, max, net amount."""

    events: int
    total: int
    average: int | None
    low: int | None
    high: int | None
    net: int

    def value(self, function: str) -> int | None:
        """The indicator's value by its function (None: AVG/MIN/MAX of no events)."""
        return {
            "count": self.events,
            "sum": self.total,
            "avg": self.average,
            "min": self.low,
            "max": self.high,
        }[function]


NO_EVENTS = Indicator(0, 0, None, None, None, 0)


@dataclass(frozen=True, slots=True)
class Part:
    """An indicator's (or a free rule's) figures over its CDRs of one zone and rate type."""

    zone: str | None
    rate_type: str | None
    figures: Indicator

    @property
    def label(self) -> str:
        """The part as a split line names it: ``UK Mobile``, ``UK Mobile, peak``."""
        where = self.zone or "other usage"
        return f"{where}, {self.rate_type}" if self.rate_type else where


def add_months(day: date, months: int) -> date:
    """``day`` plus whole months, on the same day of the month or the month's last day."""
    index = day.year * 12 + day.month - 1 + months
    return month_day(index // 12, index % 12 + 1, day.day)


def months_left(start: date, term_months: int, end: date) -> int:
    """Months of a term from ``start`` not fully served by ``end`` (the month in progress
    counts as left): 12 months from Jan 15, ended on May 20, served 4 whole months -> 8."""
    served = 0
    while served < term_months and add_months(start, served + 1) <= end:
        served += 1
    return term_months - served


def money(micro: int, currency: str) -> str:
    """An amount for a description: the currency's decimals, more when not whole."""
    exponent = minor_unit_exponent(currency)
    text = f"{Decimal(micro) / MICRO:f}"
    whole, _, fraction = text.partition(".")
    fraction = fraction.rstrip("0").ljust(exponent, "0")
    return f"{whole}.{fraction}" if fraction else whole


def percent(rate: int) -> str:
    """A rate in millionths of a percent as a percentage: ``10%``, ``12.5%``."""
    text = f"{Decimal(rate) / 1_000_000:f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "%"


def quantity_text(value: int, measure: str | None, function: str | None, unit: str) -> str:
    """An indicator value a customer reads: ``1000 min``, ``16 min 40 s``, ``250 MB``."""
    if function == "count":
        what = {"duration": "call", "consumption": "event"}.get(measure or "", "transaction")
        return f"{value} {what}" if value == 1 else f"{value} {what}s"
    if measure == "duration":
        minutes, seconds = divmod(value, 60)
        return f"{minutes} min" if seconds == 0 else f"{minutes} min {seconds} s"
    return f"{value} {unit}".rstrip()


def _line(
    kind: str,
    description: str,
    span: tuple[datetime, datetime | None],
    quantity: int,
    exact: int,
    cur: str,
    *,
    zone: str | None = None,
    rate_type: str | None = None,
    tax_code: str | None = None,
    bundle: int | None = None,
    rule: int | None = None,
    adjustment: str | None = None,
) -> Line:
    """A bundle line, rounded once, naming what it is taxed as (and, ``bundle``, the
    subscription bundle it bills; ``rule``, a fee rule's position; ``adjustment``, a fee
    period's take-back or its reversal); it moves money at posting."""
    return Line(
        kind,
        description,
        span[0],
        span[1],
        quantity,
        exact,
        round_line(exact, cur),
        True,
        zone=zone,
        tax_code=tax_code,
        rate_type=rate_type,
        subscription_bundle_id=bundle,
        bundle_rule_position=rule,
        adjustment=adjustment,
    )


def _active_window(held: Held, invoice: BundleInvoice) -> tuple[datetime, datetime] | None:
    """The part of the usage window the bundle is active in (None: not at all)."""
    return _active_in(held, invoice.window, invoice.which.arrears.zone)


def _active_in(
    held: Held, window: tuple[datetime, datetime], zone: ZoneInfo
) -> tuple[datetime, datetime] | None:
    """The part of ``window`` the bundle is active in, by its local days (None: none)."""
    start = max(window[0], local_midnight(held.start, zone), key=datetime.timestamp)
    end = window[1]
    if held.end is not None:
        end = min(end, local_midnight(held.end, zone), key=datetime.timestamp)
    return (start, end) if start.timestamp() < end.timestamp() else None


def _active_days(held: Held, period: Period) -> int:
    """Local days of ``period`` the bundle is active in."""
    first = max(held.start, period.first_day)
    after = period.end_day if held.end is None else min(held.end, period.end_day)
    return max((after - first).days, 0)


def commitment_minimum(held: Held, amount: int, invoice: BundleInvoice) -> tuple[int, str]:
    """A commitment's minimum on this invoice (exact micro-units) and the share its text
    shows ("" when whole): prorated by the bundle's days in the cycle, or over a
    session by ``session_minimum``."""
    arrears = invoice.which.arrears
    if invoice.session:
        return session_minimum(held, amount, arrears)
    return period_minimum(held, amount, arrears)


def period_minimum(held: Held, amount: int, period: Period) -> tuple[int, str]:
    """A commitment's minimum over a cycle's ``period`` (exact micro-units), prorated by
    the bundle's days in it (``proration.prorate``), and the share its text shows ("" when
    whole)."""
    days = _active_days(held, period)
    share = "" if days == period.days else f" ({days}/{period.days} days)"
    return prorate(amount, days, period.days), share


def session_minimum(held: Held, amount: int, session: Period) -> tuple[int, str]:
    """A monthly minimum over an on-demand session: ``amount`` x the session's real time
    the bundle is active in / the real length of the month from the session's first local
    day (its monthly charges' period), rounded half away from zero once.

    A session is no cycle: counted in calendar days, one within a day has 0 of 0 (a
    division by zero) and one across midnight 1 of 1, the whole month's minimum for two
    hours. Real time makes both what they lasted; a session longer than that month pays
    more than one month's minimum, in proportion.
    """
    zone = session.zone
    month = PeriodSchedule(Unit.MONTHS, 1, session.first_day, zone.key).period(0)
    start = max(session.start, local_midnight(held.start, zone), key=_instant)
    end = session.end
    if held.end is not None:
        end = min(end, local_midnight(held.end, zone), key=_instant)
    active = max(_instant(end) - _instant(start), timedelta(0))
    tick = timedelta(microseconds=1)
    minimum = round_half_away(amount * (active // tick), month.duration // tick)
    minutes = int(active.total_seconds()) // 60
    return minimum, f" ({minutes // 60}h{minutes % 60:02d} of {month.days} days)"


def _instant(moment: datetime) -> datetime:
    """An aware datetime in UTC: aware datetimes sharing a tzinfo compare and subtract by
    wall clock, so real durations go through UTC."""
    return moment.astimezone(UTC)


def usage_rule_lines(
    held: Held,
    rule: Rule,
    figures: Indicator,
    parts: Sequence[Part],
    invoice: BundleInvoice,
    span: tuple[datetime, datetime],
) -> list[Line]:
    """The lines a free, discount or commitment rule gives over one cycle.

    ``parts``: for a free rule, its credits per (zone, rate type); for a
    discount, its indicator's shares per (zone, rate type). A free or discount
    rule gives one line per part with something to credit, each computed from
    the part's own figures and rounded once; the discount's tier is the one the
    whole indicator reaches. A commitment gives at most one line.
    """
    cur = invoice.currency
    label = f"{held.name}: {rule.description}"
    if rule.kind == "free":
        credited = sorted(
            (p for p in parts if p.figures.total), key=lambda p: (p.zone or "", p.rate_type or "")
        )
        allowance = rule.allowance or 0
        of = quantity_text(allowance, rule.measure, rule.function, rule.unit)
        found = []
        for part in credited:
            named = label if len(credited) == 1 else f"{label} ({part.label})"
            used = quantity_text(part.figures.total, rule.measure, rule.function, rule.unit)
            found.append(
                _line(
                    "bundle_free",
                    f"{named}: {used} of {of} included,"
                    f" {money(part.figures.net, cur)} credited (100%)",
                    span,
                    part.figures.total,
                    -part.figures.net,
                    cur,
                    zone=part.zone,
                    rate_type=part.rate_type,
                )
            )
        return found
    value = figures.value(rule.function or "sum")
    if rule.kind == "discount":
        reached = [(t, r) for t, r in rule.tiers if value is not None and value >= t]
        if value is None or not reached:
            return []
        threshold, rate = reached[-1]
        shown = quantity_text(value, rule.measure, rule.function, rule.unit)
        at = quantity_text(threshold, rule.measure, rule.function, rule.unit)
        shares = sorted(parts, key=lambda p: (p.zone or "", p.rate_type or ""))
        if len(shares) > 1:
            shares = [p for p in shares if p.figures.net]
        if not shares:  # no share known: the whole indicator, named by its filters
            shares = [Part(rule.zone, rule.rate_type, figures)]
        found = []
        for part in shares:
            named = label if len(shares) == 1 else f"{label} ({part.label})"
            found.append(
                _line(
                    "bundle_discount",
                    f"{named}: {percent(rate)} off {money(part.figures.net, cur)}"
                    f" ({shown}, tier from {at})",
                    span,
                    value,
                    -round_half_away(part.figures.net * rate, FULL_RATE),
                    cur,
                    zone=part.zone,
                    rate_type=part.rate_type,
                )
            )
        return found
    if rule.kind == "commitment":
        minimum, share = commitment_minimum(held, rule.amount or 0, invoice)
        spent = value or 0
        if spent >= minimum:
            return []
        # A minimum on a zone's (or rate type's) usage is taxed as that usage.
        on_usage = rule.zone is not None or rule.rate_type is not None
        return [
            _line(
                "bundle_commitment",
                f"{label}: minimum {money(minimum, cur)}{share}, used {money(spent, cur)},"
                f" shortfall charged",
                span,
                spent,
                minimum - spent,
                cur,
                zone=rule.zone,
                rate_type=rule.rate_type,
                tax_code=None if on_usage else held.tax_code,
                bundle=held.id,
                rule=rule.position,
            )
        ]
    return []


def usage_rule_line(
    held: Held,
    rule: Rule,
    figures: Indicator,
    free: Indicator | None,
    invoice: BundleInvoice,
    span: tuple[datetime, datetime],
) -> Line | None:
    """The one line of a rule over its whole indicator (not split by zone), if any."""
    whole = Part(rule.zone, rule.rate_type, free if rule.kind == "free" and free else figures)
    found = usage_rule_lines(held, rule, figures, [whole], invoice, span)
    return found[0] if found else None


def _fee_periods(held: Held, rule: Rule, zone: str) -> PeriodSchedule | None:
    """A flat fee's periods from the bundle's start (None: one-shot)."""
    if rule.periodicity == "one_shot":
        return None
    months = 12 if rule.periodicity == "yearly" else 1
    return PeriodSchedule(Unit.MONTHS, months, held.start, zone)


def _fee_line(held: Held, rule: Rule, part: Period | None, invoice: BundleInvoice) -> Line:
    """The fee's line for one of its periods (None: the one-shot fee, on the bundle's start
    day), prorated by the bundle's active days in it; it names its subscription bundle and
    rule, so that a later invoice knows it billed (``owed_fees``), whatever the bundle and
    rule are named by then."""
    cur, amount = invoice.currency, rule.amount or 0
    label = f"{held.name}: {rule.description}"
    if part is None:
        when = local_midnight(held.start, invoice.which.arrears.zone)
        return _line(
            "bundle_fee",
            f"{label} (one-off)",
            (when, None),
            1,
            amount,
            cur,
            tax_code=held.tax_code,
            bundle=held.id,
            rule=rule.position,
        )
    days = _active_days(held, part)
    share = "" if days == part.days else f" ({days}/{part.days} days)"
    return _line(
        "bundle_fee",
        f"{label} {part.label}{share}, {money(amount, cur)} per {rule.periodicity}"[:200],
        (part.start, part.end),
        1,
        prorate(amount, days, part.days),
        cur,
        tax_code=held.tax_code,
        bundle=held.id,
        rule=rule.position,
    )


def fee_lines(held: Held, rule: Rule, invoice: BundleInvoice) -> list[Line]:
    """The flat fee's lines on this invoice: periods starting in the advance target
    (upfront) or whose last day lies in the arrears target (due date). Those an earlier
    invoice should have billed and did not are ``owed_fees``'."""
    upfront = rule.timing == "upfront"
    target = invoice.which.advance if upfront else invoice.which.arrears
    schedule = _fee_periods(held, rule, target.zone.key)
    if schedule is None:
        if not target.first_day <= held.start < target.end_day:
            return []
        return [_fee_line(held, rule, None, invoice)]
    found = []
    n = max(schedule.index_of_day(target.first_day) - 1, 0)
    while schedule.start_day(n) < target.end_day:
        part = schedule.period(n)
        n += 1
        day = part.first_day if upfront else part.last_day
        if target.first_day <= day < target.end_day and _active_days(held, part):
            found.append(_fee_line(held, rule, part, invoice))
    return found


# An earlier invoice's flat fee line: its subscription bundle and rule position (None:
# written before lines named them, migrations 0052 and 0066), period start, description.
BilledFee = tuple[int | None, int | None, datetime, str]


@dataclass(frozen=True, slots=True)
class OwedFee:
    """A fee period (``part``; None: the one-shot fee's day) that an invoice before this
    one should have billed: this one bills it unless one did. ``start``: its line's
    period start; ``prefix``: how its line's description begins, whatever its share."""

    part: Period | None
    start: datetime
    prefix: str


def _owed_from(held: Held, invoice: BundleInvoice) -> date:
    """The first day whose fee periods (billed on it, by timing) this invoice bills when
    no earlier invoice did.

    The arrears period's first day: an upfront fee period starting in it was the invoice
    before's, which could not bill it if the bundle was recorded after it read the items
    ("bought today", starting inside an invoiced advance period), or if there was none
    (the account's first invoice: its billing begins with its arrears period, as an
    advance charge's does). For a bundle recorded after every earlier invoice read the
    items (``seen``: dated back), the first day the account's billing began (decision
    0043's ``late_charges``): no earlier invoice could bill any of its fees.
    """
    arrears = invoice.which.arrears
    late = invoice.seen is not None and held.recorded is not None and held.recorded > invoice.seen
    if late and invoice.began is not None:
        return min(invoice.began, arrears.first_day)
    return arrears.first_day


def owed_fees(held: Held, rule: Rule, invoice: BundleInvoice) -> list[OwedFee]:
    """The fee's periods (or one-shot day) billed on a day (an upfront period's first, a
    due-date period's last) from ``_owed_from`` up to this invoice's own target, which
    earlier invoices should have billed; the caller drops those they did."""
    upfront = rule.timing == "upfront"
    target = invoice.which.advance if upfront else invoice.which.arrears
    first = _owed_from(held, invoice)
    if first >= target.first_day:
        return []
    zone = target.zone
    label = f"{held.name}: {rule.description}"
    schedule = _fee_periods(held, rule, zone.key)
    if schedule is None:
        if not first <= held.start < target.first_day:
            return []
        return [OwedFee(None, local_midnight(held.start, zone), f"{label} (one-off)")]
    found = []
    n = max(schedule.index_of_day(first), 0)
    while (part := schedule.period(n)).first_day < target.first_day:
        n += 1
        day = part.first_day if upfront else part.last_day
        if first <= day < target.first_day and _active_days(held, part):
            found.append(OwedFee(part, part.start, f"{label} {part.label}"[:200]))
    return found


def owed_fee_lines(
    held: Held,
    rule: Rule,
    invoice: BundleInvoice,
    owed: Sequence[OwedFee],
    billed: Sequence[BilledFee],
) -> list[Line]:
    """The lines of the ``owed`` fee periods that no earlier invoice billed: ``billed``
    holds their fee lines of the bundle. One naming its subscription bundle and rule is
    this fee's when they and its period are this fee's, whatever its description reads
    (the bundle or rule renamed since). One naming neither (made before they did), or
    its subscription bundle only (before migration 0066, its rule not found then), is
    this fee's when its period and the beginning of its description match."""
    found = []
    for fee in owed:
        if not any(_bills(line, held, rule, fee) for line in billed):
            found.append(_fee_line(held, rule, fee.part, invoice))
    return found


def _bills(line: BilledFee, held: Held, rule: Rule, fee: OwedFee) -> bool:
    """Whether an earlier invoice's fee line ``line`` billed the fee period ``fee``."""
    sb_id, position, start, description = line
    if start.timestamp() != fee.start.timestamp():
        return False
    if sb_id is not None and position is not None:
        return sb_id == held.id and position == rule.position
    return description.startswith(fee.prefix) and sb_id in (None, held.id)


def ended_late(held: Held, invoice: BundleInvoice) -> bool:
    """Whether the bundle's end was recorded after the account's newest earlier invoice
    (not void) was made: that invoice, or one before it, may have billed fee periods
    ahead past it (as decision 0046 checks charges' ends). A named period's (manual,
    on-demand) invoice bills its own days only, and is not checked."""
    return (
        held.end is not None
        and not invoice.which.named
        and invoice.newest is not None
        and held.end_recorded is not None
        and held.end_recorded > invoice.newest
    )


def credited_fee_periods(held: Held, rule: Rule, invoice: BundleInvoice) -> list[Period]:
    """The upfront fee's periods that earlier invoices may have billed past the bundle's
    end, recorded late (``ended_late``): from the one holding the end to the last one
    starting before this invoice's advance target (whose periods ``fee_lines`` bills with
    the end as it is now). None for a one-shot fee or a fee due at its periods' end."""
    if rule.timing != "upfront" or held.end is None or not ended_late(held, invoice):
        return []
    target = invoice.which.advance
    schedule = _fee_periods(held, rule, target.zone.key)
    if schedule is None:
        return []
    found = []
    n = max(schedule.index_of_day(held.end), 0)
    while (part := schedule.period(n)).first_day < target.first_day:
        n += 1
        if part.end_day > held.end:
            found.append(part)
    return found


# What earlier invoices that stand billed of a bundle's fees: (rule position, the line's
# period start, its exact amount) per line, charges and credits (``_FEES_NET_SQL``).
FeeNet = tuple[int, datetime, int]


def fee_credit_lines(
    held: Held,
    rule: Rule,
    invoice: BundleInvoice,
    parts: Sequence[Period],
    billed: Sequence[FeeNet],
) -> list[Line]:
    """The credits of the fee's periods ``parts`` (``credited_fee_periods``) for the days
    earlier invoices billed past the bundle's end: each period's lines that stand, net
    (a credit's first day lies in the period it credits), less what its days of service
    cost (``prorate(fee, days used, period days)``, as ``_fee_line`` bills them), exact to
    the micro-unit, one line each, rounded once. Recomputed from what is billed, never
    from what was credited before: a re-draft gives the same credit, a later invoice
    finds the period settled and credits nothing more (and a bundle's end moved earlier
    again credits only the days it adds). Credit only: nothing is charged here."""
    found = []
    for part in parts:
        net = sum(
            exact
            for position, start, exact in billed
            if position == rule.position
            and part.start.timestamp() <= start.timestamp() < part.end.timestamp()
        )
        used = _active_days(held, part)
        over = net - prorate(rule.amount or 0, used, part.days)
        if over > 0:
            again = any(
                exact < 0 and position == rule.position and part.start <= start < part.end
                for position, start, exact in billed
            )
            found.append(_fee_credit(held, rule, part, over, invoice, again))
    return found


def _fee_credit(
    held: Held, rule: Rule, part: Period, over: int, invoice: BundleInvoice, again: bool
) -> Line:
    """The credit line of ``over`` micro-units billed of the fee period ``part`` past the
    bundle's end: it starts on the first unused day and names the bundle and rule, so that
    a later invoice counts it in what the period was billed. ``again``: an earlier invoice
    credited some of the unused days already (the end moved earlier since), which the
    line says, its amount being what is left to credit."""
    assert held.end is not None
    first = max(held.end, part.first_day)
    unused = (part.end_day - first).days
    label = f"{held.name}: {rule.description}"
    return _line(
        "bundle_fee",
        f"Credit: {label} {part.label} unused ({unused}/{part.days} days)"
        f"{', less credited before' if again else ''}"[:200],
        (local_midnight(first, part.zone), part.end),
        1,
        -over,
        invoice.currency,
        tax_code=held.tax_code,
        bundle=held.id,
        rule=rule.position,
    )


@dataclass(frozen=True, slots=True)
class Overcredited:
    """A fee period a void invoice holds a line of, whose adjustments on earlier invoices
    that stand are not what their other standing lines ask (``_FEES_OVERCREDITED_SQL``):
    the rule's position, the period's end, the other lines' net (``net``, exact), the
    adjustments' net (take-backs less their reversals), the first day the standing credits
    (``credited_from``) and adjustments (``adjusted_from``) start on, and the numbers of
    the void invoices that charged (``voided``) or credited (``voided_credits``) it and of
    the standing invoices holding its adjustments (``adjusting``)."""

    position: int
    period_end: datetime
    net: int
    adjusted: int
    credited_from: datetime | None
    adjusted_from: datetime | None
    voided: tuple[str, ...]
    voided_credits: tuple[str, ...]
    adjusting: tuple[str, ...]

    @property
    def due(self) -> int:
        """What is left to adjust, exact: the surplus the standing credits give past the
        standing charges (never below nothing), less what take-backs adjusted already;
        negative, a take-back to reverse."""
        return max(-self.net, 0) - self.adjusted

    @property
    def first(self) -> datetime:
        """The adjustment's first day: the standing credits', else the adjustments'."""
        first = self.credited_from or self.adjusted_from
        assert first is not None  # a period with no standing line is not read
        return first


def _invoices(numbers: Sequence[str]) -> str:
    """``invoice INV-1`` or ``invoices INV-1, INV-2``."""
    return f"invoice{'s' if len(numbers) > 1 else ''} {', '.join(numbers)}"


def _were(numbers: Sequence[str]) -> str:
    """``was`` or, of several invoices, ``were``."""
    return "were" if len(numbers) > 1 else "was"


def taken_back_lines(
    held: Held, rule: Rule, invoice: BundleInvoice, found: Sequence[Overcredited]
) -> list[Line]:
    """The adjustments of the fee's periods, recomputed from what stands of them: a credit
    of unused days (``fee_credit_lines``) given while the period's charge stood, that
    charge voided since (the void gave it back whole), is taken back: one positive line,
    the exact surplus (so what stands of the period nets to exactly nothing). A take-back
    whose credit was voided since (nothing of the period to take back any more) is
    reversed: one negative line of what it took back past what is due, naming the invoice
    holding it and the void one that held the credit. Rounded once, over the credits' (or
    the take-back's) days, naming the subscription bundle and rule: a later invoice finds
    the period's adjustments equal to what it asks and adds nothing. Each says what it
    is in ``Line.adjustment``, which is how a later invoice tells it from the period's
    other lines (its description may be cut before the words that say so)."""
    found_lines = []
    for over in found:
        if over.position != rule.position or over.due == 0:
            continue
        rounded = round_line(abs(over.due), invoice.currency)
        what = f"{held.name}: {rule.description} {_period_label(held, rule, invoice, over)}"
        if over.due > 0:
            voided = over.voided or over.voided_credits
            text = (
                f"Credit of {money(rounded, invoice.currency)} on {what} taken back:"
                f" {_invoices(voided)} {_were(voided)} voided"
            )
        else:
            voided = over.voided_credits or over.voided
            text = (
                f"Take-back of {money(rounded, invoice.currency)} on {what} reversed:"
                f" taken back by {_invoices(over.adjusting)}, the credit's"
                f" {_invoices(voided)} {_were(voided)} voided"
            )
        found_lines.append(
            _line(
                "bundle_fee",
                text[:200],
                (over.first, over.period_end),
                1,
                over.due,
                invoice.currency,
                tax_code=held.tax_code,
                bundle=held.id,
                rule=rule.position,
                adjustment=TAKE_BACK if over.due > 0 else TAKE_BACK_REVERSAL,
            )
        )
    return found_lines


def _period_label(held: Held, rule: Rule, invoice: BundleInvoice, over: Overcredited) -> str:
    """The label of the fee period ``over`` (``2026-02``): the rule's period holding its
    adjustment's first day, when it ends where the adjustment does; else the adjustment's
    local days (the bundle's start moved since)."""
    zone = invoice.which.advance.zone
    schedule = _fee_periods(held, rule, zone.key)
    if schedule is not None:
        part = schedule.period_containing(over.first)
        if part.end.timestamp() == over.period_end.timestamp():
            return part.label
    first = over.first.astimezone(zone).date()
    return f"{first.isoformat()}..{over.period_end.astimezone(zone).date().isoformat()}"


def _ends_early(held: Held) -> bool:
    """Whether the bundle ends before its commitment term with a fee to pay."""
    return (
        held.resiliation != "none"
        and held.commitment_months is not None
        and held.end is not None
        and held.end < add_months(held.start, held.commitment_months)
    )


def late_end(held: Held, invoice: BundleInvoice) -> bool:
    """Whether the bundle ended early before the invoice's arrears period by an end
    recorded after the account's newest earlier invoice was made (as decision 0046
    checks charges' ends): the invoice that held its last day of service could not bill
    its fee, so this one does, unless an earlier invoice billed it (``bundle_lines``)."""
    return (
        _ends_early(held)
        and held.end is not None
        and held.end <= invoice.which.arrears.first_day
        and invoice.newest is not None
        and held.end_recorded is not None
        and held.end_recorded > invoice.newest
    )


def resiliation_line(held: Held, invoice: BundleInvoice, late: bool = False) -> Line | None:
    """The early-termination fee, on the invoice whose arrears period holds the last day;
    ``late``: on this one, its end having been recorded after that one was made
    (``late_end``, the caller has checked that no earlier invoice billed it)."""
    if not _ends_early(held) or held.end is None or held.commitment_months is None:
        return None
    arrears = invoice.which.arrears
    term_end = add_months(held.start, held.commitment_months)
    last = held.end - timedelta(days=1)
    if not late and not arrears.first_day <= last < arrears.end_day:
        return None
    cur, fee = invoice.currency, held.resiliation_fee
    zone = arrears.zone
    span = (local_midnight(held.end, zone), local_midnight(term_end, zone))
    if held.resiliation == "fixed":
        return _line(
            "resiliation",
            f"{held.name}: early termination before {term_end}, fixed fee {money(fee, cur)}",
            span,
            1,
            fee,
            cur,
            tax_code=held.tax_code,
            bundle=held.id,
        )
    left = months_left(held.start, held.commitment_months, held.end)
    return _line(
        "resiliation",
        f"{held.name}: early termination, {left} of {held.commitment_months} months left"
        f" x {money(fee, cur)}",
        span,
        left,
        left * fee,
        cur,
        tax_code=held.tax_code,
        bundle=held.id,
    )


def shortfall_reopened(held: Held, invoice: BundleInvoice) -> date | None:
    """The first day from which the commitment shortfalls earlier invoices charged may no
    longer be what the bundle's dates now ask: its start, when it was recorded after the
    account's newest earlier invoice that stands was made (attached dated back), or its
    end, when that was recorded after it (detached or cancelled dated back), as decision
    0046 checks charges' ends. None when neither, when that day is not before this
    invoice's arrears period, on a named period's invoice (manual, on-demand: it bills its
    own days only) and where the plan's cycle is not known."""
    newest = invoice.newest
    if invoice.cycle is None or invoice.which.named or invoice.session or newest is None:
        return None
    days = []
    if held.recorded is not None and held.recorded > newest:
        days.append(held.start)
    if held.end is not None and held.end_recorded is not None and held.end_recorded > newest:
        days.append(held.end)
    first = min(days, default=None)
    if first is None or first >= invoice.which.arrears.first_day:
        return None
    return first


def invoiced_arrears(
    invoice: BundleInvoice, invoiced: Sequence[tuple[datetime, datetime]], first: date
) -> list[Period]:
    """The arrears periods (``lines.targets``) of the earlier invoices whose own periods
    are ``invoiced`` that end after ``first`` and begin before this invoice's, in order,
    each once."""
    cycle = invoice.cycle
    assert cycle is not None  # ``shortfall_reopened`` asks for it
    zone = cycle.zone
    found: dict[date, Period] = {}
    for start, end in invoiced:
        own = Period(start.astimezone(zone), end.astimezone(zone))
        arrears = targets(cycle, own, invoice.timing).arrears
        if first < arrears.end_day and arrears.first_day < invoice.which.arrears.first_day:
            found[arrears.first_day] = arrears
    return [found[day] for day in sorted(found)]


def standing_shortfall(
    held: Held, rule: Rule, period: Period, billed: Sequence[CommitmentBilled]
) -> int | None:
    """What earlier invoices that stand charged, net, for the commitment over ``period``
    (its shortfall and the lines settling it again), exact; a void invoice's line was
    given back with it and does not count. A line naming no subscription bundle (written
    before they did) counts when its description begins as this rule's shortfall does;
    None when such a line lies in the period and does not (another bundle's, or this one
    renamed since): which it is cannot be told, and the period is left as it stands
    rather than charged twice."""
    prefix = f"{held.name}: {rule.description}: minimum "
    net = 0
    for line in billed:
        if line.voided is not None or not period.contains(line.start):
            continue
        if line.sb_id is None:
            if not line.description.startswith(prefix):
                return None
            net += line.exact
        elif line.sb_id == held.id and line.position == rule.position:
            net += line.exact
    return net


def settled_shortfall_line(
    held: Held,
    rule: Rule,
    invoice: BundleInvoice,
    period: Period,
    figures: Indicator,
    standing: int,
) -> Line | None:
    """The line settling the commitment's shortfall over an earlier invoice's arrears
    ``period`` again: the shortfall its dates as now recorded ask (``period_minimum``
    less what the indicator measures over the bundle's days in it, nothing at or over the
    minimum, as ``usage_rule_lines`` charges it) less what earlier invoices that stand
    charged for it (``standing``), exact; a credit when negative; rounded once. None when
    they are equal: a re-draft gives the same line, and a later invoice finds the period
    settled. It names its subscription bundle and rule and starts on the period's first
    day, so that a later invoice counts it in what the period was charged."""
    cur = invoice.currency
    minimum, share = period_minimum(held, rule.amount or 0, period)
    spent = figures.value(rule.function or "sum") or 0
    due = minimum - spent if spent < minimum else 0
    change = due - standing
    if change == 0:
        return None
    on_usage = rule.zone is not None or rule.rate_type is not None
    return _line(
        "bundle_commitment",
        f"{held.name}: {rule.description} {period.label} settled again: minimum"
        f" {money(minimum, cur)}{share}, used {money(spent, cur)},"
        f" {money(standing, cur)} charged before,"
        f" {money(abs(change), cur)} {'credited' if change < 0 else 'charged'}"[:200],
        (period.start, period.end),
        spent,
        change,
        cur,
        zone=rule.zone,
        rate_type=rule.rate_type,
        tax_code=None if on_usage else held.tax_code,
        bundle=held.id,
        rule=rule.position,
    )


def voided_shortfall_line(
    held: Held,
    rule: Rule,
    invoice: BundleInvoice,
    period: Period,
    standing: int,
    voided: Sequence[str],
) -> Line | None:
    """The line settling again the commitment over an earlier arrears ``period`` whose
    own invoice is void (``voided``: the void invoices that changed it since it was last
    settled, ``changed_by_void``): the shortfall that invoice charged was given back with
    it and is the operator's to bill again, as a voided fee is (decision 0046), so nothing
    of the period's commitment stands: what the lines that stand still charge for it, net
    (``standing``: a credit settling it against the voided charge, mostly), is charged
    back (or credited), exact, rounded once, so that the period nets to nothing. None
    when nothing stands. It names its subscription bundle and rule and starts on the
    period's first day, as ``settled_shortfall_line``'s does: a later invoice finds the
    period at nothing and adds nothing."""
    if standing == 0:
        return None
    cur = invoice.currency
    change = -standing
    on_usage = rule.zone is not None or rule.rate_type is not None
    return _line(
        "bundle_commitment",
        f"{held.name}: {rule.description} {period.label} settled again:"
        f" {_invoices(voided)} {_were(voided)} voided, {money(standing, cur)} charged"
        f" since, {money(abs(change), cur)} {'charged back' if change > 0 else 'credited'}"[:200],
        (period.start, period.end),
        1,
        change,
        cur,
        zone=rule.zone,
        rate_type=rule.rate_type,
        tax_code=None if on_usage else held.tax_code,
        bundle=held.id,
        rule=rule.position,
    )


async def _late_fees_unbilled(
    conn: asyncpg.Connection, held: Sequence[Held], by_account: Mapping[str, BundleInvoice]
) -> set[int]:
    """The subscription bundles whose resiliation fee this invoice bills late: their
    end was recorded after an invoice that should have billed it, and no earlier
    invoice did."""
    late = [h for h in held if late_end(h, by_account[h.account_id])]
    if late:
        # Billed (or voided) by an earlier invoice already: not billed again. A fee line
        # from before migration 0052 names no subscription bundle: any of the account's
        # counts, so that none is billed twice (a second bundle's late fee on such an
        # account is left unbilled rather than risk it).
        billed = {
            r["subscription_bundle_id"]
            for r in await conn.fetch(
                _RESILIATED_SQL,
                [h.id for h in late],
                [by_account[h.account_id].which.invoice.start for h in late],
                [h.account_id for h in late],
            )
        }
        late = [h for h in late if h.id not in billed]
    return {h.id for h in late}


async def _load_held(
    conn: asyncpg.Connection, by_account: Mapping[str, BundleInvoice]
) -> list[Held]:
    """The accounts' bundles in their invoice's currency (others give no line)."""
    held = [
        Held(
            r["id"],
            r["account_id"],
            r["bundle_id"],
            r["name"],
            r["currency"],
            r["start"],
            r["end"],
            r["commitment_months"],
            r["resiliation"],
            r["resiliation_fee"],
            r["tax_code"],
            r["end_recorded"],
            r["recorded"],
        )
        for r in await conn.fetch(_BUNDLES_SQL, sorted(by_account))
    ]
    return [h for h in held if h.currency == by_account[h.account_id].currency]


async def _load_rules(conn: asyncpg.Connection, held: Sequence[Held]) -> dict[str, list[Rule]]:
    """Bundle -> its rules in order, for the bundles held."""
    rules: dict[str, list[Rule]] = defaultdict(list)
    for r in await conn.fetch(_RULES_SQL, sorted({h.bundle_id for h in held})):
        rules[r["bundle_id"]].append(
            Rule(
                r["bundle_id"],
                r["position"],
                r["kind"],
                r["description"],
                r["indicator"],
                r["allowance"],
                r["amount"],
                r["periodicity"],
                r["timing"],
                r["function"],
                r["measure"],
                r["unit"] or "",
                tuple(zip(r["thresholds"], r["rates"], strict=True)),
                r["zone"],
                r["rate_type"],
            )
        )
    return rules


# Subscription bundle -> its owed fees by rule position (``owed_fees``), and what earlier
# invoices billed of its fees from the first of them (``BilledFee`` per line).
Owed = dict[int, dict[int, list[OwedFee]]]
FeesBilled = dict[int, list[BilledFee]]


async def _owed_fees(
    conn: asyncpg.Connection,
    held: Sequence[Held],
    rules: Mapping[str, Sequence[Rule]],
    by_account: Mapping[str, BundleInvoice],
) -> tuple[Owed, FeesBilled]:
    """Each bundle's fee periods that an earlier invoice should have billed, and the fee
    lines earlier invoices billed of them: one query for the chunk, only for the bundles
    with such a period (a fee period starting inside the arrears period, mostly)."""
    owed: Owed = {}
    for h in held:
        invoice = by_account[h.account_id]
        for rule in rules.get(h.bundle_id, []):
            if rule.kind == "flat_fee" and (found := owed_fees(h, rule, invoice)):
                owed.setdefault(h.id, {})[rule.position] = found
    billed: FeesBilled = defaultdict(list)
    if not owed:
        return owed, billed
    asked = [h for h in held if h.id in owed]
    since = [
        min((f.start for fees in owed[h.id].values() for f in fees), key=datetime.timestamp)
        for h in asked
    ]
    # The invoice that billed a fee period ahead is at most two of its cycle's periods
    # before it (three of the invoice's own, for months' unequal lengths); a named
    # (manual, on-demand) period says nothing of its neighbours' lengths: read them all.
    floors: list[datetime | None] = []
    for h, start in zip(asked, since, strict=True):
        which = by_account[h.account_id].which
        floors.append(
            None if which.named else start - 3 * (which.invoice.end - which.invoice.start)
        )
    for r in await conn.fetch(
        _FEES_BILLED_SQL,
        [h.id for h in asked],
        [h.account_id for h in asked],
        [by_account[h.account_id].which.invoice.start for h in asked],
        since,
        floors,
    ):
        billed[r["sb_id"]].append(
            (
                r["subscription_bundle_id"],
                r["bundle_rule_position"],
                r["period_start"],
                r["description"],
            )
        )
    return owed, billed


# (Subscription bundle, rule position) -> its fee periods to credit, and subscription
# bundle -> what earlier invoices billed of its fees (``fee_credit_lines``).
Credited = dict[tuple[int, int], list[Period]]
FeesNet = dict[int, list[FeeNet]]


async def _fees_net(
    conn: asyncpg.Connection,
    held: Sequence[Held],
    rules: Mapping[str, Sequence[Rule]],
    by_account: Mapping[str, BundleInvoice],
) -> tuple[Credited, FeesNet]:
    """Each bundle's upfront fee periods that may have been billed past its end recorded
    late, and what earlier invoices billed of its fees from the first of them: one query
    for the chunk, only for such bundles (none, mostly)."""
    credited: Credited = {}
    for h in held:
        for rule in rules.get(h.bundle_id, []):
            parts = credited_fee_periods(h, rule, by_account[h.account_id])
            if rule.kind == "flat_fee" and parts:
                credited[h.id, rule.position] = parts
    nets: FeesNet = defaultdict(list)
    if not credited:
        return credited, nets
    since: dict[int, datetime] = {}
    for (sb_id, _), parts in credited.items():
        first = parts[0].start
        if sb_id not in since or first.timestamp() < since[sb_id].timestamp():
            since[sb_id] = first
    asked = [h for h in held if h.id in since]
    for r in await conn.fetch(
        _FEES_NET_SQL,
        [h.id for h in asked],
        [h.account_id for h in asked],
        [by_account[h.account_id].which.invoice.start for h in asked],
        [since[h.id] for h in asked],
    ):
        nets[r["sb_id"]].append((r["bundle_rule_position"], r["period_start"], r["exact_amount"]))
    return credited, nets


async def _fees_overcredited(
    conn: asyncpg.Connection, held: Sequence[Held], by_account: Mapping[str, BundleInvoice]
) -> dict[int, list[Overcredited]]:
    """Subscription bundle -> its fee periods credited past what stands billed of them
    (``taken_back_lines``): one query for the chunk, only for the bundles with an end (a
    credit of unused days needs one) on a cycle's invoice (a named period's bills its own
    days only, and gives no credit)."""
    asked = [h for h in held if h.end is not None and not by_account[h.account_id].which.named]
    found: dict[int, list[Overcredited]] = defaultdict(list)
    if not asked:
        return found
    for r in await conn.fetch(
        _FEES_OVERCREDITED_SQL,
        [h.id for h in asked],
        [h.account_id for h in asked],
        [by_account[h.account_id].which.invoice.start for h in asked],
    ):
        found[r["sb_id"]].append(
            Overcredited(
                r["position"],
                r["period_end"],
                r["base"],
                r["adjusted"],
                r["credited_from"],
                r["adjusted_from"],
                tuple(r["charged"]),
                tuple(r["credited"]),
                tuple(r["adjusting"]),
            )
        )
    return found


def _looks_back(invoice: BundleInvoice) -> bool:
    """Whether the invoice may settle earlier periods' shortfalls again: a cycle's invoice
    whose plan's cycle is known (a named period's bills its own days only)."""
    return invoice.cycle is not None and not invoice.which.named and not invoice.session


async def _voided(
    conn: asyncpg.Connection,
    held: Sequence[Held],
    by_account: Mapping[str, BundleInvoice],
) -> dict[int, list[VoidedInvoice]]:
    """Subscription bundle -> the void invoices of earlier periods of its account, with
    the commitment lines of it they held (``_VOIDED_SQL``): one query for the chunk's
    bundles with a commitment on a cycle's invoice."""
    found: dict[int, list[VoidedInvoice]] = defaultdict(list)
    if not held:
        return found
    for r in await conn.fetch(
        _VOIDED_SQL,
        [h.id for h in held],
        [h.account_id for h in held],
        [by_account[h.account_id].which.invoice.start for h in held],
    ):
        found[r["sb_id"]].append(
            VoidedInvoice(
                r["number"] or "",
                (r["period_start"], r["period_end"]),
                r["voided_at"],
                tuple(r["line_starts"]),
            )
        )
    return found


async def _shortfall_periods(
    conn: asyncpg.Connection,
    committed: Sequence[Held],
    by_account: Mapping[str, BundleInvoice],
    voided: Mapping[int, Sequence[VoidedInvoice]],
) -> dict[int, dict[date, tuple[Period, bool, bool]]]:
    """Subscription bundle -> its earlier arrears periods to look at for
    ``_settled_shortfalls``, by first day: (the period, whether a standing invoice billed
    it, whether its dates changed since, ``shortfall_reopened``). Only the bundles with a
    period to look at appear; for them (none, mostly) one query reads the periods
    invoiced from the earliest day asked (``_INVOICED_SQL``)."""
    reopened_from: dict[int, date] = {}
    for h in committed:
        if first := shortfall_reopened(h, by_account[h.account_id]):
            reopened_from[h.id] = first
    candidates: dict[int, list[Period]] = {}
    for h in committed:
        invoice = by_account[h.account_id]
        # Only the voids no invoice since has seen: an older one was settled by the
        # invoice made after it, and looking again would read the history back to its
        # period on every run, for good.
        unseen = unseen_voids(voided.get(h.id, []), invoice.newest)
        if unseen and invoice.cycle is not None:
            before = invoice.which.arrears.first_day
            if looked := voided_periods(invoice.cycle, invoice.timing, before, unseen):
                candidates[h.id] = looked
    asked = [h for h in committed if h.id in reopened_from or h.id in candidates]
    if not asked:
        return {}
    since: dict[int, date] = {}
    for h in asked:
        days = [p.first_day for p in candidates.get(h.id, [])]
        if h.id in reopened_from:
            days.append(reopened_from[h.id])
        since[h.id] = min(days)
    invoiced: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    for r in await conn.fetch(
        _INVOICED_SQL,
        [h.id for h in asked],
        [h.account_id for h in asked],
        [by_account[h.account_id].which.invoice.start for h in asked],
        [local_midnight(since[h.id], by_account[h.account_id].which.arrears.zone) for h in asked],
    ):
        invoiced[r["sb_id"]].append((r["period_start"], r["period_end"]))
    # Each bundle's periods to look at, by first day: whether a standing invoice billed it
    # (settled to what the dates ask; else to nothing) and whether its dates changed since
    # (``shortfall_reopened``: settled whatever the voids; else only where one changed it).
    standing_periods = {
        h.id: invoiced_arrears(by_account[h.account_id], invoiced[h.id], since[h.id]) for h in asked
    }
    periods: dict[int, dict[date, tuple[Period, bool, bool]]] = {}
    for h in asked:
        billed_by = {p.first_day: p for p in standing_periods[h.id]}
        chosen: dict[date, tuple[Period, bool, bool]] = {}
        if (first := reopened_from.get(h.id)) is not None:
            for p in standing_periods[h.id]:
                if first < p.end_day:
                    chosen[p.first_day] = (p, True, True)
        for p in candidates.get(h.id, []):
            if p.first_day not in chosen:
                chosen[p.first_day] = (
                    billed_by.get(p.first_day, p),
                    p.first_day in billed_by,
                    False,
                )
        if chosen:
            periods[h.id] = chosen
    return periods


async def _shortfalls_to_settle(
    conn: asyncpg.Connection,
    reopened: Sequence[Held],
    rules: Mapping[str, Sequence[Rule]],
    by_account: Mapping[str, BundleInvoice],
    periods: Mapping[int, Mapping[date, tuple[Period, bool, bool]]],
    voided: Mapping[int, Sequence[VoidedInvoice]],
) -> list[tuple[Held, Rule, Period, bool, tuple[str, ...], int]]:
    """The (bundle, commitment rule, period) that ``_settled_shortfalls`` settles again,
    in order, each with whether the period is settled to what its dates ask, the void
    invoices that changed it and its standing shortfall: one query reads the periods'
    commitment lines (``_SHORTFALLS_SQL``), and all is decided before any usage is read."""
    billed: dict[int, list[CommitmentBilled]] = defaultdict(list)
    for r in await conn.fetch(
        _SHORTFALLS_SQL,
        [h.id for h in reopened],
        [h.account_id for h in reopened],
        [by_account[h.account_id].which.invoice.start for h in reopened],
        [periods[h.id][min(periods[h.id])][0].start for h in reopened],
    ):
        billed[r["sb_id"]].append(
            CommitmentBilled(
                r["subscription_bundle_id"],
                r["bundle_rule_position"],
                r["description"],
                r["period_start"],
                r["exact_amount"],
                r["number"],
                (r["billed_start"], r["billed_end"]),
                r["created_at"],
                r["voided_at"],
            )
        )
    # What each (bundle, rule, period) is settled to, decided before any usage is read:
    # a period a void touched is settled again only where the void changed it since it
    # was last settled (``changed_by_void``); the others add nothing and are not measured.
    settle: list[tuple[Held, Rule, Period, bool, tuple[str, ...], int]] = []
    for h in reopened:
        invoice = by_account[h.account_id]
        cycle = invoice.cycle
        assert cycle is not None  # ``_looks_back``
        for rule in rules.get(h.bundle_id, []):
            if rule.kind != "commitment":
                continue
            for day in sorted(periods[h.id]):
                period, asks, dated = periods[h.id][day]
                changed: tuple[str, ...] = ()
                if not dated:
                    changed = changed_by_void(
                        cycle,
                        invoice.timing,
                        (h.id, rule.position),
                        period,
                        billed[h.id],
                        voided.get(h.id, []),
                    )
                    if not changed:
                        continue
                standing = standing_shortfall(h, rule, period, billed[h.id])
                if standing is not None:
                    settle.append((h, rule, period, asks, changed, standing))
    return settle


async def _shortfall_usage(
    conn: asyncpg.Connection,
    reopened: Sequence[Held],
    rules: Mapping[str, Sequence[Rule]],
    settle: Sequence[tuple[Held, Rule, Period, bool, tuple[str, ...], int]],
) -> tuple[dict[tuple[int, date], int], dict[tuple[int, str], Indicator]]:
    """The usage ``_settled_shortfalls`` measures again: (bundle, period's first day) ->
    its key, and (key, indicator) -> the indicator over the bundle's active days in that
    period, for the periods settled to what their dates ask; one usage query, none where
    no such period has active days."""
    # The indicators over each (bundle, period) settled to what its dates ask that the
    # bundle is active in, keyed by its index here: one bundle has several periods, which
    # the usage query keeps apart by that key.
    measured: list[tuple[Held, Period, tuple[datetime, datetime]]] = []
    keys: dict[tuple[int, date], int] = {}
    for h, _, period, asks, _, _ in settle:
        if not asks or (h.id, period.first_day) in keys:
            continue
        if window := _active_in(h, (period.start, period.end), period.zone):
            keys[h.id, period.first_day] = len(measured)
            measured.append((h, period, window))
    figures: dict[tuple[int, str], Indicator] = {}
    if measured:
        extremes = any(
            rule.kind == "commitment" and rule.function in ("min", "max")
            for h in reopened
            for rule in rules.get(h.bundle_id, [])
        )
        for r in await conn.fetch(
            _EXTREMES_SQL if extremes else _USAGE_SQL,
            list(range(len(measured))),
            [h.account_id for h, _, _ in measured],
            [h.bundle_id for h, _, _ in measured],
            [w[0] for _, _, w in measured],
            [w[1] for _, _, w in measured],
        ):
            if r["what"] == "indicator":
                figures[r["sb_id"], r["indicator"]] = Indicator(
                    r["events"], r["total"] or 0, r["average"], r["low"], r["high"], r["net"] or 0
                )
    return keys, figures


async def _settled_shortfalls(
    conn: asyncpg.Connection,
    held: Sequence[Held],
    rules: Mapping[str, Sequence[Rule]],
    by_account: Mapping[str, BundleInvoice],
) -> dict[tuple[int, int], list[Line]]:
    """(Subscription bundle, rule position) -> the lines settling again the commitment's
    shortfalls over earlier invoices' arrears periods: for the bundles whose dates changed
    after those invoices were made (``shortfall_reopened``), each period from that day
    (``settled_shortfall_line``); and for the periods a void changed since they were last
    settled again (``changed_by_void``): settled to what the dates ask where the period's
    own invoice stands (the settling invoice voided), to nothing where it is void
    (``voided_shortfall_line``). The void invoices are read first, one query, and only
    those voided after the account's newest earlier invoice that stands was made count
    (``unseen_voids``); then, only for the bundles with a period to look at (none,
    mostly), three queries for the chunk: the periods invoiced (``_shortfall_periods``),
    their commitment lines (``_shortfalls_to_settle``), and the indicators over the
    bundles' days in the periods to settle again as now recorded (none where no void
    changed them; ``_shortfall_usage``)."""
    found: dict[tuple[int, int], list[Line]] = defaultdict(list)
    committed = [
        h
        for h in held
        if any(rule.kind == "commitment" for rule in rules.get(h.bundle_id, []))
        and _looks_back(by_account[h.account_id])
    ]
    voided = await _voided(conn, committed, by_account)
    periods = await _shortfall_periods(conn, committed, by_account, voided)
    reopened = [h for h in committed if h.id in periods]
    if not reopened:
        return found
    settle = await _shortfalls_to_settle(conn, reopened, rules, by_account, periods, voided)
    keys, figures = await _shortfall_usage(conn, reopened, rules, settle)
    for h, rule, period, asks, changed, standing in settle:
        invoice = by_account[h.account_id]
        if not asks:
            line = voided_shortfall_line(h, rule, invoice, period, standing, changed)
        else:
            key = keys.get((h.id, period.first_day))
            measures = NO_EVENTS
            if key is not None:
                measures = figures.get((key, rule.indicator or ""), NO_EVENTS)
            line = settled_shortfall_line(h, rule, invoice, period, measures, standing)
        if line is not None:
            found[h.id, rule.position].append(line)
    return found


async def bundle_lines(
    conn: asyncpg.Connection, invoices: Sequence[BundleInvoice]
) -> dict[str, list[Line]]:
    """Account -> its bundle lines on its invoice, for a chunk's invoices; reads only.

    Lines come per subscription bundle (by id), its rules in order, then its
    resiliation fee. Bundles in a currency other than the invoice's give none. A flat
    fee's periods that earlier invoices should have billed and did not come before its
    own (``owed_fees``).
    """
    by_account = {i.account_id: i for i in invoices}
    held = await _load_held(conn, by_account)
    if not held:
        return {}
    late_ids = await _late_fees_unbilled(conn, held, by_account)
    rules = await _load_rules(conn, held)
    owed, fees_billed = await _owed_fees(conn, held, rules, by_account)
    credited, fees_net = await _fees_net(conn, held, rules, by_account)
    overcredited = await _fees_overcredited(conn, held, by_account)
    settled = await _settled_shortfalls(conn, held, rules, by_account)
    spans = {h.id: _active_window(h, by_account[h.account_id]) for h in held}
    active = [h for h in held if spans[h.id] is not None]
    windows = [w for h in active if (w := spans[h.id]) is not None]
    figures: dict[tuple[int, str], Indicator] = {}
    shares: dict[tuple[int, str], list[Part]] = defaultdict(list)
    free: dict[tuple[int, int], list[Part]] = defaultdict(list)
    if active:
        measured = [
            rule
            for h in active
            for rule in rules.get(h.bundle_id, [])
            if rule.kind in ("discount", "commitment")
        ]
        extremes = any(rule.function in ("min", "max") for rule in measured)
        rows = await conn.fetch(
            _EXTREMES_SQL if extremes else _USAGE_SQL if measured else _FREE_ONLY_SQL,
            [h.id for h in active],
            [h.account_id for h in active],
            [h.bundle_id for h in active],
            [w[0] for w in windows],
            [w[1] for w in windows],
        )
        for r in rows:
            found = Indicator(
                r["events"], r["total"] or 0, r["average"], r["low"], r["high"], r["net"] or 0
            )
            if r["what"] == "free":
                free[r["sb_id"], r["position"]].append(Part(r["zone"], r["rate_type"], found))
            elif r["what"] == "share":
                shares[r["sb_id"], r["indicator"]].append(Part(r["zone"], r["rate_type"], found))
            else:
                figures[r["sb_id"], r["indicator"]] = found
    lines: dict[str, list[Line]] = defaultdict(list)
    for h in sorted(held, key=lambda h: h.id):
        invoice = by_account[h.account_id]
        span = spans[h.id]
        for rule in rules.get(h.bundle_id, []):
            if rule.kind == "flat_fee":
                due = owed.get(h.id, {}).get(rule.position, [])
                if due:
                    lines[h.account_id] += owed_fee_lines(
                        h, rule, invoice, due, fees_billed.get(h.id, [])
                    )
                lines[h.account_id] += fee_lines(h, rule, invoice)
                if ended := credited.get((h.id, rule.position)):
                    lines[h.account_id] += fee_credit_lines(
                        h, rule, invoice, ended, fees_net.get(h.id, [])
                    )
                if over := overcredited.get(h.id):
                    lines[h.account_id] += taken_back_lines(h, rule, invoice, over)
                continue
            # Earlier periods' shortfalls settled again come before this period's.
            lines[h.account_id] += settled.get((h.id, rule.position), [])
            if span is None and rule.kind != "commitment":
                continue
            parts = (
                free.get((h.id, rule.position), [])
                if rule.kind == "free"
                else shares.get((h.id, rule.indicator or ""), [])
            )
            lines[h.account_id] += usage_rule_lines(
                h,
                rule,
                figures.get((h.id, rule.indicator or ""), NO_EVENTS),
                parts,
                invoice,
                span or invoice.window,
            )
        if (fee := resiliation_line(h, invoice, h.id in late_ids)) is not None:
            lines[h.account_id].append(fee)
    return dict(lines)
