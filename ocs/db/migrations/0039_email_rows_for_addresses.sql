-- An event's email delivery row is made only when its account has a billing email: a
-- 100,000-invoice posting made 100,000 rows only to skip them (2.3-3.4 s inside the
-- numbering transaction, benchmarks/RESULTS.md). An address removed after posting is still
-- found missing at sending time, and the row is skipped then (decision 0029).
CREATE OR REPLACE FUNCTION events_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_deliveries (event_id, channel, webhook_id)
    SELECT e.id, 'webhook', w.id
    FROM new_events e JOIN webhooks w
      ON w.enabled AND (cardinality(w.kinds) = 0 OR e.kind = ANY (w.kinds));
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
