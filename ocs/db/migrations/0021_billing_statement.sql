-- Billing (issue 12, item 5 "Lines"): the balance-forward statement every invoice
-- carries, and the lines that report what the real-time path did (usage events per
-- service, counter fees, counter usage). Decision 0020.
--
-- The statement is computed from the ledger when the draft is written and frozen with
-- the invoice at posting. Its figures are the ledger's exact micro-units (a balance is
-- not an invoice line and is not rounded):
--   closing_balance = previous_balance + payments - new_charges
--   new_charges     = debited + posting_charges
--   amount_due      = what the account owes after posting: max(-closing_balance, 0)
-- window_start/window_end: the ledger window of the statement (the usage window, the
-- same [start, end) the usage lines cover). A ledger entry of an invoice line
-- ("inv:<line id>") counts for that line's invoice, not for the moment it moved:
-- an earlier invoice's posting is in previous_balance, this invoice's own lines are
-- posting_charges. So a posted invoice's closing balance is the next one's previous
-- balance when their windows touch.
ALTER TABLE invoices ADD COLUMN window_start     TIMESTAMPTZ;
ALTER TABLE invoices ADD COLUMN window_end       TIMESTAMPTZ;
ALTER TABLE invoices ADD COLUMN prepaid          BOOLEAN NOT NULL DEFAULT true;
ALTER TABLE invoices ADD COLUMN previous_balance BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN payments         BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN debited          BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN posting_charges  BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN new_charges      BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN closing_balance  BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD COLUMN amount_due       BIGINT NOT NULL DEFAULT 0;
ALTER TABLE invoices ADD CONSTRAINT invoices_statement_adds_up CHECK (
    new_charges = debited + posting_charges
    AND closing_balance = previous_balance + payments - new_charges
    AND amount_due = GREATEST(-closing_balance, 0));
ALTER TABLE invoices ADD CONSTRAINT invoices_statement_window
    CHECK ((window_start IS NULL) = (window_end IS NULL) AND window_start <= window_end);

-- The state machine of 0018, with the statement frozen like the totals: a posted
-- invoice changes only by being voided, and a void keeps what it said.
CREATE OR REPLACE FUNCTION billing_invoice_transition() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.state <> 'draft' THEN
            RAISE EXCEPTION 'invoice %: a % invoice cannot be deleted', OLD.id, OLD.state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.state = 'draft' THEN
        IF NEW.state NOT IN ('draft', 'posted') THEN
            RAISE EXCEPTION 'invoice %: draft -> % is not allowed', OLD.id, NEW.state
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF (NEW.window_start, NEW.window_end, NEW.prepaid, NEW.previous_balance, NEW.payments,
        NEW.debited, NEW.posting_charges, NEW.new_charges, NEW.closing_balance, NEW.amount_due)
       IS DISTINCT FROM
       (OLD.window_start, OLD.window_end, OLD.prepaid, OLD.previous_balance, OLD.payments,
        OLD.debited, OLD.posting_charges, OLD.new_charges, OLD.closing_balance, OLD.amount_due)
    THEN
        RAISE EXCEPTION 'invoice %: the statement of a % invoice is final', OLD.id, OLD.state
            USING ERRCODE = 'check_violation';
    END IF;
    IF OLD.state = 'posted' AND NEW.state = 'void' AND OLD.kind = 'invoice'
       AND (NEW.id, NEW.account_id, NEW.kind, NEW.period_start, NEW.period_end, NEW.currency,
            NEW.number, NEW.subtotal, NEW.tax_total, NEW.total, NEW.invoice_date, NEW.posted_at)
           IS NOT DISTINCT FROM
           (OLD.id, OLD.account_id, OLD.kind, OLD.period_start, OLD.period_end, OLD.currency,
            OLD.number, OLD.subtotal, OLD.tax_total, OLD.total, OLD.invoice_date, OLD.posted_at)
    THEN
        RETURN NEW;
    END IF;
    IF OLD.state = 'posted' AND NEW.state = 'posted' AND NEW.number = OLD.number
       AND NEW.total = OLD.total AND NEW.subtotal = OLD.subtotal
       AND NEW.tax_total = OLD.tax_total AND NEW.account_id = OLD.account_id
       AND NEW.period_start = OLD.period_start AND NEW.voided_at IS NULL THEN
        RETURN NEW;  -- no change to what the invoice says (e.g. run_id set null)
    END IF;
    RAISE EXCEPTION 'invoice %: % -> % is not allowed (a posted invoice is final; void it)',
        OLD.id, OLD.state, NEW.state USING ERRCODE = 'check_violation';
END
$$;

-- Lines that report the real-time path (moves_money = false, like usage):
--   usage_event:   usage events (MB, kWh) of one service, from their CDRs: calls = events,
--                  quantity = the metered quantity, billed_quantity = what was rated;
--   counter:       one counter fee the real-time path debited (a ledger "fee" entry,
--                  reference counter:<id>:...), source_entry = that ledger entry;
--   counter_usage: one counter's seconds in the window, from the CDRs' counter columns:
--                  bundle_seconds from the bundle, paid_seconds paid from the balance
--                  (duration - counter seconds), calls = calls that drew on it; amount 0.
ALTER TABLE invoice_lines DROP CONSTRAINT invoice_lines_kind_check;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_kind_check
    CHECK (kind IN ('recurring', 'proration', 'one_time', 'usage', 'reversal',
                    'usage_event', 'counter', 'counter_usage'));
ALTER TABLE invoice_lines ADD COLUMN counter_id      TEXT;
ALTER TABLE invoice_lines ADD COLUMN bundle_seconds  BIGINT;
ALTER TABLE invoice_lines ADD COLUMN paid_seconds    BIGINT;
ALTER TABLE invoice_lines ADD COLUMN billed_quantity BIGINT;
ALTER TABLE invoice_lines ADD COLUMN source_entry    TEXT;
ALTER TABLE invoice_lines ADD CONSTRAINT invoice_lines_reports_only
    CHECK (kind NOT IN ('usage', 'usage_event', 'counter', 'counter_usage') OR NOT moves_money);
