"""One usage import's pass over its files: read, rate and debit every record once.

Each record is read and classified by the template, given its account and rated by
its plan, skipped as a repeat when PostgreSQL already holds its supplier's record id
(rejected when for another account or quantity), and debited through
``charge_batch.lua``, a bucket's batch at a time (``ocs.mediation.importer`` describes
the whole import). What it asks of PostgreSQL, Redis and the catalog it asks of its
importer (``Sources``).
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import asyncpg
import msgpack

from ocs.balances import keys
from ocs.balances.script_args import UsageEvent, imported_event_id
from ocs.balances.store import COUNTER_CHANGED, AccountCycle, CounterCycle
from ocs.catalog.snapshot import CatalogSnapshot
from ocs.errors import OcsError, Reason
from ocs.mediation.classify import CompiledTemplate
from ocs.mediation.rating import RatedUsage, priced_with_counter
from ocs.mediation.reader import open_file
from ocs.mediation.records import RowProblem, UsageRecord
from ocs.mediation.rejects import Rejects
from ocs.mediation.seen_ids import SeenIds
from ocs.mediation.summary import ImportSummary
from ocs.mediation.supplier_lock import Progress, ProgressSaver, to_the_end
from ocs.mediation.template import Template
from ocs.rating.counter_rules import CounterDef, counter_to_draw

log = logging.getLogger("ocs.mediation")

# Events a charge_batch.lua call takes: one bucket's (a script's keys share a slot).
# A bucket's events wait across chunks until they fill a batch, so at most
# BATCH x 1024 buckets records wait in memory.
BATCH = 64
# Batches that may be in flight while the next chunk is read and rated.
IN_FLIGHT = 64
# Times a record is priced again because its counter changed under it before it is
# refused: each time follows a fresh read, so only a counter live calls keep changing
# gets there.
COUNTER_TRIES = 5


@dataclass(slots=True)
class CounterDraw:
    """What a record that may draw on a usage counter needs to be priced again: its
    rating without the counter and its CDR fields."""

    rated: RatedUsage
    fields: dict[str, object]
    tries: int = 0


@dataclass(slots=True)
class Prepared:
    """A record with its account, price and event, ready to debit; ``seq`` is its place
    in the import, ``draw`` set when a counter covers its zone."""

    record: UsageRecord
    # The record's file: its place in the import (two files may have the same name).
    file: int
    currency: str
    cost: int
    event: UsageEvent
    seq: int = 0
    draw: CounterDraw | None = None
    # Whether it started before its plan's prices last changed (rated at later prices).
    priced_after_start: bool = False
    # Whether a counter covers it but it was made before the last closed counter cycle,
    # of which nothing is kept: priced at the tariff (decision 0032).
    past_kept_cycle: bool = False


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
    """The plan an account is rated by, the currency it pays in, and when the plan's
    prices last changed (epoch ms; None: not known, ``plans.prices_changed_at``)."""

    plan_id: str
    currency: str
    prices_changed_ms: int | None = None


class Sources(Protocol):
    """What an import run asks of its importer (``UsageImporter``): PostgreSQL's
    look-ups, Redis's debits and counters, and the catalog."""

    chunk_rows: int

    @property
    def snapshot(self) -> CatalogSnapshot:
        """The catalog as it is now."""
        ...

    def snapshot_rate(
        self,
        snapshot: CatalogSnapshot,
        plan_id: str,
        record: UsageRecord,
        rate_type: str | None,
        origin: dict[str, object],
    ) -> tuple[RatedUsage, dict[str, object]]:
        """(price, CDR fields) of a record by ``snapshot``."""
        ...

    async def counter_cycles(self, account_ids: set[str]) -> dict[str, AccountCycle]:
        """Each account's counter cycle (when it began, its counters) as Redis holds it now."""
        ...

    async def owners_of(self, table: str, column: str, values: set[str]) -> dict[str, str]:
        """The account of each member or caller id that has one."""
        ...

    async def accounts_of(self, ids: set[str]) -> dict[str, "AccountPlan"]:
        """Plan and currency of each of these accounts that exists."""
        ...

    async def imported(
        self, supplier: str, record_ids: list[str]
    ) -> dict[str, list["StoredRecord"]]:
        """What each CDR PostgreSQL holds of these record ids of the supplier names."""
        ...

    async def debit(self, bucket: int, import_id: int, events: list[UsageEvent]) -> list[str]:
        """One bucket's events through charge_batch.lua: a word an event."""
        ...


class ImportRun:
    """One import's pass over its files: the counters, caches and rejects they share."""

    def __init__(
        self,
        importer: "Sources",
        summary: ImportSummary,
        template: Template,
        label: str,
        overrides: dict[str, str],
        rejects: Rejects,
        progress: Callable[[int], None] | None,
        lock: asyncpg.Connection,
        save_every: float,
    ) -> None:
        """An import's run over ``importer``'s stores, its supplier's lock held on
        ``lock`` (where its counts are saved every ``save_every`` seconds)."""
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
        self.pending: dict[int, list[Prepared]] = {}
        self.in_flight: deque[asyncio.Task[None]] = deque()
        # Each account's counter cycle as it will be once the records priced so far are
        # debited; records whose counter had changed by then, to price again.
        self.cycles: dict[str, AccountCycle] = {}
        self.recount: list[Prepared] = []
        self.seq = 0
        # The plans whose prices changed after one of the records charged started.
        self.repriced_plans: set[str] = set()
        # Records charged at the tariff though a counter covers them: made before the
        # last closed counter cycle, of which nothing is kept.
        self.past_kept_cycles = 0
        # Each record id's first place in the import: a later row with it is rejected.
        self.seen = SeenIds()
        # The file being read (its rows so far count) and the look-up of the chunk read
        # before this one; the error that lost the supplier's lock, if it was lost.
        self.reading: CompiledTemplate | None = None
        self.looking_up: asyncio.Task[list[Prepared]] | None = None
        self.files: list[str] = []
        # Saves the counts while the import runs, and finds a lost lock.
        self.saver = ProgressSaver(lock, self.progress_now, save_every)
        # The first debit that failed, once one has: no batch is sent after it.
        self.failed: BaseException | None = None

    def check_lock(self) -> None:
        """Stop the import once it has lost its supplier's lock (its session ended): an
        import of the supplier may run beside it now, and read what it debits."""
        lost = self.saver.lost
        if lost is not None:
            raise OcsError(
                Reason.UNAVAILABLE,
                "the import lost its PostgreSQL session, and with it the supplier's import"
                f" lock ({str(lost) or type(lost).__name__}): stopped; import the file again"
                " (what was debited is a repeat then)",
            )

    def check_debits(self) -> None:
        """Stop the import once a debit has failed, whichever batch it was: it is not
        waited for in turn, else the batches read meanwhile would still be sent, and
        money would move after the failure the import ends with."""
        if self.failed is not None:
            raise self.failed

    def debit_done(self, task: "asyncio.Task[None]") -> None:
        """Note a debit's failure as soon as it fails (a task's done callback)."""
        if self.failed is None and not task.cancelled():
            self.failed = task.exception()

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

    def progress_now(self) -> Progress:
        """The import's counts now, as its row stores them while it runs."""
        summary = self.summary
        rows_read, rows_filtered = self.rows_so_far()
        return Progress(
            summary.id,
            rows_read,
            rows_filtered,
            summary.rows_charged,
            summary.rows_repeated,
            self.rejects.count,
            dict(summary.amounts),
            summary.rows_priced_after_start,
        )

    def count(self) -> None:
        """Put the rows read, filtered and rejected so far in the summary."""
        summary = self.summary
        summary.rows_read, summary.rows_filtered = self.rows_so_far()
        summary.rows_rejected = self.rejects.count

    def accounts_plan(self, account_id: str) -> str:
        """The plan a charged record's account was rated by."""
        account = self.accounts.get(account_id)
        return account.plan_id if account is not None else ""

    def tell_repriced(self) -> None:
        """Log, once at the import's end, that records were rated at prices set after
        they started: decks and tariffs have no effective dates (decision 0050)."""
        count = self.summary.rows_priced_after_start
        if count:
            log.warning(
                "usage import rated records at their plan's current prices, changed after"
                " the records started",
                extra={
                    "import": self.summary.id,
                    "records": count,
                    "plans": sorted(self.repriced_plans),
                },
            )

    def tell_past_kept_cycles(self) -> None:
        """Log, once at the import's end, that records made before their account's last
        closed counter cycle paid the tariff: only that cycle is kept (decision 0032)."""
        if self.past_kept_cycles:
            log.warning(
                "usage import charged records at the tariff: made before their account's"
                " last closed counter cycle, of which no seconds are kept",
                extra={"import": self.summary.id, "records": self.past_kept_cycles},
            )

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
            await to_the_end(self.drain())
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
        # Named as the report names them: two files may have the same name.
        self.files = self.rejects.labels
        # A file that stops being readable part-way: the rows read before are imported
        # (and counted) as any others, then the import fails with its error.
        unreadable: list[OcsError] = []
        for index, path in enumerate(paths):
            with open_file(path, compiled.template.format) as stream:
                rows = compiled.read(stream)
                self.reading = compiled
                self.rejects.opened(index, compiled)
                for chunk in _chunks(rows, self.importer.chunk_rows, unreadable):
                    prepared = await self.prepare(index, chunk)
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
                    self.check_debits()
            self.rows_read += compiled.rows_read
            self.rows_filtered += compiled.rows_filtered
            compiled.rows_read = compiled.rows_filtered = 0
            if unreadable:
                break
        await self.looked_up(debit)
        while debit:
            for bucket in list(self.pending):
                self.send(bucket)
            while self.in_flight:
                await self.oldest_debit()
            if not self.recount:
                break
            await self.price_again()
        if unreadable:
            raise unreadable[0]

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

    async def prepare(self, index: int, chunk: list[UsageRecord | RowProblem]) -> list[Prepared]:
        """The chunk's records (of the import's ``index``-th file) given an account and a
        price; its bad rows rejected, a record id read before in the import too."""
        repeats = self.repeats(index, chunk)
        await self.resolve(chunk)
        prepared: list[Prepared] = []
        overrides = self.overrides
        supplier = self.supplier
        origin: dict[str, object] = {"supplier": supplier, "template": self.label}
        snapshot = self.snapshot
        rate = self.importer.snapshot_rate
        drawing: list[Prepared] = []
        for item in chunk:
            if isinstance(item, RowProblem):
                self.rejects.add(index, item.line, item.cells, item.problems)
                continue
            if repeats and item.line in repeats:
                self.rejects.add(index, item.line, item.cells, (repeats[item.line],))
                continue
            account_id = self.account_id(item)
            if account_id is None:
                self.rejects.add(index, item.line, item.cells, (self.no_account(item),))
                continue
            account = self.accounts.get(account_id)
            if account is None:
                self.rejects.add(
                    index, item.line, item.cells, (f"account: no account {account_id!r}",)
                )
                continue
            rate_type = item.rate_type
            if rate_type is not None:
                rate_type = overrides.get(rate_type, rate_type)
            try:
                rated, fields = rate(snapshot, account.plan_id, item, rate_type, origin)
            except OcsError as exc:
                self.rejects.add(index, item.line, item.cells, (_problem(exc),))
                continue
            self.seq += 1
            event = UsageEvent(
                account_id,
                imported_event_id(supplier, item.record_id),
                rated.cost,
                item.quantity,
                msgpack.packb(fields),
                item.start_ms,
            )
            ready = Prepared(item, index, account.currency, rated.cost, event, self.seq)
            changed = account.prices_changed_ms
            if changed is not None and item.start_ms < changed:
                ready.priced_after_start = True
            if rated.counters:
                ready.draw = CounterDraw(rated, fields)
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

    def draw_on_counter(self, item: Prepared) -> bool:
        """Price a record with the counter that applies to its account now, as authorize
        chooses it (the first with seconds free, else the first that applies), and count
        its seconds used; False (and the row rejected) when none that applies has seconds
        free and the first refuses calls once used up.

        A record made before the account's current cycle began belongs to a closed cycle:
        it draws only on the seconds that cycle left free (carried over, or kept aside
        without carryover), cancelled since or not, and passes over a counter with none.
        Only the last closed cycle is kept: a record made before it began draws on no
        counter and pays the tariff (decision 0032)."""
        draw = item.draw
        assert draw is not None
        account_id = item.event.account_id
        account = self.cycles.get(account_id)
        if account is None:
            account = self.cycles[account_id] = AccountCycle(None, {})
        cycles = account.counters
        record = item.record
        late = account.began is not None and record.start_ms < account.began
        item.past_kept_cycle = not account.kept(record.start_ms)
        # The counters that apply, each with the seconds it has free for this record, up
        # to the first with any: the one it draws on, as authorize chooses
        # (``counter_to_draw``: else the first that applies, with none).
        applicable: list[tuple[tuple[CounterDef, CounterCycle], int]] = []
        for candidate in () if item.past_kept_cycle else draw.rated.counters:
            found = cycles.get(candidate.id)
            if late:
                if found is None:
                    continue  # nothing kept of the closed cycle: started now, it has none
            elif (found is None or not found.started) and candidate.mandatory:
                # Not used yet this cycle: charge_batch starts it, as authorize would
                # (keeping what a closed cycle left).
                closed = 0 if found is None else found.closed
                found = CounterCycle(candidate.seconds, 0, 0, False, None, closed)
            elif found is None or found.gone or not found.started:
                continue  # an optional counter the account has not bought, or cancelled
            free = found.free_for(record.start_ms, account.began)
            if late and free == 0:
                continue  # nothing left of the record's cycle: not this one's
            applicable.append(((candidate, found), free))
            if free > 0:
                break
        chosen = counter_to_draw(applicable)
        if chosen is not None:
            (counter, cycle), free = chosen
            cycles[counter.id] = cycle  # a mandatory one started by this record
            start = counter.seconds if counter.mandatory else 0
            if free == 0 and counter.reject_on_threshold:
                self.rejects.add(
                    item.file,
                    record.line,
                    record.cells,
                    (f"counter_exhausted: the bundle {counter.id!r} is used up for this cycle",),
                )
                return False
            cost, used = priced_with_counter(draw.rated, record, counter, free)
            cycle.draw(used, record.start_ms, account.began)
            fields = {**draw.fields, "counter": counter.id, "counter_seconds": used}
            item.cost = cost
            item.event = UsageEvent(
                account_id,
                item.event.event_id,
                cost,
                record.quantity,
                msgpack.packb(fields),
                record.start_ms,
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
            item.record.start_ms,
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
        ready: list[Prepared] = []
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

    async def not_yet_imported(self, prepared: list[Prepared], debit: bool) -> list[Prepared]:
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
        fresh: list[Prepared] = []
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

    def queue(self, prepared: list[Prepared]) -> None:
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
        """Send a bucket's batch through charge_batch.lua (none once the lock is lost, or
        once a debit has failed)."""
        self.check_lock()
        self.check_debits()
        batch = self.pending.pop(bucket)
        task = asyncio.create_task(self.charge(bucket, batch))
        task.add_done_callback(self.debit_done)
        self.in_flight.append(task)

    async def charge(self, bucket: int, batch: list[Prepared]) -> None:
        """Debit one bucket's batch and count what each record came to."""
        words = await self.importer.debit(bucket, self.summary.id, [p.event for p in batch])
        summary = self.summary
        amounts = summary.amounts
        for item, word in zip(batch, words, strict=True):
            if word == "OK":
                summary.rows_charged += 1
                amounts[item.currency] = amounts.get(item.currency, 0) + item.cost
                if item.priced_after_start:
                    summary.rows_priced_after_start += 1
                    self.repriced_plans.add(self.accounts_plan(item.event.account_id))
                if item.past_kept_cycle:
                    self.past_kept_cycles += 1
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
    items: Iterator[UsageRecord | RowProblem], size: int, unreadable: list[OcsError]
) -> Iterator[list[UsageRecord | RowProblem]]:
    """The items in lists of ``size`` (the last one shorter). A file that stops being
    readable (OcsError) ends them: its error goes to ``unreadable``, the items read
    before it in the last list."""
    chunk: list[UsageRecord | RowProblem] = []
    try:
        for item in items:
            chunk.append(item)
            if len(chunk) >= size:
                yield chunk
                chunk = []
    except OcsError as exc:
        unreadable.append(exc)
    if chunk:
        yield chunk
