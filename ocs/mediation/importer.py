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

A file that stops being readable part-way (not text in its encoding, a quote no
later line closes) fails the import once the rows read before it are imported and
counted, so that rows read = filtered + charged + repeated + rejected even then.

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
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import asyncpg
import msgspec

from ocs import metrics
from ocs.balances.script_args import UsageEvent
from ocs.balances.store import AccountCycle, BalanceStore
from ocs.catalog.snapshot import CatalogHolder, CatalogSnapshot
from ocs.errors import OcsError, Reason
from ocs.mediation import store as mediation_store
from ocs.mediation.classify import CompiledTemplate
from ocs.mediation.import_run import AccountPlan, ImportRun, StoredRecord
from ocs.mediation.rating import RatedUsage, rate_record
from ocs.mediation.records import UsageRecord
from ocs.mediation.rejects import Rejects
from ocs.mediation.shipped import shipped_template
from ocs.mediation.summary import ImportSummary
from ocs.mediation.supplier_lock import (
    SAVE_EVERY,
    closed,
    lock_supplier,
    mark_interrupted,
    stopped,
    to_the_end,
)
from ocs.mediation.template import Template

log = logging.getLogger("ocs.mediation")

ImportMode = Literal["good_rows", "all_or_nothing"]
IMPORT_MODES: tuple[ImportMode, ...] = ("good_rows", "all_or_nothing")
# Records read and rated together; a chunk's PostgreSQL look-ups are one query each.
CHUNK = 2000
# Seconds between two looks at the ledger streams.
LEDGER_POLL = 0.1


class ImportRequest(msgspec.Struct, frozen=True):
    """What to import: the template (by name; its latest version unless ``version``),
    the files in order, the mode, and where the rejects go (beside the first file)."""

    template: str
    files: tuple[str, ...]
    mode: ImportMode = "good_rows"
    version: int | None = None
    rejects_dir: str | None = None


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
        ``supplier_lock.lock_supplier``). ``chunk_rows``: records read and rated between
        two waits on PostgreSQL or Redis; a serving process takes fewer, so live calls
        wait less for the loop. ``supplier_wait``: seconds an import waits for the
        supplier's running import to end; ``ledger_wait``: for the ledger writer to store
        the entries made before it started; ``save_every``: seconds between two saves of
        its counts."""
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
        lock = await lock_supplier(self.connect, supplier, self.supplier_wait)
        try:
            await mark_interrupted(lock, supplier)
            await self._ledger_written()
            overrides = await mediation_store.overrides_of(lock, supplier)
            # Made before the row too: once it exists, only _import's try may fail.
            summary = ImportSummary(0, request.template, label, supplier, request.mode, "running")
            rejects_dir = Path(request.rejects_dir) if request.rejects_dir else paths[0].parent
            rejects = Rejects(compiled, rejects_dir, paths)
            run = ImportRun(
                self, summary, template, label, overrides, rejects, progress, lock, self.save_every
            )
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
            await closed(lock)

    async def _import(
        self,
        lock: asyncpg.Connection,
        request: ImportRequest,
        paths: list[Path],
        compiled: CompiledTemplate,
        run: ImportRun,
    ) -> ImportSummary:
        """The import itself, its row made and its supplier's lock held on ``lock``."""
        summary = run.summary
        rejects = run.rejects
        template = compiled.template
        saver = asyncio.create_task(run.saver.run())
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
                await stopped(saver)
                await run.saver.save_once()
                run.check_lock()
                summary.state = "done"
        except BaseException as exc:
            # pass_over waited for the debits it had sent: the counts hold all it moved.
            summary.state = "failed"
            run.count()
            run.tell_repriced()
            run.tell_past_kept_cycles()
            error = str(exc)[:500] or type(exc).__name__
            await to_the_end(self._wrap_up(saver, summary, rejects, error))
            raise
        run.count()
        run.tell_repriced()
        run.tell_past_kept_cycles()
        # A cancel now must not leave the row running: the debits are all made.
        return await to_the_end(self._wrap_up(saver, summary, rejects))

    async def _wrap_up(
        self,
        saver: "asyncio.Task[None]",
        summary: ImportSummary,
        rejects: Rejects,
        error: str | None = None,
    ) -> ImportSummary:
        """Stop the progress saver and store the import's final state."""
        await stopped(saver)
        return await self._finish(summary, rejects, error=error)

    async def connect(self) -> asyncpg.Connection:
        """A PostgreSQL connection of the import's own, outside the pool (the one that
        holds its supplier's lock)."""
        return await asyncpg.connect(self._database_url)

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

    async def _finish(
        self, summary: ImportSummary, rejects: Rejects, error: str | None = None
    ) -> ImportSummary:
        """Close the rejects, store the import's final state, count and log it."""
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
                " finished_at = CASE WHEN $12 THEN now() END, rows_priced_after_start = $13"
                " WHERE id = $1",
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
                summary.rows_priced_after_start,
            )

    async def accounts_of(self, ids: set[str]) -> dict[str, AccountPlan]:
        """Plan, currency and the plan's last price change of each of these accounts
        that exists."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT a.id, a.plan_id, a.currency,"
                " floor(extract(epoch FROM p.prices_changed_at) * 1000)::bigint AS changed"
                " FROM accounts a JOIN plans p ON p.id = a.plan_id"
                " WHERE a.id = ANY($1::text[])",
                list(ids),
            )
        return {r["id"]: AccountPlan(r["plan_id"], r["currency"], r["changed"]) for r in rows}

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

    async def counter_cycles(self, account_ids: set[str]) -> dict[str, AccountCycle]:
        """Each account's counter cycle (when it began, its counters) as Redis holds it now."""
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
