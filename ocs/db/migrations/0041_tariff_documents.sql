-- A plan's tariffs are one document, as its deck is (decision 0009; issue 19).
--
-- A real numbering deck has ~41,000 zones: a row per tariff cost its import a COPY
-- with two foreign-key checks a row (~0.5 s for 41,000 rows on the dev machine) and
-- every serving process a read of as many rows (~0.15 s, then a Python object per
-- column), so a deck's time grew with its zones. `tariff_sets.document` holds a
-- plan's tariffs as one JSON value (UTF-8 in a BYTEA, stored out of line and
-- uncompressed like `decks.lines`): an array of `[zone_id, zone name, direction,
-- rate]` sorted by zone id then direction, the rate as ocs.rating.rates.Rate's array
-- form (connect_fee, first_block, increment, price_per_minute, tiers, max_cost,
-- cut_at_max_cost, per, surcharge_percent_bp, surcharge_flat, band_prices; trailing
-- defaults may be left out; a tier is [start, price_per_minute, increment, flat],
-- band prices [[band, price], ...] sorted by band). import_deck and set_tariff_shape
-- (ocs.catalog.store) are its only writers; they write only zone ids read from
-- `zones` or from the document itself in the same transaction, as 0013 does.
--
-- `tariffs` stays, as a view with its old columns, for reports and ad-hoc SQL.
CREATE TABLE tariff_sets (
    plan_id     TEXT PRIMARY KEY REFERENCES plans (id) ON DELETE CASCADE,
    tariffs     INTEGER NOT NULL CHECK (tariffs > 0),
    document    BYTEA NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE tariff_sets ALTER COLUMN document SET STORAGE EXTERNAL;

INSERT INTO tariff_sets (plan_id, tariffs, document)
SELECT t.plan_id,
       count(*),
       convert_to(
           json_agg(
               json_build_array(
                   t.zone_id,
                   z.name,
                   t.direction,
                   json_build_array(
                       t.connect_fee, t.first_block, t.increment, t.price_per_minute,
                       (SELECT coalesce(json_agg(json_build_array(
                                   x -> 'start', x -> 'price_per_minute',
                                   coalesce(x -> 'increment', '1'), coalesce(x -> 'flat', '0'))
                                   ORDER BY n), '[]')
                        FROM jsonb_array_elements(t.tiers) WITH ORDINALITY AS e (x, n)),
                       t.max_cost, t.cut_at_max_cost, t.per, t.surcharge_percent_bp,
                       t.surcharge_flat,
                       (SELECT coalesce(json_agg(json_build_array(b.band, b.price)
                                   ORDER BY b.band COLLATE "C"), '[]')
                        FROM jsonb_each(t.band_prices) AS b (band, price))))
               ORDER BY t.zone_id, t.direction)::text,
           'UTF8')
FROM tariffs t
JOIN zones z ON z.id = t.zone_id
GROUP BY t.plan_id;

DROP TABLE tariffs;

CREATE VIEW tariffs AS
SELECT s.plan_id,
       (t ->> 0)::bigint AS zone_id,
       t ->> 2 AS direction,
       (t -> 3 ->> 0)::bigint AS connect_fee,
       (t -> 3 ->> 1)::integer AS first_block,
       (t -> 3 ->> 2)::integer AS increment,
       (t -> 3 ->> 3)::bigint AS price_per_minute,
       (SELECT coalesce(jsonb_agg(jsonb_build_object(
                   'start', x -> 0, 'price_per_minute', x -> 1,
                   'increment', coalesce(x -> 2, '1'), 'flat', coalesce(x -> 3, '0'))
                   ORDER BY n), '[]')
        FROM jsonb_array_elements(coalesce(t -> 3 -> 4, '[]')) WITH ORDINALITY AS e (x, n))
           AS tiers,
       coalesce((t -> 3 ->> 5)::bigint, 0) AS max_cost,
       coalesce((t -> 3 ->> 6)::boolean, false) AS cut_at_max_cost,
       coalesce((t -> 3 ->> 8)::integer, 0) AS surcharge_percent_bp,
       coalesce((t -> 3 ->> 9)::bigint, 0) AS surcharge_flat,
       (SELECT coalesce(jsonb_object_agg(x ->> 0, x -> 1), '{}')
        FROM jsonb_array_elements(coalesce(t -> 3 -> 10, '[]')) AS e (x)) AS band_prices,
       coalesce((t -> 3 ->> 7)::integer, 60) AS per
FROM tariff_sets s,
     jsonb_array_elements(convert_from(s.document, 'UTF8')::jsonb) AS t;
