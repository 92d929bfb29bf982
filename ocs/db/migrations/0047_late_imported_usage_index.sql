-- The late read (decision 0050): one account's imported CDRs written since a snapshot's
-- xmin. Partial, so the real-time path's CDRs (most of the table) pay no entry for it:
-- they reach PostgreSQL before a run drafts their period (the worker waits for the ledger
-- writer, decision 0021), so they are never late; nor do the CDRs written before
-- migration 0046 (no recorded_xid), which are never read as late.
--
-- Its own migration, so its own transaction: building it takes a SHARE lock on cdrs (reads
-- go on, the ledger writer's inserts wait for the build and catch up after), not the
-- ACCESS EXCLUSIVE lock 0046's ALTERs took, which would have stopped reads for the whole
-- build of a large table.
CREATE INDEX IF NOT EXISTS cdrs_imported_recorded_idx ON cdrs (account_id, recorded_xid)
    WHERE supplier IS NOT NULL AND recorded_xid IS NOT NULL;
