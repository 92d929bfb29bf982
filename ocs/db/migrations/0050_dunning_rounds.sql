-- An invoice paid in full and reopened later (a gateway's refund or chargeback takes its
-- money back) is dunned again from its first notice: a round of dunning each time it
-- is reopened. Its steps and its suspension are kept per round; before, the unique keys
-- (invoice, step, notice) and (invoice) let a reopened invoice whose suspension was
-- taken in an earlier round never be dunned again (session 22).
ALTER TABLE invoices ADD COLUMN dunning_round INTEGER NOT NULL DEFAULT 0;

ALTER TABLE dunning_steps ADD COLUMN round INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dunning_steps DROP CONSTRAINT dunning_steps_invoice_id_step_notice_key;
ALTER TABLE dunning_steps ADD CONSTRAINT dunning_steps_invoice_round_step_notice_key
    UNIQUE (invoice_id, round, step, notice);

ALTER TABLE dunning_suspensions ADD COLUMN round INTEGER NOT NULL DEFAULT 0;
ALTER TABLE dunning_suspensions DROP CONSTRAINT dunning_suspensions_invoice_id_key;
ALTER TABLE dunning_suspensions ADD CONSTRAINT dunning_suspensions_invoice_round_key
    UNIQUE (invoice_id, round);
