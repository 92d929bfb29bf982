-- Issue 14: delivering the outbox's events (migration 0032) to webhooks and by email
-- (decision 0029). A delivery row is made for every (event, target) in the transaction
-- that stores the event, by the trigger below, so a committed event always has its
-- deliveries and a rolled-back one has none.

-- Endpoints events are POSTed to, signed with their secret (Standard Webhooks).
CREATE TABLE webhooks (
    id          TEXT PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    url         TEXT NOT NULL CHECK (url ~ '^https?://[^\s]+$' AND length(url) <= 2000),
    -- whsec_<base64>: kept as is, since signing needs it; shown once, at creation.
    secret      TEXT NOT NULL CHECK (secret ~ '^whsec_[A-Za-z0-9+/=]+$'),
    kinds       TEXT[] NOT NULL DEFAULT '{}',      -- the kinds it takes; empty: every kind
    enabled     BOOLEAN NOT NULL DEFAULT true,
    description TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per (event, target): a webhook's POST, or the email of an event that has one.
-- Claimed with SELECT ... FOR UPDATE SKIP LOCKED and a lease (leased_until): a deliverer
-- that died holding one lets it go when its lease runs out. "attempts" counts claims.
CREATE TABLE event_deliveries (
    id               BIGSERIAL PRIMARY KEY,
    event_id         BIGINT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    channel          TEXT NOT NULL CHECK (channel IN ('webhook', 'email')),
    webhook_id       TEXT REFERENCES webhooks (id) ON DELETE CASCADE,
    state            TEXT NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'dead', 'skipped')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    leased_until     TIMESTAMPTZ,
    last_status      INTEGER,                -- the receiver's HTTP status, if it answered
    last_error       TEXT,
    delivered_at     TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((channel = 'webhook') = (webhook_id IS NOT NULL)),
    CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE UNIQUE INDEX event_deliveries_webhook_idx ON event_deliveries (event_id, webhook_id)
    WHERE channel = 'webhook';
CREATE UNIQUE INDEX event_deliveries_email_idx ON event_deliveries (event_id)
    WHERE channel = 'email';
-- What a deliverer looks for: pending rows by the time they are due.
CREATE INDEX event_deliveries_due_idx ON event_deliveries (next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX event_deliveries_state_idx ON event_deliveries (state, event_id);

-- Fan-out, once per statement (posting a run emits thousands of events in one INSERT):
-- a delivery for every enabled webhook taking the kind, and the email of the kinds that
-- send one (an invoice posted, a dunning step).
CREATE FUNCTION events_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_deliveries (event_id, channel, webhook_id)
    SELECT e.id, 'webhook', w.id
    FROM new_events e JOIN webhooks w
      ON w.enabled AND (cardinality(w.kinds) = 0 OR e.kind = ANY (w.kinds));
    INSERT INTO event_deliveries (event_id, channel)
    SELECT e.id, 'email' FROM new_events e WHERE e.kind IN ('invoice.posted', 'dunning.step');
    -- Wakes the deliverers at commit (a rolled-back statement notifies nobody).
    PERFORM pg_notify('ocs_event_deliveries', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER events_fan_out AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION events_fan_out();

-- Where invoices and notices are emailed: the subscription's billing contact.
ALTER TABLE subscriptions ADD COLUMN billing_email TEXT NOT NULL DEFAULT ''
    CONSTRAINT subscriptions_billing_email_check
    CHECK (billing_email = '' OR billing_email ~ '^[^@\s]+@[^@\s]+$');

-- Whether the account's funds do not cover its committed prorated charges (0009's
-- lock_prorated): its change is what account.locked / account.unlocked announce.
ALTER TABLE accounts ADD COLUMN prorated_locked BOOLEAN NOT NULL DEFAULT false;
