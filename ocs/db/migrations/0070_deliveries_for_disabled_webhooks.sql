-- A disabled webhook's events wait for it (decision 0029, addendum "a webhook disabled
-- and enabled"): the fan-out makes a delivery row for every webhook whose kinds take the
-- event, enabled or not. The deliverers claim only enabled webhooks' rows (their claim
-- and their next-due query), so a disabled one's rows wait, and enabling it is only the
-- flag: it had to read the whole outbox under a lock on events to make the rows this
-- trigger did not (every payment and posting waited meanwhile). The email rows are made
-- as migration 0039 made them.
CREATE OR REPLACE FUNCTION events_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_deliveries (event_id, channel, webhook_id)
    SELECT e.id, 'webhook', w.id
    FROM new_events e JOIN webhooks w
      ON cardinality(w.kinds) = 0 OR e.kind = ANY (w.kinds);
    INSERT INTO event_deliveries (event_id, channel)
    SELECT e.id, 'email' FROM new_events e
    WHERE e.kind IN ('invoice.posted', 'dunning.step')
      AND EXISTS (SELECT 1 FROM subscriptions s
                  WHERE s.account_id = e.subject AND s.billing_email <> '');
    -- Wakes the deliverers at commit (a rolled-back statement notifies nobody).
    PERFORM pg_notify('ocs_event_deliveries', '');
    RETURN NULL;
END
$$;
