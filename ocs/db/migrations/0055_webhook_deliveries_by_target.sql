-- A webhook's deliveries in flight are limited (setting webhook_in_flight, decision 0029):
-- a receiver that stops answering held every sending slot for a whole timeout, and every
-- other webhook's events waited behind its backlog. A claim walks each enabled webhook's
-- due rows and counts its leased ones, by this index.
-- IF NOT EXISTS: a development database may hold these indexes already, made by this
-- migration when it was numbered 0059.
CREATE INDEX IF NOT EXISTS event_deliveries_target_idx ON event_deliveries (webhook_id, next_attempt_at, id)
    WHERE state = 'pending' AND webhook_id IS NOT NULL;
-- The rows each webhook is being sent now (few: an attempt's end clears its lease), which
-- a claim counts for every webhook: by the index above it read every pending row of a
-- webhook with a large backlog, on every claim.
CREATE INDEX IF NOT EXISTS event_deliveries_leased_idx ON event_deliveries (webhook_id, leased_until)
    WHERE state = 'pending' AND leased_until IS NOT NULL;
