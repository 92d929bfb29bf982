-- Billing (issue 12): on-demand sessions (call shops, hotels). Calls are allowed only
-- while a session is open on the account; closing it produces the session's invoice,
-- for [opened_at, closed_at). The account is locked (status locked, Redis "lock" =
-- "session") while no session is open.
CREATE TABLE billing_sessions (
    id          BIGSERIAL PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    opened_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    closed_at   TIMESTAMPTZ,
    invoice_id  BIGINT REFERENCES invoices (id) ON DELETE SET NULL,
    CHECK (closed_at IS NULL OR closed_at > opened_at),
    CHECK (closed_at IS NOT NULL OR invoice_id IS NULL)
);
-- At most one open session per account.
CREATE UNIQUE INDEX billing_sessions_one_open ON billing_sessions (account_id)
    WHERE closed_at IS NULL;
CREATE INDEX billing_sessions_account_idx ON billing_sessions (account_id, opened_at);
