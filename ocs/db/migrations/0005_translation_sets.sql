-- A plan's translation set: ordered regex rules turning dialled numbers into
-- E.164 digits before the prefix match (ocs/charging/translation.py).
ALTER TABLE plans ADD COLUMN translation JSONB NOT NULL DEFAULT '[]';
