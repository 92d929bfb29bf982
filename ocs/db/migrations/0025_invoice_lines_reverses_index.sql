-- A credit note's lines point at the lines they reverse (invoice_lines.reverses_line).
-- Without an index on that column, every draft line deleted when a draft is recomputed
-- makes PostgreSQL scan the whole table for the foreign key: a rerun of 80,000 lines ran
-- over ten minutes; with it, 1.4 s (benchmarks/billing.py, benchmarks/RESULTS.md).
CREATE INDEX IF NOT EXISTS invoice_lines_reverses_idx
    ON invoice_lines (reverses_line) WHERE reverses_line IS NOT NULL;
