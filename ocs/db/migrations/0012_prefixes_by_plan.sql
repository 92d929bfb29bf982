-- A plan's rate deck in a partition of its own (list-partitioned by plan), so that a
-- plan's first deck is COPYed into a fresh table with no index, its primary key is
-- built once over the filled table, and the table is ATTACHed as the plan's
-- partition, all in the import's one transaction (issue 4, decision 0007). For 1M
-- rows: COPY into the indexed table ~3.0 s, against COPY ~0.65 s + building the
-- index over presorted rows ~0.75 s + the ATTACH's check of the rows ~0.12 s.
-- Re-imports by difference and every read go through `prefixes` as before.
--
-- A plan's partition is named prefixes_<md5 of the plan id's UTF-8> (catalog.prefix_table)
-- and is created by import_deck on the plan's first import: there is no default
-- partition, and import_deck is the only writer (0003). The rows already stored move
-- into their plans' partitions here, with statistics (autovacuum may be off).
ALTER TABLE prefixes RENAME TO prefixes_0011;
ALTER INDEX prefixes_pkey RENAME TO prefixes_0011_pkey;

CREATE TABLE prefixes (
    plan_id  TEXT NOT NULL,
    prefix   TEXT NOT NULL,
    zone_id  BIGINT NOT NULL,
    PRIMARY KEY (plan_id, prefix)
) PARTITION BY LIST (plan_id);

DO $$
DECLARE
    plan TEXT;
    part TEXT;
BEGIN
    FOR plan IN SELECT DISTINCT plan_id FROM prefixes_0011 LOOP
        part := 'prefixes_' || md5(convert_to(plan, 'UTF8'));  -- as catalog.prefix_table
        EXECUTE format('CREATE TABLE %I (LIKE prefixes)', part);
        EXECUTE format(
            'INSERT INTO %I (plan_id, prefix, zone_id) SELECT plan_id, prefix, zone_id'
            ' FROM prefixes_0011 WHERE plan_id = %L ORDER BY prefix',
            part, plan
        );
        EXECUTE format('ALTER TABLE %I ADD PRIMARY KEY (plan_id, prefix)', part);
        EXECUTE format('ANALYZE %I', part);
        EXECUTE format('ALTER TABLE prefixes ATTACH PARTITION %I FOR VALUES IN (%L)', part, plan);
    END LOOP;
END
$$;

DROP TABLE prefixes_0011;
