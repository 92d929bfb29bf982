-- When a plan's prices last changed, and how many records of a usage import started
-- before it (decision 0050, addendum 2026-12-07).
--
-- Decks and tariffs have no effective dates: a usage import rates every record, a late
-- one too (March's calls imported after an April price change), by the plan as it is at
-- the import. `plans.prices_changed_at` is set (now(), in the writing transaction) by
-- every write that changes what a plan charges: a deck import that adds, changes or
-- removes a prefix, a tariff document written with other content (a deck's tariffs, a
-- tariff's shape), a rate by rate type set or removed (ocs.catalog.store's
-- mark_prices_changed). NULL: no such change since this migration, and none known
-- before it. Time bands, holidays and counters are not counted.
--
-- The existing plans start from what their documents tell: the deck's `imported_at` and
-- the tariffs' `updated_at` (each written by every import so far, so possibly a
-- re-import of the same prices); rates by rate type kept no time.
ALTER TABLE plans ADD COLUMN prices_changed_at TIMESTAMPTZ;

UPDATE plans p
SET prices_changed_at = greatest(
    (SELECT d.imported_at FROM decks d WHERE d.plan_id = p.id),
    (SELECT t.updated_at FROM tariff_sets t WHERE t.plan_id = p.id));

-- Charged records of the import that started before their plan's prices_changed_at:
-- rated at prices set after the call (the import's answer, `rows_priced_after_start`).
ALTER TABLE usage_imports ADD COLUMN rows_priced_after_start BIGINT NOT NULL DEFAULT 0;
