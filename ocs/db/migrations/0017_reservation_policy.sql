-- How a plan's calls reserve funds (ocs.charging.lifecycle):
--   whole: a call holds what its longest call costs, as far as the funds go;
--   slice: a call holds slice_seconds at a time, extended by each update or interim;
--   share: a call holds at most the available funds divided by the free lines.
ALTER TABLE plans ADD COLUMN reservation_policy TEXT NOT NULL DEFAULT 'whole'
    CHECK (reservation_policy IN ('whole', 'slice', 'share'));
ALTER TABLE plans ADD COLUMN slice_seconds INTEGER NOT NULL DEFAULT 60
    CHECK (slice_seconds BETWEEN 1 AND 86400);
