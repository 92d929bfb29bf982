-- Tokens for the admin HTTP API (DESIGN: "Admin endpoints need a token with a role").
-- Only a SHA-256 digest of each token is kept: the token itself is shown once, when
-- `ocs tokens create` makes it. Revoking a token deletes its row.
CREATE TABLE api_tokens (
    name        TEXT PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9._-]{1,64}$'),
    role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    digest      BYTEA NOT NULL UNIQUE,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
