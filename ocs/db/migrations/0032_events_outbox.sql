-- Issue 14: the outbox of notifications and provisioning events. A change and its event
-- are written in one transaction (ocs/events/outbox.py, emit): a rolled-back change
-- leaves no event, and a committed one is never lost; delivery reads this table.
CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind ~ '^[a-z_]+\.[a-z_]+$'),  -- e.g. invoice.posted
    subject     TEXT NOT NULL,             -- what it is about: an account id, an invoice id
    data        JSONB NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX events_subject_idx ON events (subject, id);
