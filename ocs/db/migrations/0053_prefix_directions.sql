-- A prefix rates calls only in the directions its deck gave it (decision 0009). A deck
-- whose tariffs go both ways stores each prefix's directions in `decks.lines`, as a
-- third column: "prefix<TAB>zone_id<TAB>directions", 1 outbound, 2 inbound, 3 both.
-- Before, a prefix given for one direction rated calls in every direction its zone had
-- a tariff in (44 given inbound only in zone UK, which 447 rates outbound, took outbound
-- calls to 4420 from prefix 4). Documents of decks whose tariffs all go one way keep
-- two columns, and so do those stored before this migration, which cannot tell: each
-- of their prefixes keeps rating every direction its zone has a tariff in, until the
-- deck is imported again.
--
-- The `prefixes` view gains `direction`: 'outbound' or 'inbound' for a prefix given in
-- that direction only, NULL for one rated in every direction its zone has a tariff in.
CREATE OR REPLACE VIEW prefixes AS
SELECT d.plan_id,
       split_part(line, E'\t', 1) AS prefix,
       split_part(line, E'\t', 2)::bigint AS zone_id,
       CASE split_part(line, E'\t', 3) WHEN '1' THEN 'outbound' WHEN '2' THEN 'inbound' END
           AS direction
FROM decks d,
     string_to_table(rtrim(convert_from(d.lines, 'UTF8'), E'\n'), E'\n') AS line;
