"""A usage import: read files through a template, rate every record, debit each once.

Each record is, in file order:

1. read and classified by the template (``ocs.mediation.classify``), then its rate
   type overridden by the supplier's table; rejected when an earlier row of the
   import has its record id;
2. given its account (the account column, else the account of its member, else of
   its caller id) and rated by the account's plan at its own start time
   (``ocs.mediation.rating``);
3. skipped as a repeat when PostgreSQL already holds its supplier's record id for the
   same account and quantity, rejected when for another;
4. debited through the real-time Lua usage rule (``charge_batch.lua``, which runs
   ``charge.lua``'s rule), once per (supplier, record id), its CDR written by the
   ledger writer like a live call's, naming the supplier, rate type and template.

A supplier's imports run one at a time (a PostgreSQL advisory lock held throughout),
and each reads no row before the ledger writer has stored every ledger entry made
before it began, so step 3 sees every earlier import's CDRs (decision 0051). A running
import saves its counts every few seconds; one left ``running`` by a process that
ended is marked ``failed`` by the supplier's next import, or when it is shown.

An outbound call to a zone a usage counter covers draws on the account's counter
(bundle of seconds) as a live call does: the importer reads the account's counters
once, prices each record with the seconds the counter has left after the import's
earlier records, and ``charge_batch.lua`` uses those seconds only if the counter still
holds exactly what the record was priced with. When it does not (live calls held some
meanwhile, a new cycle began, a repeat used none), nothing is charged: the importer
waits for what it sent, reads the account's counters again and prices that account's
waiting records anew, in file order. A counter that refuses calls once used up
(``reject_on_threshold``) refuses a record that finds it empty; a record longer than
what it has left pays the rest at the zone's tariff, since the call took place.

A row the template refuses, or that cannot be given an account or a price, is
reported with its line number and every problem found, and written back in the
file's own format to the rejects file, which can be fixed and imported again.
``good_rows`` applies the good rows; ``all_or_nothing`` first reads, classifies
and rates the whole import, and applies nothing if any row is bad. A debit the
balance refuses (decision 0032) is a rejected row in either mode: the account's
later rows in the import are refused too, and none is ever charged past the
account's credit limit.
"""

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

import asyncpg
import msgpack
import msgspec
import numpy as np

from ocs import metrics
from ocs.balances import keys
from ocs.balances.script_args import UsageEvent
from ocs.balances.store import COUNTER_CHANGED, BalanceStore, CounterCycle
from ocs.catalog.snapshot import CatalogHolder, CatalogSnapshot
from ocs.errors import OcsError, Reason
from ocs.mediation import store as mediation_store
from ocs.mediation.classify import CompiledTemplate
from ocs.mediation.rating import RatedUsage, priced_with_counter, rate_record
from ocs.mediation.reader import open_file
from ocs.mediation.records import RowProblem, UsageRecord
from ocs.mediation.shipped import shipped_template
from ocs.mediation.template import Template

log = logging.getLogger("ocs.mediation")
T = TypeVar("T")

ImportMode = Literal["good_rows", "all_or_nothing"]
IMPORT_MODES: tuple[ImportMode, ...] = ("good_rows", "all_or_nothing")
# Records read and rated together; a chunk's PostgreSQL look-ups are one query each.
CHUNK = 2000
# Events a charge_batch.lua call takes: one bucket's (a script's keys share a slot).
# A bucket's events wait across chunks until they fill a batch, so at most
# BATCH x 1024 buckets records wait in memory.
BATCH = 64
# Batches that may be in flight while the next chunk is read and rated.
IN_FLIGHT = 64
# Problems an import's answer lists; the report file has them all.
SHOWN_PROBLEMS = 100
# Times a record is priced again because its counter changed under it before it is
# refused: each time follows a fresh read, so only a counter live calls keep changing
# gets there.
COUNTER_TRIES = 5
# Seconds between two saves of a running import's counts: a killed import shows how far
# it got, for one cheap UPDATE every few seconds.
SAVE_EVERY = 2.0
# Seconds the save of a running import's counts may take: a connection that hangs longer
# is taken for a lost session (and lock). And the seconds its connection's close may take
# before its socket is dropped.
SAVE_TIMEOUT = 5.0
CLOSE_TIMEOUT = 5.0
# Seconds between two tries for the supplier's lock, and two looks at the ledger streams.
LOCK_POLL = 0.2
LEDGER_POLL = 0.1
# What an import left running by a process that ended is marked with.
INTERRUPTED = "interrupted: the importing process ended before the import did"
# Record id digests kept in a dict before they join the sorted array (16 bytes a record).
SEEN_MERGE = 65_536


class ImportRequest(msgspec.Struct, frozen=True):
    """What to import: the template (by name; its latest version unless ``version``),
    the files in order, the mode, and where the rejects go (beside the first file)."""

    template: str
    files: tuple[str, ...]
    mode: ImportMode = "good_rows"
    version: int | None = None
    rejects_dir: str | None = None


class ProblemRow(msgspec.Struct, frozen=True):
    """A rejected row as the answer lists it: file, line and every problem."""

    file: str
    line: int
    problems: tuple[str, ...]


class ImportSummary(msgspec.Struct):
    """An import's outcome, as stored in ``usage_imports`` and answered."""

    id: int
    template: str
    template_version: str
    supplier: str
    mode: str
    state: str
    rows_read: int = 0
    rows_filtered: int = 0
    rows_charged: int = 0
    rows_repeated: int = 0
    rows_rejected: int = 0
    amounts: dict[str, int] = msgspec.field(default_factory=dict)
    rejects_path: str | None = None
    report_path: str | None = None
    problems: list[ProblemRow] = msgspec.field(default_factory=list)
    error: str | None = None


@dataclass(slots=True)
class _CounterDraw:
    """What a record that may draw on a usage counter needs to be priced again: its
    rating without the counter and its CDR fields."""

    rated: RatedUsage
    fields: dict[str, object]
    tries: int = 0


@dataclass(slots=True)
class _Prepared:
    """A record with its account, price and event, ready to debit; ``seq`` is its place
    in the import, ``draw`` set when a counter covers its zone."""

    record: UsageRecord
    file: str
    currency: str
    cost: int
    event: UsageEvent
    seq: int = 0
    draw: _CounterDraw | None = None


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """What a supplier's record imported before names, as its CDR holds it: the account
    debited, the quantity, and the member and caller id the row had."""

    account: str
    quantity: int
    member: str | None
    caller: str | None

    def named(self, what: Literal["account", "member", "caller"]) -> str:
        """The account, member or caller id the record had ("" for none)."""
        if what == "account":
            return self.account
        return (self.member if what == "member" else self.caller) or ""

    def same(
        self,
        what: Literal["account", "member", "caller"],
        named: str,
        account_id: str,
        quantity: int,
    ) -> bool:
        """Whether a row naming its account by ``what`` = ``named`` (``account_id`` now)
        with ``quantity`` is this record again. The earlier row named by the same
        column must have had the same value; one without that column (another template)
        is compared by the account it was debited."""
        if quantity != self.quantity:
            return False
        earlier = self.named(what)
        return earlier == named if earlier else self.account == account_id


@dataclass(slots=True)
class AccountPlan:
    """The plan an account is rated by and the currency it pays in."""

    plan_id: str
    currency: str


@dataclass(slots=True)
class _FileLayout:
    """What comes before a file's data (its skipped lines and header, as text) and its
    header's column names (None: no header)."""

    head: str | None
    header: tuple[str, ...] | None


@dataclass(slots=True)
class _Rejects:
    """The rejects file (rows in the file's own format) and the problems report.

    The rejects file takes the layout of the first file a row is rejected from. A row
    of another file whose header names the same columns in another order is written
    in that order; a file with other columns gets a rejects file of its own beside
    it (``<its name>.import-<id>.rejects.<ext>``), named in the report.
    """

    compiled: CompiledTemplate
    # Where the files go, and the import's first file (their names start with its).
    directory: Path
    first: Path
    # Set once the import's row is made (its files are named after it).
    import_id: int = 0
    rows: IO[str] | None = None
    report: IO[str] | None = None
    shown: list[ProblemRow] = field(default_factory=list)
    count: int = 0
    layouts: dict[str, _FileLayout] = field(default_factory=dict)
    written: _FileLayout | None = None
    own_files: dict[str, IO[str]] = field(default_factory=dict)

    @property
    def rows_path(self) -> Path:
        """The rejects file: the rejected rows in the first file's format."""
        first = self.first
        return (
            self.directory / f"{first.stem}.import-{self.import_id}.rejects{first.suffix or '.csv'}"
        )

    @property
    def report_path(self) -> Path:
        """The problems report: each rejected row's file, line and problems."""
        return self.directory / f"{self.first.stem}.import-{self.import_id}.problems.txt"

    def opened(self, file: str, compiled: CompiledTemplate) -> None:
        """Note a file's layout once its header is read (its rows may be rejected later,
        while the next file is read)."""
        self.layouts[file] = _FileLayout(compiled.render_header(), compiled.header)

    def add(self, file: str, line: int, cells: tuple[str, ...], problems: tuple[str, ...]) -> None:
        """Write one rejected row and its problems."""
        layout = self.layouts.get(file) or _FileLayout(None, None)
        if self.rows is None or self.report is None or self.written is None:
            self.rows = self.rows_path.open("w", encoding="utf-8", newline="")
            self.report = self.report_path.open("w", encoding="utf-8")
            self.written = layout
            if layout.head is not None:
                self.rows.write(layout.head)
        out = self.rows
        first = self.written.header
        if layout.header != first:
            if _same_columns(layout.header, first, cells):
                assert layout.header is not None and first is not None
                cells = tuple(cells[layout.header.index(name)] for name in first)
            else:
                out = self.own_file(file, layout)
        out.write(self.compiled.render(cells))
        self.report.write(f"{file}:{line}: {'; '.join(problems)}\n")
        self.count += 1
        if len(self.shown) < SHOWN_PROBLEMS:
            self.shown.append(ProblemRow(file, line, problems))

    def own_file(self, file: str, layout: _FileLayout) -> IO[str]:
        """The rejects file of a file whose columns differ from the first one's."""
        handle = self.own_files.get(file)
        if handle is None:
            name = Path(file)
            path = self.rows_path.with_name(
                f"{name.stem}.import-{self.import_id}.rejects{name.suffix or '.csv'}"
            )
            handle = self.own_files[file] = path.open("w", encoding="utf-8", newline="")
            if layout.head is not None:
                handle.write(layout.head)
            assert self.report is not None
            self.report.write(f"{file}: its columns differ; its rejected rows are in {path}\n")
        return handle

    def close(self) -> None:
        """Close the files (nothing is written when no row was rejected)."""
        for handle in (self.rows, self.report, *self.own_files.values()):
            if handle is not None:
                handle.close()


def _same_columns(
    header: tuple[str, ...] | None, first: tuple[str, ...] | None, cells: tuple[str, ...]
) -> bool:
    """Whether a row under ``header`` can be written under ``first``: the same distinct
    column names in another order, and the row has a cell for each."""
    return (
        header is not None
        and first is not None
        and len(cells) == len(header) == len(first) == len(set(header))
        and sorted(header) == sorted(first)
    )


class SeenIds:
    """Where each record id of an import was first read, so that a repeat is found.

    An id is kept as its 64-bit hash (Python's keyed SipHash of the text) with its place
    (file index and line, packed): the newest in a dict, the rest in sorted numpy arrays
    (levels). Every ``SEEN_MERGE`` ids the dict becomes a level, and a level is merged
    into the one before it while that one is at most twice its size: each id is thus
    moved about log2(n / SEEN_MERGE) times, so merging costs about the same an id
    however long the import (one sorted array merged into every time grew with the ids
    read), and a look-up searches a few levels (its cost grows slowly with the ids kept:
    1.1 us an id at 4 million, benchmarks/seen_record_ids.py). About 16 bytes an id, so
    a million-row file keeps its ids in about 17 MB, where a dict of the texts takes
    about 60 MB more than the texts.
    Two distinct ids of one import share a hash with a chance of about 3 in 100 million
    for a million rows; the later row is then rejected naming the earlier one, which the
    operator can see is another id.
    """

    def __init__(self) -> None:
        """Nothing seen yet."""
        # (digests, places) pairs, each sorted by digest, the largest first.
        self.levels: list[tuple[np.ndarray, np.ndarray]] = []
        self.recent: dict[int, int] = {}

    def clear(self) -> None:
        """Forget every id (the checking pass of an all-or-nothing import is over)."""
        self.levels = []
        self.recent = {}

    def claim(self, ids: list[str], places: list[int]) -> list[int]:
        """For each id in order, the place it was read at before (-1: first seen here);
        the new ones are kept, so a repeat within ``ids`` names its first place too."""
        hashes = list(map(hash, ids))
        recent = self.recent
        # Each id's first place among the newest (its own when it is new there).
        firsts = list(map(recent.setdefault, hashes, places))
        earlier = [
            -1 if first == place else first for first, place in zip(firsts, places, strict=True)
        ]
        if self.levels:
            # Looked for in sorted order: numpy's binary search then starts from the
            # previous key's place, and walks a large level far less at random.
            order = np.argsort(np.array(hashes, dtype=np.int64))
            wanted = np.array(hashes, dtype=np.int64)[order]
            for digests, kept_places in self.levels:
                at = np.minimum(np.searchsorted(digests, wanted), len(digests) - 1)
                for j in np.flatnonzero(digests[at] == wanted).tolist():
                    i = int(order[j])
                    if earlier[i] < 0:
                        del recent[hashes[i]]  # put there just now: a level has it
                    earlier[i] = int(kept_places[at[j]])
        if len(recent) >= SEEN_MERGE:
            self.merge()
        return earlier

    def merge(self) -> None:
        """Make the dict's ids a level, and merge levels while the one before is at most
        twice the size of the last (so sizes at least double toward the first)."""
        count = len(self.recent)
        digests = np.fromiter(self.recent.keys(), dtype=np.int64, count=count)
        places = np.fromiter(self.recent.values(), dtype=np.int64, count=count)
        order = np.argsort(digests)
        levels = self.levels
        levels.append((digests[order], places[order]))
        self.recent = {}
        while len(levels) > 1 and len(levels[-2][0]) <= 2 * len(levels[-1][0]):
            small_digests, small_places = levels.pop()
            big_digests, big_places = levels.pop()
            at = np.searchsorted(big_digests, small_digests)
            levels.append(
                (np.insert(big_digests, at, small_digests), np.insert(big_places, at, small_places))
            )


def _lock_key(supplier: str) -> str:
    """The text whose hash keys a supplier's import lock (``pg_advisory_lock``)."""
    return f"usage_import:{supplier}"


async def mark_interrupted(conn: asyncpg.Connection, supplier: str) -> list[int]:
    """Mark ``failed`` the supplier's imports still ``running``, given that the caller
    holds the supplier's import lock: a running import holds it from before its row is
    made until its state is final, so one left running belongs to a process that ended
    (PostgreSQL let its lock go with its session). The ids marked."""
    ids: list[int] = [
        r["id"]
        for r in await conn.fetch(
            "UPDATE usage_imports SET state = 'failed', error = $2, finished_at = now()"
            " WHERE supplier = $1 AND state = 'running' RETURNING id",
            supplier,
            INTERRUPTED,
        )
    ]
    for import_id in ids:
        log.warning(
            "usage import marked failed: its process ended",
            extra={"import": import_id, "supplier": supplier},
        )
    return ids


async def settle_interrupted(pool: asyncpg.Pool, supplier: str) -> None:
    """Mark ``failed`` the supplier's imports left running by a process that ended, if no
    import of the supplier runs now (its lock is free); nothing otherwise."""
    async with pool.acquire() as conn:
        key = _lock_key(supplier)
        if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            try:
                await mark_interrupted(conn, supplier)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)


async def _stopped(task: "asyncio.Task[None]") -> None:
    """Cancel a helper task and wait until it has ended (a cancellation of the caller
    itself still reaches it: ``asyncio.wait`` does not take the task's outcome)."""
    task.cancel()
    await asyncio.wait([task])


async def _to_the_end(work: Awaitable[T]) -> T:
    """Run ``work`` to its end even when the caller is cancelled meanwhile, then let the
    cancellation go on: an import's final state is stored, and stored before its
    supplier's lock goes (else the supplier's next import would take it for one whose
    process ended)."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.done():
                break
            cancelled = exc
    result = task.result()
    if cancelled is not None:
        raise cancelled
    return result


async def _closed(conn: asyncpg.Connection) -> None:
    """Close a connection of the import's own, also when cancelled meanwhile: its
    socket is then dropped, and PostgreSQL ends the session (and frees its locks).

    A failed close is logged, never raised: it runs in a ``finally``, where it would
    replace the import's outcome (a 503's OcsError, a stored ``done``) with its own
    error. asyncpg's ``close`` aborts the connection before raising (a hung network's
    ``TimeoutError``, say), and the session ends with its socket either way.
    """
    try:
        await conn.close(timeout=CLOSE_TIMEOUT)
    except Exception as exc:
        log.warning(
            "usage import's PostgreSQL connection did not close cleanly: dropped",
            extra={"error": str(exc)[:200] or type(exc).__name__},
        )
    finally:
        if not conn.is_closed():
            conn.terminate()


def session_lost(exc: BaseException) -> bool:
    """Whether a failed statement says the connection's session is gone (or hangs), and
    with it the locks it held: not a refusal of the statement, after which the session
    goes on (a ``statement_timeout`` is a ``QueryCanceledError``)."""
    return isinstance(
        exc,
        (
            asyncpg.PostgresConnectionError,
            asyncpg.InterfaceError,
            asyncpg.AdminShutdownError,
            asyncpg.CrashShutdownError,
            OSError,
            TimeoutError,
        ),
    )


class UsageImporter:
    """Runs usage imports with one process's stores: PostgreSQL, the balance scripts and
    the catalog snapshot the real-time path rates with."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        balances: BalanceStore,
        catalog: CatalogHolder,
        *,
        database_url: str,
        result_ttl: int,
        chunk_rows: int = CHUNK,
        supplier_wait: float = 600.0,
        ledger_wait: float = 60.0,
        save_every: float = SAVE_EVERY,
    ) -> None:
        """``database_url``: the PostgreSQL of ``pool``, where the import opens the
        connection of its own that holds its supplier's lock (outside the pool: see
        ``_lock_supplier``). ``chunk_rows``: records read and rated between two waits on
        PostgreSQL or Redis; a serving process takes fewer, so live calls wait less for
        the loop. ``supplier_wait``: seconds an import waits for the supplier's running
        import to end; ``ledger_wait``: for the ledger writer to store the entries made
        before it started; ``save_every``: seconds between two saves of its counts."""
        self._pool = pool
        self._database_url = database_url
        self.chunk_rows = chunk_rows
        self._balances = balances
        self._catalog = catalog
        self._result_ttl = result_ttl
        self.supplier_wait = supplier_wait
        self.ledger_wait = ledger_wait
        self.save_every = save_every

    async def template_of(self, name: str, version: int | None) -> tuple[str, Template]:
        """(version label, template): a stored template's, else a shipped one's."""
        async with self._pool.acquire() as conn:
            found = (
                await mediation_store.latest_template(conn, name)
                if version is None
                else await mediation_store.template_version(conn, name, version)
            )
        if found is not None:
            return f"{name}@{found[0]}", found[1]
        shipped = shipped_template(name) if version is None else None
        if shipped is None:
            raise OcsError(
                Reason.INVALID_FIELD,
                f"no usage template {name!r}" + (f" version {version}" if version else ""),
                field="template",
            )
        return f"{name}@shipped", shipped

    async def run(
        self, request: ImportRequest, progress: Callable[[int], None] | None = None
    ) -> ImportSummary:
        """Import the request's files; ``progress`` is told how many rows are done.

        The import holds its supplier's lock throughout (waiting up to ``supplier_wait``
        for a running one to end), and reads no row before the ledger writer has stored
        every ledger entry made before it began (up to ``ledger_wait``): the look-up of
        its record ids in PostgreSQL then sees every earlier import's CDRs.
        """
        if request.mode not in IMPORT_MODES:
            raise OcsError(Reason.INVALID_FIELD, f"unknown mode {request.mode!r}", field="mode")
        if not request.files:
            raise OcsError(Reason.INVALID_FIELD, "no file to import", field="files")
        paths = [Path(f) for f in request.files]
        for path in paths:
            if not path.is_file():
                raise OcsError(Reason.INVALID_FIELD, f"no such file: {path}", field="files")
        label, template = await self.template_of(request.template, request.version)
        # Before the lock and the import's row: a template that cannot be compiled (a
        # time zone gone from the system's data, say) is refused with its own error, and
        # leaves no row running (which would later be marked interrupted).
        compiled = CompiledTemplate(template)
        supplier = template.supplier
        lock = await self._lock_supplier(supplier)
        try:
            await mark_interrupted(lock, supplier)
            await self._ledger_written()
            overrides = await mediation_store.overrides_of(lock, supplier)
            # Made before the row too: once it exists, only _import's try may fail.
            summary = ImportSummary(0, request.template, label, supplier, request.mode, "running")
            rejects_dir = Path(request.rejects_dir) if request.rejects_dir else paths[0].parent
            rejects = _Rejects(compiled, rejects_dir, paths[0])
            run = _Run(self, summary, template, label, overrides, rejects, progress)
            import_id = await lock.fetchval(
                "INSERT INTO usage_imports (template, template_version, supplier, files, mode)"
                " VALUES ($1, $2, $3, $4, $5) RETURNING id",
                request.template,
                label,
                supplier,
                [str(p) for p in paths],
                request.mode,
            )
            summary.id = rejects.import_id = import_id
            return await self._import(lock, request, paths, compiled, run)
        finally:
            # Its session ending lets the lock go: no unlock to skip when cancelled.
            await _closed(lock)

    async def _import(
        self,
        lock: asyncpg.Connection,
        request: ImportRequest,
        paths: list[Path],
        compiled: CompiledTemplate,
        run: "_Run",
    ) -> ImportSummary:
        """The import itself, its row made and its supplier's lock held on ``lock``."""
        summary = run.summary
        rejects = run.rejects
        template = compiled.template
        saver = asyncio.create_task(self._save_progress(lock, run))
        try:
            if request.mode == "all_or_nothing":
                await run.pass_over(paths, compiled, debit=False)
                if rejects.count:
                    summary.state = "refused"
            if summary.state != "refused":
                if request.mode == "all_or_nothing":
                    run.reset()
                    compiled = CompiledTemplate(template)
                    rejects.compiled = compiled
                await run.pass_over(paths, compiled, debit=True)
                # The lock must have held to the end: its session still answering says
                # so (a lost session never comes back), and a lost one fails the import.
                await _stopped(saver)
                await self._save_progress_once(lock, run)
                run.check_lock()
                summary.state = "done"
        except BaseException as exc:
            # pass_over waited for the debits it had sent: the counts hold all it moved.
            summary.state = "failed"
            run.count()
            error = str(exc)[:500] or type(exc).__name__
            await _to_the_end(self._wrap_up(saver, summary, rejects, error))
            raise
        run.count()
        # A cancel now must not leave the row running: the debits are all made.
        return await _to_the_end(self._wrap_up(saver, summary, rejects))

    async def _wrap_up(
        self,
        saver: "asyncio.Task[None]",
        summary: ImportSummary,
        rejects: _Rejects,
        error: str | None = None,
    ) -> ImportSummary:
        """Stop the progress saver and store the import's final state."""
        await _stopped(saver)
        return await self._finish(summary, rejects, error=error)

    async def connect(self) -> asyncpg.Connection:
        """A PostgreSQL connection of the import's own, outside the pool (the one that
        holds its supplier's lock)."""
        return await asyncpg.connect(self._database_url)

    async def _lock_supplier(self, supplier: str) -> asyncpg.Connection:
        """A connection of the import's own holding the supplier's import lock, once no
        other import of the supplier holds it; refused after ``supplier_wait`` seconds.

        Not a pool connection: an import holds its lock for its whole run and needs the
        pool's connections meanwhile (look-ups, saves), so imports of as many suppliers
        as the pool has connections would each hold one and wait for another for ever,
        and live calls and the ledger writer would wait behind them. An import waiting
        for the lock keeps its connection (one PostgreSQL session, no pool slot).
        """
        conn = await self.connect()
        try:
            await self._wait_for_lock(conn, supplier)
        except BaseException:
            await _closed(conn)
            raise
        return conn

    async def _wait_for_lock(self, conn: asyncpg.Connection, supplier: str) -> None:
        """Take the supplier's lock on ``conn``, trying every ``LOCK_POLL`` seconds. It is
        tried once more after a poll even past ``supplier_wait``: a GET of an import
        takes the lock for an instant (``settle_interrupted``), which must not refuse
        an import when the wait is 0."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.supplier_wait
        key = _lock_key(supplier)
        tries = 0
        while True:
            if await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
                if tries:
                    log.warning(
                        "usage import goes on: the supplier's import ended",
                        extra={"supplier": supplier},
                    )
                return
            tries += 1
            running = await conn.fetchval(
                "SELECT max(id) FROM usage_imports WHERE supplier = $1 AND state = 'running'",
                supplier,
            )
            if tries > 1 and loop.time() >= deadline:
                raise OcsError(
                    Reason.UNAVAILABLE,
                    f"an import of supplier {supplier!r} is running"
                    + (f" (import {running})" if running is not None else "")
                    + f" and did not end within {self.supplier_wait:g} s: a supplier's imports"
                    " run one at a time; import again once it has ended",
                    field="template",
                )
            if tries == 1:
                log.warning(
                    "usage import waits for the supplier's running import",
                    extra={"supplier": supplier, "running": running},
                )
            await asyncio.sleep(LOCK_POLL)

    async def _ledger_written(self) -> None:
        """Wait until the ledger writer has stored every ledger entry the streams hold now
        (so every CDR an earlier import made is in PostgreSQL); refused after
        ``ledger_wait`` seconds, since an import then could debit a record a second time.

        Each stream's last entry id is noted, and the wait ends once no stream holds an
        entry at or before its note: ids only, no clock (the entries may come from the
        clocks of several nodes, or one that stepped back)."""
        marks = await self._balances.last_ledger_ids()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ledger_wait
        waiting = False
        while True:
            behind = await self._balances.ledger_unwritten_through(marks)
            if not behind:
                if waiting:
                    log.warning("usage import goes on: the ledger writer caught up")
                return
            if loop.time() >= deadline:
                raise OcsError(
                    Reason.UNAVAILABLE,
                    "the ledger writer has not stored the ledger entries made before this"
                    f" import within {self.ledger_wait:g} s ({behind} bucket"
                    f"{'s' if behind > 1 else ''} still hold some), so records an earlier"
                    " import debited may not be in PostgreSQL yet: nothing was imported; is"
                    " the ledger writer running?",
                )
            if not waiting:
                waiting = True
                log.warning(
                    "usage import waits for the ledger writer", extra={"buckets_behind": behind}
                )
            await asyncio.sleep(LEDGER_POLL)

    async def _save_progress(self, lock: asyncpg.Connection, run: "_Run") -> None:
        """Store the import's counts every ``save_every`` seconds while it runs, on the
        connection holding its lock: a lost session (and lock) fails the import."""
        while run.lost is None:
            await asyncio.sleep(self.save_every)
            await self._save_progress_once(lock, run)

    async def _save_progress_once(self, lock: asyncpg.Connection, run: "_Run") -> None:
        """Store the import's counts now, on the connection holding its lock. A
        connection that fails or does not answer within ``SAVE_TIMEOUT`` is a lost
        session, and so a lost lock (``run.lost``); a refusal of the statement itself
        (a ``statement_timeout``, say) leaves the session, and the lock, as they were:
        logged, and tried again at the next save."""
        summary = run.summary
        rows_read, rows_filtered = run.rows_so_far()
        try:
            await lock.execute(
                "UPDATE usage_imports SET rows_read = $2, rows_filtered = $3,"
                " rows_charged = $4, rows_repeated = $5, rows_rejected = $6, amounts = $7"
                " WHERE id = $1 AND state = 'running'",
                summary.id,
                rows_read,
                rows_filtered,
                summary.rows_charged,
                summary.rows_repeated,
                run.rejects.count,
                json.dumps(summary.amounts),
                timeout=SAVE_TIMEOUT,
            )
        except Exception as exc:
            if not session_lost(exc):
                # Logged when the saves begin to fail, not at each one (every 2 s).
                if not run.save_refused:
                    run.save_refused = True
                    log.warning(
                        "usage import could not save its progress: tried again every save",
                        extra={"import": summary.id, "error": str(exc)[:200]},
                    )
                return
            log.error(
                "usage import lost its PostgreSQL session, and its supplier's lock",
                extra={"import": summary.id, "error": str(exc)[:200] or type(exc).__name__},
            )
            run.lost = exc
            return
        if run.save_refused:
            run.save_refused = False
            log.warning("usage import saves its progress again", extra={"import": summary.id})

    async def _finish(
        self, summary: ImportSummary, rejects: _Rejects, error: str | None = None
    ) -> ImportSummary:
        rejects.close()
        if rejects.count:
            summary.rejects_path = str(rejects.rows_path)
            summary.report_path = str(rejects.report_path)
        summary.problems = rejects.shown
        summary.error = error
        await self.save(summary, error=error, finished=True)
        metrics.usage_import_finished(
            summary.state,
            {
                "charged": summary.rows_charged,
                "repeated": summary.rows_repeated,
                "filtered": summary.rows_filtered,
                "rejected": summary.rows_rejected,
            },
        )
        log.info(
            "usage import finished",
            extra={
                "import": summary.id,
                "template": summary.template_version,
                "state": summary.state,
                "charged": summary.rows_charged,
                "repeated": summary.rows_repeated,
                "rejected": summary.rows_rejected,
            },
        )
        return summary

    async def save(
        self, summary: ImportSummary, *, error: str | None = None, finished: bool = False
    ) -> None:
        """Store the import's counts (its progress while it runs)."""
        async with self._pool.acquire() as conn:
            await conn.execute(
                "UPDATE usage_imports SET state = $2, rows_read = $3, rows_filtered = $4,"
                " rows_charged = $5, rows_repeated = $6, rows_rejected = $7, amounts = $8,"
                " rejects_path = $9, report_path = $10, error = $11,"
                " finished_at = CASE WHEN $12 THEN now() END WHERE id = $1",
                summary.id,
                summary.state,
                summary.rows_read,
                summary.rows_filtered,
                summary.rows_charged,
                summary.rows_repeated,
                summary.rows_rejected,
                json.dumps(summary.amounts),
                summary.rejects_path,
                summary.report_path,
                error,
                finished,
            )

    async def accounts_of(self, ids: set[str]) -> dict[str, AccountPlan]:
        """Plan and currency of each of these accounts that exists."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, plan_id, currency FROM accounts WHERE id = ANY($1::text[])", list(ids)
            )
        return {r["id"]: AccountPlan(r["plan_id"], r["currency"]) for r in rows}

    async def owners_of(self, table: str, column: str, values: set[str]) -> dict[str, str]:
        """The account of each member or caller id that has one."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {column} AS v, account_id FROM {table} WHERE {column} = ANY($1::text[])",
                list(values),
            )
        return {r["v"]: r["account_id"] for r in rows}

    async def imported(self, supplier: str, record_ids: list[str]) -> dict[str, list[StoredRecord]]:
        """What each CDR PostgreSQL holds of these record ids of the supplier names, by
        record id (one, unless an earlier version debited it twice)."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT record_id, account_id, duration, member, caller FROM cdrs"
                " WHERE supplier = $1 AND record_id = ANY($2::text[])",
                supplier,
                record_ids,
            )
        found: dict[str, list[StoredRecord]] = {}
        for row in rows:
            found.setdefault(row["record_id"], []).append(
                StoredRecord(row["account_id"], row["duration"], row["member"], row["caller"])
            )
        return found

    async def debit(self, bucket: int, import_id: int, events: list[UsageEvent]) -> list[str]:
        """One bucket's events through charge_batch.lua: a word an event."""
        return await self._balances.charge_batch(bucket, import_id, events, self._result_ttl)

    @property
    def snapshot(self) -> CatalogSnapshot:
        """The catalog as it is now; an import rates every record by the one it began with."""
        return self._catalog.snapshot

    async def counter_cycles(self, account_ids: set[str]) -> dict[str, dict[str, CounterCycle]]:
        """Each account's usage counters as Redis holds them now."""
        return await self._balances.counter_cycles(account_ids)

    @staticmethod
    def snapshot_rate(
        snapshot: CatalogSnapshot,
        plan_id: str,
        record: UsageRecord,
        rate_type: str | None,
        origin: dict[str, object],
    ) -> tuple[RatedUsage, dict[str, object]]:
        """(price, CDR fields) of a record by ``snapshot``, its ``origin`` fields
        (supplier, record id, template) added; OcsError when it has no price."""
        rated = rate_record(snapshot, plan_id, record, rate_type)
        rate = rated.tariff.rate
        ends = record.start_ms + (record.quantity * 1000 if record.service is None else 0)
        cdr = {
            "plan": plan_id,
            "zone": rated.zone,
            "destination": rated.destination,
            "caller": record.caller,
            "currency": rated.plan.currency,
            "authorized_at_ms": record.start_ms,
            "stopped_at_ms": ends,
            "billed": rated.billed,
            "rate": [rate.connect_fee, rate.first_block, rate.increment, rate.price_per_minute],
            "nas": None,
            "member": record.member,
            "direction": record.direction,
            "rate_type": rate_type,
            "record_id": record.record_id,
            **origin,
        }
        if record.service is None:
            # A call the switch made: billed as a call (its zone's usage line, its rate
            # type's tax code, the itemised list), not as a service's event ("usage").
            cdr["cause"] = "imported"
        return rated, cdr


class _Run:
    """One import's pass over its files: the counters, caches and rejects they share."""

    def __init__(
        self,
        importer: UsageImporter,
        summary: ImportSummary,
        template: Template,
        label: str,
        overrides: dict[str, str],
        rejects: _Rejects,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.importer = importer
        self.summary = summary
        self.supplier = template.supplier
        self.label = label
        self.overrides = overrides
        self.rejects = rejects
        self.progress = progress
        # One catalog for the whole import: a reload midway does not split a file's prices.
        self.snapshot = importer.snapshot
        self.accounts: dict[str, AccountPlan | None] = {}
        self.members: dict[str, str | None] = {}
        self.callers: dict[str, str | None] = {}
        self.rows_read = 0
        self.rows_filtered = 0
        self.done = 0
        # Records waiting for their bucket's batch to fill, and the batches sent.
        self.pending: dict[int, list[_Prepared]] = {}
        self.in_flight: deque[asyncio.Task[None]] = deque()
        # Each account's usage counters as they will be once the records priced so far
        # are debited; records whose counter had changed by then, to price again.
        self.cycles: dict[str, dict[str, CounterCycle]] = {}
        self.recount: list[_Prepared] = []
        self.seq = 0
        # Each record id's first place in the import: a later row with it is rejected.
        self.seen = SeenIds()
        # The file being read (its rows so far count) and the look-up of the chunk read
        # before this one; the error that lost the supplier's lock, if it was lost.
        self.reading: CompiledTemplate | None = None
        self.looking_up: asyncio.Task[list[_Prepared]] | None = None
        self.lost: BaseException | None = None
        self.files: list[str] = []
        # Whether the last progress save was refused (its failure logged once).
        self.save_refused = False

    def check_lock(self) -> None:
        """Stop the import once it has lost its supplier's lock (its session ended): an
        import of the supplier may run beside it now, and read what it debits."""
        lost = self.lost
        if lost is not None:
            raise OcsError(
                Reason.UNAVAILABLE,
                "the import lost its PostgreSQL session, and with it the supplier's import"
                f" lock ({str(lost) or type(lost).__name__}): stopped; import the file again"
                " (what was debited is a repeat then)",
            )

    def reset(self) -> None:
        """Forget the counts, counter seconds and ids of a checking pass (the caches stay)."""
        self.rows_read = self.rows_filtered = self.done = 0
        self.cycles.clear()
        self.seen.clear()

    def rows_so_far(self) -> tuple[int, int]:
        """(rows read, rows filtered) so far, the file being read included."""
        reading = self.reading
        if reading is None:
            return self.rows_read, self.rows_filtered
        return self.rows_read + reading.rows_read, self.rows_filtered + reading.rows_filtered

    def count(self) -> None:
        """Put the rows read, filtered and rejected so far in the summary."""
        summary = self.summary
        summary.rows_read, summary.rows_filtered = self.rows_so_far()
        summary.rows_rejected = self.rejects.count

    async def pass_over(
        self, paths: list[Path], compiled: CompiledTemplate, *, debit: bool
    ) -> None:
        """Read, rate and (``debit``) charge every record of the files, chunk by chunk.

        When it fails it first waits for the debits it sent (their outcome counted): a
        script Redis runs cannot be called back, and the import's stored counts must say
        what moved.
        """
        try:
            await self.read_all(paths, compiled, debit=debit)
        except BaseException:
            # To its end even when cancelled again: what it waits for moves money.
            await _to_the_end(self.drain())
            raise

    async def oldest_debit(self) -> None:
        """Wait for the oldest debit in flight and take its outcome (counted by ``charge``).

        Not by awaiting its task: a cancel of the import would be passed on to the task,
        whose script Redis has usually run by then, and the task, already out of
        ``in_flight``, would be neither waited for nor counted by ``drain``. It leaves
        ``in_flight`` only once done.
        """
        oldest = self.in_flight[0]
        await asyncio.wait([oldest])
        self.in_flight.popleft()
        oldest.result()

    async def drain(self) -> None:
        """Wait for the debits in flight (and stop the look-up of the next chunk)."""
        waited: list[asyncio.Task[Any]] = list(self.in_flight)
        self.in_flight.clear()
        if self.looking_up is not None:
            self.looking_up.cancel()
            waited.append(self.looking_up)
            self.looking_up = None
        if not waited:
            return
        # Not gather: cancelled meanwhile, it would cancel the debits' tasks too, and a
        # debit Redis ran would then go uncounted.
        await asyncio.wait(waited)
        for task in waited:
            if not task.cancelled():
                task.exception()  # seen: the failure the import raises is the first one

    async def read_all(self, paths: list[Path], compiled: CompiledTemplate, *, debit: bool) -> None:
        """``pass_over``'s reading: the chunks in file order, each looked up in PostgreSQL
        while the next is read, then queued for its buckets' batches."""
        self.files = [path.name for path in paths]
        for index, path in enumerate(paths):
            with open_file(path, compiled.template.format) as stream:
                rows = compiled.read(stream)
                self.reading = compiled
                self.rejects.opened(path.name, compiled)
                for chunk in _chunks(rows, self.importer.chunk_rows):
                    prepared = await self.prepare(path.name, index, chunk)
                    # The previous chunk's repeats were looked up while this one was
                    # read: it is queued first, so the debits keep the file's order.
                    await self.looked_up(debit)
                    if prepared:
                        self.looking_up = asyncio.create_task(
                            self.not_yet_imported(prepared, debit)
                        )
                        while len(self.in_flight) > IN_FLIGHT:
                            await self.oldest_debit()
                    if self.recount:
                        await self.price_again()
                    self.tick(len(chunk))
                    self.check_lock()
            self.rows_read += compiled.rows_read
            self.rows_filtered += compiled.rows_filtered
            compiled.rows_read = compiled.rows_filtered = 0
        await self.looked_up(debit)
        if not debit:
            return
        while True:
            for bucket in list(self.pending):
                self.send(bucket)
            while self.in_flight:
                await self.oldest_debit()
            if not self.recount:
                break
            await self.price_again()

    async def looked_up(self, debit: bool) -> None:
        """Wait for the look-up of the chunk read before; ``debit``: queue its records."""
        if self.looking_up is not None:
            ready = await self.looking_up
            self.looking_up = None
            if debit:
                self.queue(ready)

    def tick(self, rows: int) -> None:
        """Count rows done and tell the progress bar."""
        self.done += rows
        if self.progress is not None:
            self.progress(self.done)

    async def prepare(
        self, file: str, index: int, chunk: list[UsageRecord | RowProblem]
    ) -> list[_Prepared]:
        """The chunk's records (of the import's ``index``-th file) given an account and a
        price; its bad rows rejected, a record id read before in the import too."""
        repeats = self.repeats(index, chunk)
        await self.resolve(chunk)
        prepared: list[_Prepared] = []
        overrides = self.overrides
        supplier = self.supplier
        origin: dict[str, object] = {"supplier": supplier, "template": self.label}
        snapshot = self.snapshot
        rate = self.importer.snapshot_rate
        drawing: list[_Prepared] = []
        for item in chunk:
            if isinstance(item, RowProblem):
                self.rejects.add(file, item.line, item.cells, item.problems)
                continue
            if repeats and item.line in repeats:
                self.rejects.add(file, item.line, item.cells, (repeats[item.line],))
                continue
            account_id = self.account_id(item)
            if account_id is None:
                self.rejects.add(file, item.line, item.cells, (self.no_account(item),))
                continue
            account = self.accounts.get(account_id)
            if account is None:
                self.rejects.add(
                    file, item.line, item.cells, (f"account: no account {account_id!r}",)
                )
                continue
            rate_type = item.rate_type
            if rate_type is not None:
                rate_type = overrides.get(rate_type, rate_type)
            try:
                rated, fields = rate(snapshot, account.plan_id, item, rate_type, origin)
            except OcsError as exc:
                self.rejects.add(file, item.line, item.cells, (_problem(exc),))
                continue
            self.seq += 1
            event = UsageEvent(
                account_id,
                f"usage:{supplier}:{item.record_id}",
                rated.cost,
                item.quantity,
                msgpack.packb(fields),
            )
            ready = _Prepared(item, file, account.currency, rated.cost, event, self.seq)
            if rated.counters:
                ready.draw = _CounterDraw(rated, fields)
                drawing.append(ready)
            prepared.append(ready)
        if drawing:
            await self.load_cycles({p.event.account_id for p in drawing})
            refused = {id(p) for p in drawing if not self.draw_on_counter(p)}
            if refused:
                prepared = [p for p in prepared if id(p) not in refused]
        return prepared

    def repeats(self, index: int, chunk: list[UsageRecord | RowProblem]) -> dict[int, str]:
        """The problem of each row (by line) whose record id an earlier row of the import
        has: a supplier's record is debited once, and a file that names an id twice
        (for two accounts, or two durations) has one of them wrong."""
        records = [r for r in chunk if isinstance(r, UsageRecord)]
        if not records:
            return {}
        earlier = self.seen.claim(
            [r.record_id for r in records], [(index << 32) | r.line for r in records]
        )
        found: dict[int, str] = {}
        for record, place in zip(records, earlier, strict=True):
            if place >= 0:
                file = self.files[place >> 32]
                found[record.line] = (
                    f"record_id: {record.record_id!r} repeats line {place & 0xFFFFFFFF}"
                    f" of {file}; a supplier's record is debited once"
                )
        return found

    async def load_cycles(self, account_ids: set[str], *, again: bool = False) -> None:
        """Read the usage counters of these accounts (``again``: even if read before)."""
        wanted = account_ids if again else account_ids - self.cycles.keys()
        if wanted:
            self.cycles.update(await self.importer.counter_cycles(wanted))

    def draw_on_counter(self, item: _Prepared) -> bool:
        """Price a record with the counter that applies to its account now, as authorize
        chooses it, and count its seconds used; False (and the row rejected) when the
        counter refuses calls once used up and has nothing left."""
        draw = item.draw
        assert draw is not None
        account_id = item.event.account_id
        cycles = self.cycles.setdefault(account_id, {})
        for counter in draw.rated.counters:
            cycle = cycles.get(counter.id)
            if cycle is None and counter.mandatory:
                # Not used yet this cycle: charge_batch starts it, as authorize would.
                cycle = cycles[counter.id] = CounterCycle(counter.seconds, 0, 0, False)
                start = counter.seconds
            elif cycle is None or cycle.gone:
                continue  # an optional counter the account has not bought, or cancelled
            else:
                start = counter.seconds if counter.mandatory else 0
            free = cycle.free
            record = item.record
            if free == 0 and counter.reject_on_threshold:
                self.rejects.add(
                    item.file,
                    record.line,
                    record.cells,
                    (f"counter_exhausted: the bundle {counter.id!r} is used up for this cycle",),
                )
                return False
            cost, used = priced_with_counter(draw.rated, record, counter, free)
            cycle.used += used
            fields = {**draw.fields, "counter": counter.id, "counter_seconds": used}
            item.cost = cost
            item.event = UsageEvent(
                account_id,
                item.event.event_id,
                cost,
                record.quantity,
                msgpack.packb(fields),
                counter.id,
                free,
                start,
            )
            return True
        # No counter applies to this account (any more): the zone's tariff, as rated, and
        # the CDR without the counter an earlier pricing may have named.
        item.cost = draw.rated.cost
        item.event = UsageEvent(
            account_id,
            item.event.event_id,
            item.cost,
            item.record.quantity,
            msgpack.packb(draw.fields),
        )
        return True

    async def price_again(self) -> None:
        """Price anew the records whose counter changed before they were debited.

        What was sent is waited for first, so the counters read next hold every debit
        made; the same accounts' records still waiting for a batch were priced on the
        same stale seconds and are priced again with them, all in file order.
        """
        while self.in_flight:
            await self.oldest_debit()
        stale, self.recount = self.recount, []
        accounts = {p.event.account_id for p in stale}
        for bucket, batch in list(self.pending.items()):
            waiting = [p for p in batch if p.draw is not None and p.event.account_id in accounts]
            if waiting:
                stale += waiting
                kept = [p for p in batch if p.draw is None or p.event.account_id not in accounts]
                if kept:
                    self.pending[bucket] = kept
                else:
                    del self.pending[bucket]
        stale.sort(key=lambda p: p.seq)
        await self.load_cycles(accounts, again=True)
        ready: list[_Prepared] = []
        for item in stale:
            assert item.draw is not None
            item.draw.tries += 1
            if item.draw.tries > COUNTER_TRIES:
                record = item.record
                self.rejects.add(
                    item.file,
                    record.line,
                    record.cells,
                    ("counter: its bundle kept changing during the import; import it again",),
                )
            elif self.draw_on_counter(item):
                ready.append(item)
        log.info(
            "usage import priced records again: their counter changed",
            extra={"import": self.summary.id, "records": len(stale), "accounts": len(accounts)},
        )
        self.queue(ready)

    def account_id(self, record: UsageRecord) -> str | None:
        """The record's account: its own column, else its member's, else its caller's."""
        if record.account:
            return record.account
        if record.member:
            return self.members.get(record.member)
        if record.caller:
            return self.callers.get(record.caller)
        return None

    @staticmethod
    def no_account(record: UsageRecord) -> str:
        """Why a record has no account, naming what it was looked up by."""
        if record.member:
            return f"member: no account has member {record.member!r}"
        if record.caller:
            return f"caller: no account has caller id {record.caller!r}"
        return "account: the row names no account, member or caller"

    async def resolve(self, chunk: list[UsageRecord | RowProblem]) -> None:
        """Look up, once each, the members, caller ids and accounts the chunk names."""
        members = {
            r.member
            for r in chunk
            if isinstance(r, UsageRecord)
            and not r.account
            and r.member
            and r.member not in self.members
        }
        if members:
            found = await self.importer.owners_of("account_members", "member", members)
            self.members.update({m: found.get(m) for m in members})
        callers = {
            r.caller
            for r in chunk
            if isinstance(r, UsageRecord)
            and not r.account
            and not r.member
            and r.caller
            and r.caller not in self.callers
        }
        if callers:
            found = await self.importer.owners_of("account_callers", "caller", callers)
            self.callers.update({c: found.get(c) for c in callers})
        wanted = {
            a
            for a in (self.account_id(r) for r in chunk if isinstance(r, UsageRecord))
            if a is not None and a not in self.accounts
        }
        if wanted:
            found_accounts = await self.importer.accounts_of(wanted)
            self.accounts.update({a: found_accounts.get(a) for a in wanted})

    async def not_yet_imported(self, prepared: list[_Prepared], debit: bool) -> list[_Prepared]:
        """The records PostgreSQL holds no CDR of yet. One it holds with what the row
        names (its account, else its member, else its caller id) and its quantity is a
        repeat (counted when ``debit``); one it holds with another is rejected, saying
        so: the supplier sent it differently.

        What the row names, not the account it comes to now: a member or caller id
        moved to another account since does not make the same file another record.

        Asked before the chunk's debits are queued, so the debits reach Redis in file
        order (a task's first command is queued when it first runs, in creation order).
        """
        known = await self.importer.imported(self.supplier, [p.record.record_id for p in prepared])
        if not known:
            return prepared
        fresh: list[_Prepared] = []
        for item in prepared:
            record = item.record
            stored = known.get(record.record_id)
            if stored is None:
                fresh.append(item)
                continue
            what, named = _named_by(record)
            account_id = item.event.account_id
            if any(s.same(what, named, account_id, record.quantity) for s in stored):
                if debit:
                    self.summary.rows_repeated += 1
                continue
            earlier = stored[0]
            # Named as the earlier row named it (its account when it had no such column).
            shown, was = (what, named) if earlier.named(what) else ("account", account_id)
            self.rejects.add(
                item.file,
                record.line,
                record.cells,
                (
                    f"record_id: {record.record_id!r} was already imported for {shown}"
                    f" {earlier.named(shown)!r} (quantity {earlier.quantity}); this row has"
                    f" {shown} {was!r} (quantity {record.quantity})",
                ),
            )
        return fresh

    def queue(self, prepared: list[_Prepared]) -> None:
        """Add records to their buckets' next batch; a full batch goes to Redis.

        A bucket's batches are sent in file order (a task queues its script call when
        it first runs, and tasks first run in the order they were made), so each
        account's records are debited in file order.
        """
        pending = self.pending
        for item in prepared:
            bucket = keys.bucket_of(item.event.account_id)
            batch = pending.get(bucket)
            if batch is None:
                batch = pending[bucket] = []
            batch.append(item)
            if len(batch) >= BATCH:
                self.send(bucket)

    def send(self, bucket: int) -> None:
        """Send a bucket's batch through charge_batch.lua (none once the lock is lost)."""
        self.check_lock()
        batch = self.pending.pop(bucket)
        self.in_flight.append(asyncio.create_task(self.charge(bucket, batch)))

    async def charge(self, bucket: int, batch: list[_Prepared]) -> None:
        """Debit one bucket's batch and count what each record came to."""
        words = await self.importer.debit(bucket, self.summary.id, [p.event for p in batch])
        summary = self.summary
        amounts = summary.amounts
        for item, word in zip(batch, words, strict=True):
            if word == "OK":
                summary.rows_charged += 1
                amounts[item.currency] = amounts.get(item.currency, 0) + item.cost
            elif word == "DONE":
                summary.rows_repeated += 1
            elif word == COUNTER_CHANGED:
                self.recount.append(item)
            else:
                record = item.record
                self.rejects.add(item.file, record.line, record.cells, (_refusal(word),))


def _named_by(record: UsageRecord) -> tuple[Literal["account", "member", "caller"], str]:
    """What a record names its account by, and the value: its account column, else its
    member, else its caller id (as ``account_id`` looks it up)."""
    if record.account:
        return "account", record.account
    if record.member:
        return "member", record.member
    return "caller", record.caller or ""


def _problem(exc: OcsError) -> str:
    """A rating refusal as a row problem, naming its field once."""
    if exc.field and not exc.message.startswith(f"{exc.field}:"):
        return f"{exc.field}: {exc.message}"
    return exc.message


def _refusal(reason: str) -> str:
    """A debit refusal as a row problem."""
    return (
        f"{reason}: the balance refused the debit"
        if reason
        in (
            "insufficient_funds",
            "zero_balance",
        )
        else f"account: {reason}"
    )


def _chunks(
    items: Iterator[UsageRecord | RowProblem], size: int
) -> Iterator[list[UsageRecord | RowProblem]]:
    chunk: list[UsageRecord | RowProblem] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
