-- Refunds whose balance debit is still to be made (a crash, or a failed Redis call,
-- between the refund's commit and its debit): the billing worker looks for them every
-- pass (payments.finish_pending), as for payments not credited (0035).
CREATE INDEX payment_refunds_undebited_idx ON payment_refunds (id) WHERE debited_at IS NULL;
