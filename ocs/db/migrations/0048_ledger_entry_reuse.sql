-- A ledger entry id PostgreSQL already holds for another entry is refused, not dropped.
--
-- The ledger writer inserts with ON CONFLICT so that a redelivered entry (a writer that
-- crashed between its commit and its acknowledgement) is written once. An id that comes
-- back with other content is not a redelivery: a Redis that lost its last writes (an AOF
-- missing its last second) on a host whose clock is now behind the lost ids generates
-- them again for new entries. DO NOTHING dropped those silently: a charge moved in Redis
-- with no ledger row or CDR, on no invoice. Now the insert fails for that row, the writer
-- sets it aside in the bucket's dead-letter stream (OcsLedgerDeadLetters fires), and the
-- operator re-inserts it under a new id. A redelivery (same account, kind, amount and
-- reference) still changes nothing.
CREATE FUNCTION ledger_entry_reused(entry TEXT) RETURNS TEXT LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger entry id % is already stored for another entry: its stream generated it again (a Redis that lost writes, a clock behind them)', entry
        USING ERRCODE = 'unique_violation';
END
$$;
