-- A plan's rate deck is one document, not a million rows (issue 4, decision 0009).
--
-- `decks.lines` holds the plan's prefixes as COPY text, one "prefix<TAB>zone_id" line
-- each, sorted by prefix. That is exactly what every `ocs serve` process reads to
-- build its matcher, so a reload is one read of ~13 MB for a million prefixes instead
-- of a COPY of a million rows, and an import writes one value instead of COPYing and
-- indexing a million rows (~1 s each for PostgreSQL, measured in 0007 and 0012).
-- An import replaces the document in its one transaction: readers see the old deck
-- or the new one, whole. import_deck is the only writer; it validates every prefix
-- (1 to 32 digits, once per plan) and writes only zone ids it read in the same
-- transaction, as 0003 already relied on.
--
-- STORAGE EXTERNAL: the value is stored out of line uncompressed, so neither the
-- import nor each reload spends time in pglz.
--
-- `prefixes` stays, as a view with its old columns, for reports and ad-hoc SQL.
CREATE TABLE decks (
    plan_id      TEXT PRIMARY KEY REFERENCES plans (id) ON DELETE CASCADE,
    prefixes     INTEGER NOT NULL CHECK (prefixes > 0),
    lines        BYTEA NOT NULL,
    imported_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE decks ALTER COLUMN lines SET STORAGE EXTERNAL;

INSERT INTO decks (plan_id, prefixes, lines)
SELECT plan_id,
       count(*),
       convert_to(string_agg(prefix || E'\t' || zone_id || E'\n', '' ORDER BY prefix COLLATE "C"),
                  'UTF8')
FROM prefixes
GROUP BY plan_id;

-- Its partitions (0012) go with it. No CASCADE: a report view an operator built on
-- `prefixes` stops the migration, to be dropped by hand, rather than vanish.
DROP TABLE prefixes;

CREATE VIEW prefixes AS
SELECT d.plan_id,
       split_part(line, E'\t', 1) AS prefix,
       split_part(line, E'\t', 2)::bigint AS zone_id
FROM decks d,
     string_to_table(rtrim(convert_from(d.lines, 'UTF8'), E'\n'), E'\n') AS line;
