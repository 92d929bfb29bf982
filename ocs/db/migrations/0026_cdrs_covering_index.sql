-- Drafts read a chunk's CDRs of the window once (billing.realtime.cdr_totals), summed by
-- account, zone, direction, rate type, service and counter. CDRs arrive in time order, so
-- one account's calls lie on as many heap pages as it has calls: through the plain
-- (account_id, stopped_at) index a chunk of 500 accounts at 10M CDRs read ~50,000 heap
-- pages (~0.4 s a read). This index carries every column that query (and the bundles'
-- usage query's filters) needs, so PostgreSQL answers it by an index-only scan (no heap
-- fetch once VACUUM, or autovacuum's insert threshold, marked the pages all-visible: a
-- run bills a closed period, whose CDRs have been vacuumed).
--
-- It replaces cdrs_account_idx (same key, so every query that used it uses this one):
-- a CDR insert (the ledger writer) still maintains two secondary indexes, each entry
-- wider. Measured at 10M CDRs (benchmarks/RESULTS.md, "Billing (issue 12)"): the old
-- index 387 MB, this one 1,248 MB, built in ~75 s on 2 cores; the ledger writer's CDR INSERT
-- 66 us a CDR warm against 68-71 us with the old index (wider entries: more page reads
-- when the index outgrows the cache; a cold first batch measured 294 us).
CREATE INDEX IF NOT EXISTS cdrs_account_covering_idx ON cdrs (account_id, stopped_at)
    INCLUDE (termination_cause, zone, direction, rate_type, destination, counter_id,
             counter_seconds, duration, billed_seconds, charged, entry_id);
DROP INDEX IF EXISTS cdrs_account_idx;
