-- Area-code tables (issue 4, ocs.charging.code_lists): prefix -> destination name, for
-- CDRs and IVR announcements; never for rating. One document per list, as decks are
-- stored (0013, decision 0009): "prefix<TAB>name" lines sorted by prefix.
-- plan_id '' is the standard table; any other value is that plan's custom code list,
-- which replaces the standard table for the plan whole. The writers
-- (ocs.charging.catalog_store) lock the plan's row first, so a list never names a
-- plan that does not exist; no foreign key, because '' names none.
CREATE TABLE code_lists (
    plan_id      TEXT PRIMARY KEY,
    codes        INTEGER NOT NULL CHECK (codes > 0),
    lines        BYTEA NOT NULL,
    imported_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE code_lists ALTER COLUMN lines SET STORAGE EXTERNAL;

-- The name of the called destination, from the area-code table the call's plan
-- used when the call was charged (NULL: no table names it).
ALTER TABLE cdrs ADD COLUMN destination_name TEXT;
