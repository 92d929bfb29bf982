"""Invoice documents at run scale: the PDF of every invoice of a billing run (issue 14).

Renders, as ``ocs.billing.documents`` does for one invoice (its facts read
from PostgreSQL, laid out with babel, rendered by Typst), every invoice of a
run, in ``--processes`` worker processes started together, each writing its
PDFs into a temporary directory (removed afterwards unless ``--keep``); the
stored copies under the data directory are not touched. Prints the count,
the seconds, pages and documents per second (and pages per worker CPU-second,
which a busy machine does not skew), the peak RSS (each worker's
kernel peak, ``ru_maxrss``) and the machine.

The default database is the billing benchmark's (``benchmarks/billing.py``,
which leaves its run posted); ``--run`` picks a run, else the latest one.

    python benchmarks/documents.py --processes 4
    python benchmarks/documents.py --database-url postgresql://postgres@127.0.0.1:5432/x --run 1
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import multiprocessing.synchronize
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.machine import describe
from ocs.billing.document_data import load_facts
from ocs.billing.documents import document_name, render_facts
from ocs.config import Settings

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/ocs_billing_bench"
# A page object of the PDF (not the /Pages tree): Typst writes them uncompressed.
PAGE = re.compile(rb"/Type\s*/Page(?![A-Za-z])")

# (worker, documents, pages, bytes, seconds, CPU seconds, peak RSS MB)
Report = tuple[int, int, int, int, float, float, float]


def pages_of(pdf: bytes) -> int:
    """How many pages a PDF has."""
    return len(PAGE.findall(pdf))


def max_rss_mb() -> float:
    """This process's peak resident memory, in MB (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_settings(locale: str) -> Settings:
    """The issuer and locale the documents are rendered with."""
    return Settings(
        invoice_issuer_name="Example Telecom Ltd",
        invoice_issuer_address="1 High Street|London EC1A 1BB|VAT GB123456789",
        invoice_locale=locale,
    )


def worker_process(
    number: int,
    database_url: str,
    invoice_ids: list[int],
    out_dir: str,
    locale: str,
    ready: multiprocessing.synchronize.Barrier,
    results: multiprocessing.Queue[Report],
) -> None:
    """One worker: connect, warm the renderer, wait for the others, render its share."""
    settings = bench_settings(locale)
    folder = Path(out_dir)

    async def main() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            if invoice_ids:
                # The first document loads the fonts: not part of the timed work.
                render_facts(await load_facts(conn, invoice_ids[0]), settings)
            await asyncio.to_thread(ready.wait)
            started, cpu = time.perf_counter(), time.process_time()
            pages = size = 0
            for invoice_id in invoice_ids:
                facts = await load_facts(conn, invoice_id)
                pdf = render_facts(facts, settings)
                (folder / document_name(facts.id, facts.number)).write_bytes(pdf)
                pages += pages_of(pdf)
                size += len(pdf)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            await conn.close()
        results.put((number, len(invoice_ids), pages, size, elapsed, cpu, max_rss_mb()))

    uvloop.run(main())


async def run_invoices(database_url: str, run_id: int | None) -> tuple[int, list[int]]:
    """The run (given, or the latest) and its invoices' ids."""
    conn = await asyncpg.connect(database_url)
    try:
        if run_id is None:
            run_id = await conn.fetchval("SELECT max(id) FROM invoice_runs")
            if run_id is None:
                raise SystemExit("no invoice run in this database")
        rows = await conn.fetch("SELECT id FROM invoices WHERE run_id = $1 ORDER BY id", run_id)
    finally:
        await conn.close()
    return run_id, [row["id"] for row in rows]


def render_all(
    database_url: str, ids: list[int], processes: int, out_dir: Path, locale: str
) -> tuple[float, list[Report]]:
    """Every document by ``processes`` workers started together: (wall seconds, reports)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)
    results: multiprocessing.Queue[Report] = context.Queue()
    shares = [ids[i::processes] for i in range(processes)]
    workers = [
        context.Process(
            target=worker_process,
            args=(i, database_url, share, str(out_dir), locale, ready, results),
        )
        for i, share in enumerate(shares)
    ]
    for worker in workers:
        worker.start()
    ready.wait()  # connections made and fonts loaded before the clock starts
    started = time.perf_counter()
    reports = [results.get() for _ in workers]
    elapsed = time.perf_counter() - started
    for worker in workers:
        worker.join()
        if worker.exitcode != 0:
            raise SystemExit(f"a worker failed (exit code {worker.exitcode})")
    return elapsed, sorted(reports)


def main() -> None:
    """Parse the flags, render the run's documents, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database-url", default=DEFAULT_DATABASE)
    parser.add_argument("--run", type=int, help="the invoice run (default: the latest)")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument("--locale", default="en_GB", help="the invoice locale (babel)")
    parser.add_argument("--keep", action="store_true", help="keep the PDFs and say where")
    parser.add_argument(
        "--limit", type=int, help="only the run's first N invoices (a sample; says so)"
    )
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("--processes: at least 1")
    run_id, ids = uvloop.run(run_invoices(args.database_url, args.run))
    if not ids:
        raise SystemExit(f"run {run_id} has no invoices")
    of_run = len(ids)
    if args.limit is not None:
        ids = ids[: max(1, args.limit)]
    processes = min(args.processes, len(ids))
    out_dir = Path(tempfile.mkdtemp(prefix="ocs-invoice-pdfs-"))
    try:
        elapsed, reports = render_all(args.database_url, ids, processes, out_dir, args.locale)
        written = sum(1 for _ in out_dir.iterdir())
    finally:
        if not args.keep:
            shutil.rmtree(out_dir, ignore_errors=True)
    documents = sum(r[1] for r in reports)
    pages = sum(r[2] for r in reports)
    size = sum(r[3] for r in reports)
    print(
        f"run {run_id}: {documents} invoices of its {of_run}, {pages} pages,"
        f" {written} files written"
    )
    if documents < of_run:
        print(f"  a sample: the whole run at this rate ~{of_run * elapsed / documents:.0f} s")
    print(f"  {elapsed:.2f} s with {processes} processes")
    print(f"  {pages / elapsed:.1f} pages/s, {documents / elapsed:.1f} documents/s")
    cpu = sum(r[5] for r in reports)
    # What a core does uncontended: the workers' own CPU time (the database's not counted).
    print(f"  {pages / cpu:.1f} pages per worker CPU-second ({cpu:.2f} CPU-s in all)")
    print(f"  {size / documents / 1024:.1f} KiB a document on average")
    for number, count, _, _, took, used, rss in reports:
        print(
            f"  worker {number}: {count} documents in {took:.2f} s ({used:.2f} CPU-s),"
            f" peak RSS {rss:.0f} MB"
        )
    print(
        f"  peak RSS: workers {max(r[6] for r in reports):.0f} MB (largest),"
        f" main {max_rss_mb():.0f} MB"
    )
    if args.keep:
        print(f"  PDFs in {out_dir}")
    print(f"  machine: {describe()}")


if __name__ == "__main__":
    main()
