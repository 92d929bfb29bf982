-- PIN and password digests are keyed by a server secret, the pepper (decision 0054),
-- which never reaches PostgreSQL or Redis. Only a check value made from it is kept
-- here, one row: a process started with another pepper (another file, a data dir of
-- its own) finds out at its start and stops, instead of making digests no other
-- process opens. The check value tells nothing of a random pepper.
CREATE TABLE pepper_check (
    only_row    BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    fingerprint TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
