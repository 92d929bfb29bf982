-- A number's end (freed_on, migration 0068) written by every release, whichever release of
-- ocs gave it back.
--
-- 0068 fills freed_on for numbers given back before it, from their number.released events,
-- and this version's release writes it. A process of the release before 0068 still
-- running during an upgrade (between `ocs db migrate` and its restart, docs/operations.md,
-- "Upgrading") gives a number back without it: that number's next holder could be
-- back-dated over the days its last holder held it, free of charge (decision 0030,
-- addendum). Every release writes its number.released event in the transaction that
-- frees the number, so the day is taken from the event as it is stored, here: a
-- release that wrote freed_on itself loses nothing (GREATEST), and other events pay
-- only the WHEN test.
CREATE FUNCTION events_number_freed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE number_set_numbers
    SET freed_on = GREATEST(freed_on, (NEW.data ->> 'on')::date)
    WHERE number = NEW.data ->> 'number' AND account_id IS NULL
      AND (freed_on IS NULL OR freed_on < (NEW.data ->> 'on')::date);
    RETURN NULL;
END
$$;

CREATE TRIGGER events_number_freed AFTER INSERT ON events
FOR EACH ROW WHEN (NEW.kind = 'number.released') EXECUTE FUNCTION events_number_freed();
