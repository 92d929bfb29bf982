-- When `ocs credentials rekey` last found no PIN or password digest of the old form (made
-- before the pepper, decision 0054) left in PostgreSQL or Redis; NULL: some may be left
-- (never re-keyed in full, or a re-key begun since and not finished). While it is set,
-- a PIN no new-form digest opens is not looked up by its old form as well: a wrong PIN
-- costs one Redis look-up, not two. Beside the pepper's check value, whose digests it is
-- about.
ALTER TABLE pepper_check ADD COLUMN old_forms_gone_at TIMESTAMPTZ;
