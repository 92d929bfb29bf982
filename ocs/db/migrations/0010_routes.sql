-- Route sets and carrier cost decks (ocs/charging/routes.py): a plan may name a
-- route set, an ordered list of carriers; each carrier has a cost deck (prefix ->
-- rate, longest match). At authorize a carrier whose cost exceeds the sell price
-- is dropped, and a call with no carrier left is refused unless the plan allows
-- negative margin. Amounts are BIGINT micro-units, durations INTEGER seconds.

CREATE TABLE carriers (
    id    TEXT PRIMARY KEY,
    name  TEXT NOT NULL
);

-- A carrier's cost deck. Like plan prefixes (0003), a million-row deck is written
-- by COPY and per-row constraint triggers would cost ~11 µs a row: the one writer
-- (routes_store.import_carrier_rates) checks the carrier exists, under a row lock,
-- and validates every prefix in the same transaction, so there is no foreign key
-- and no prefix regex here. Deleting a carrier must delete its rates itself.
CREATE TABLE carrier_rates (
    carrier_id        TEXT NOT NULL,
    prefix            TEXT NOT NULL,
    connect_fee       BIGINT NOT NULL CHECK (connect_fee >= 0),
    first_block       INTEGER NOT NULL CHECK (first_block >= 0),
    increment         INTEGER NOT NULL CHECK (increment >= 1),
    price_per_minute  BIGINT NOT NULL CHECK (price_per_minute >= 0),
    PRIMARY KEY (carrier_id, prefix)
);

CREATE TABLE route_sets (
    id  TEXT PRIMARY KEY
);

-- A route set's carriers in order: position 0 is tried first.
CREATE TABLE route_set_carriers (
    route_set_id  TEXT NOT NULL REFERENCES route_sets (id) ON DELETE CASCADE,
    position      INTEGER NOT NULL CHECK (position >= 0),
    carrier_id    TEXT NOT NULL REFERENCES carriers (id),
    PRIMARY KEY (route_set_id, position),
    UNIQUE (route_set_id, carrier_id)
);

ALTER TABLE plans
    ADD COLUMN route_set_id TEXT NULL REFERENCES route_sets (id),
    ADD COLUMN allow_negative_margin BOOLEAN NOT NULL DEFAULT false;
