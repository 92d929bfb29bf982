-- Issue 12: the billing worker posts the runs it creates. A run marked auto_post is posted
-- by a worker once all its chunks are drafted; posted_at says its drafts are all posted
-- (a draft held back, e.g. by a failing tax engine, keeps it NULL: the next pass retries).
ALTER TABLE invoice_runs
    ADD COLUMN auto_post BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN posted_at TIMESTAMPTZ;

CREATE INDEX invoice_runs_to_post_idx ON invoice_runs (id)
    WHERE auto_post AND posted_at IS NULL;
