-- RADIUS front end: NAS clients, account credentials and expiry, caller ids,
-- and the termination cause of each CDR.

ALTER TABLE accounts ADD COLUMN password_digest TEXT;
ALTER TABLE accounts ADD COLUMN expires_at TIMESTAMPTZ;

-- Caller ids (Calling-Station-Id) that identify an account without a PIN ("pinless").
CREATE TABLE account_callers (
    caller      TEXT PRIMARY KEY CHECK (caller ~ '^[0-9]{1,32}$'),
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE
);

ALTER TABLE cdrs ADD COLUMN termination_cause TEXT NOT NULL DEFAULT 'normal';
ALTER TABLE cdrs ADD COLUMN nas TEXT;

-- RADIUS clients: a source address or network, its shared secret and policy.
CREATE TABLE nas_clients (
    name                              TEXT PRIMARY KEY,
    network                           CIDR NOT NULL UNIQUE,
    secret                            TEXT NOT NULL CHECK (length(secret) >= 1),
    require_message_authenticator     BOOLEAN NOT NULL DEFAULT true,
    created_at                        TIMESTAMPTZ NOT NULL DEFAULT now()
);
