-- Issue 14: payments (decision 0027). A payment comes by hand, from a bank statement
-- file or from a gateway's webhook; each source's own id of it is a unique key, so a
-- payment given twice (a file imported again, a webhook redelivered) is stored once.
-- No card data: a gateway payment keeps the gateway's ids only.
CREATE TABLE payments (
    id            BIGSERIAL PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id),
    source        TEXT NOT NULL CHECK (source IN ('manual', 'bank', 'stripe')),
    external_id   TEXT NOT NULL CHECK (length(external_id) BETWEEN 1 AND 200),
    amount        BIGINT NOT NULL CHECK (amount > 0),
    currency      CHAR(3) NOT NULL,
    reference     TEXT NOT NULL DEFAULT '',     -- the remittance text, as received
    received_on   DATE NOT NULL,                -- the value date (the bank's, or today)
    allocated     BIGINT NOT NULL DEFAULT 0,    -- paid to invoices; the rest is credit
    refunded      BIGINT NOT NULL DEFAULT 0,
    ledger_entry  TEXT,                          -- the balance credit, once made
    credited_at   TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source, external_id),
    CHECK (allocated >= 0 AND refunded >= 0 AND allocated + refunded <= amount)
);
CREATE INDEX payments_account_idx ON payments (account_id, id);
-- Payments whose balance credit is still to be made (a crash between commit and credit).
CREATE INDEX payments_uncredited_idx ON payments (id) WHERE credited_at IS NULL;

-- What each payment paid of each invoice (oldest open invoice first).
CREATE TABLE payment_allocations (
    payment_id  BIGINT NOT NULL REFERENCES payments (id),
    invoice_id  BIGINT NOT NULL REFERENCES invoices (id),
    amount      BIGINT NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (payment_id, invoice_id)
);
CREATE INDEX payment_allocations_invoice_idx ON payment_allocations (invoice_id);

-- Refunds of a payment: a debit of the balance, once per (source, external id).
CREATE TABLE payment_refunds (
    id            BIGSERIAL PRIMARY KEY,
    payment_id    BIGINT NOT NULL REFERENCES payments (id),
    source        TEXT NOT NULL CHECK (source IN ('manual', 'stripe')),
    external_id   TEXT NOT NULL CHECK (length(external_id) BETWEEN 1 AND 200),
    amount        BIGINT NOT NULL CHECK (amount > 0),
    reopened      BIGINT NOT NULL DEFAULT 0 CHECK (reopened >= 0),  -- taken back from invoices
    ledger_entry  TEXT,
    debited_at    TIMESTAMPTZ,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source, external_id)
);
CREATE INDEX payment_refunds_payment_idx ON payment_refunds (payment_id);

-- Gateway events applied: a redelivered event id is answered without a second effect.
CREATE TABLE gateway_events (
    source       TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    payment_id   BIGINT REFERENCES payments (id),
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, event_id)
);
