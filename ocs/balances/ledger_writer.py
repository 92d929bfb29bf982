"""The ledger writer: moves ledger stream entries from Redis into PostgreSQL, losing none.

Each stop and top-up script appends one entry to its bucket's stream in the
same atomic step as the balance change. This writer reads the streams through
a consumer group, inserts ``ledger`` (and, for calls, ``cdrs``) rows keyed by
the entry id with ``ON CONFLICT`` (a redelivery changes nothing; an id stored
for another entry fails its row, which is set aside: migration 0048), and
acknowledges (XACK + XDEL) only after PostgreSQL committed. Delivery is at least
once, the insert is idempotent, so every entry lands exactly once; several processes may run a
writer at once, and entries a dead writer held are claimed after
``claim_idle_ms``.

The writer speaks to Redis through a lean wire of its own (ocs/balances/wire.py),
so the same code reads a standalone Redis and a Redis Cluster. A read names at
most ``READ_STREAMS`` streams a round trip, one round trip after another, so that
Redis serves the call path in between (decision 0036). On a standalone server,
when they held nothing, one XREADGROUP names every stream and blocks until
entries come; on a cluster, where one command may name keys of one slot only,
each stream is read by its own XREADGROUP, and an empty round waits
``block_ms`` before the next. A stream whose slot is being migrated is
read where the cluster says (ASK, MOVED), and its consumer group and pending
entries move with it. With ``wait_replicas``, what was read is on that many
replicas before PostgreSQL gets it, so no row outlives a failover that loses
its entry (decision 0033).

While Redis or PostgreSQL is unreachable the writer retries every second and
reports each failure to the process's backend tracker, which logs the outage
once (and a reminder while it lasts); it probes PostgreSQL while that is down,
so the "back" line comes as soon as it answers. On a cluster, one master may fail
(down, a replica that does not confirm, a failover under way) while the others
answer: the streams it holds are skipped, what the others gave is written and
acknowledged in the same pass, and the failure goes to the tracker as an outage's
does (decision 0033).
"""

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgpack
from redis.exceptions import ResponseError

from ocs import backend_health, metrics
from ocs.backend_health import POSTGRESQL, REDIS, BackendHealth
from ocs.balances import keys, scripts
from ocs.balances.cluster import RedisClient, wire_for
from ocs.balances.wire import MIGRATION_WAIT_S, RedisWire

log = logging.getLogger("ocs.ledger")

# A redelivered entry (the same account, kind, amount and reference) is written once; an
# id already stored for another entry fails its row (migration 0048), which is set aside.
_LEDGER_SQL = (
    "INSERT INTO ledger (entry_id, account_id, kind, amount, balance_after, reference,"
    " occurred_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (entry_id) DO UPDATE"
    " SET entry_id = ledger_entry_reused(EXCLUDED.entry_id)"
    " WHERE (ledger.account_id, ledger.kind, ledger.amount, ledger.reference)"
    " IS DISTINCT FROM (EXCLUDED.account_id, EXCLUDED.kind, EXCLUDED.amount, EXCLUDED.reference)"
)
_CDR_SQL = (
    "INSERT INTO cdrs (entry_id, call_id, account_id, plan_id, zone, destination, caller,"
    " currency, authorized_at, stopped_at, duration, billed_seconds, connect_fee, first_block,"
    " increment, price_per_minute, rated_cost, charged, termination_cause, nas, member,"
    " direction, counter_id, counter_seconds, destination_name, rate_type, supplier, record_id,"
    " usage_template, rating_plan, answered_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,"
    " $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)"
    " ON CONFLICT (entry_id) DO NOTHING"
)
_PROBE_TIMEOUT_S = 5.0
# The most streams one round trip of a read names (decision 0036).
READ_STREAMS = 128
# Entries turned into rows between two turns of the event loop (about 2-4 ms of work).
ROWS_BETWEEN_TURNS = 200
_PG_ROUNDTRIP = metrics.BACKEND_ROUNDTRIP.labels(POSTGRESQL, "ledger")
_REDIS_ROUNDTRIP = metrics.BACKEND_ROUNDTRIP.labels(REDIS, "ledger")
_Entry = tuple[str, bytes | str, dict[bytes, bytes] | None]  # (stream key, id, fields)
_Row = tuple[Any, ...]  # one row of asyncpg arguments


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fields(flat: list[bytes] | None) -> dict[bytes, bytes] | None:
    """A stream entry's fields, from RESP's flat [field, value, ...] (None: deleted)."""
    if flat is None:
        return None
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _messages(stream: str, messages: list[Any] | None) -> list[_Entry]:
    """(stream, id, fields) of each entry of a stream reply; an entry deleted while
    pending comes as ``[id, nil]`` (or, from XAUTOCLAIM on Redis 6.2, nil alone: left)."""
    return [
        (stream, message[0], _fields(message[1]))
        for message in messages or []
        if message is not None
    ]


# PostgreSQL answers but takes no writes: a standby's read-only transactions (the old
# primary after a failover), insufficient resources (53xxx: a full disk, no memory).
_WRITES_REFUSED = (
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.InsufficientResourcesError,
)


def _writes_failed(exc: BaseException) -> bool:
    """Whether a failure is PostgreSQL's being away or refusing writes, not a bug's."""
    return isinstance(exc, _WRITES_REFUSED) or backend_health.backend_of(exc) == POSTGRESQL


# SQLSTATE classes of an error one row's values cause, whatever the rows beside it: a
# data exception (22: a NUL, a number out of range), an integrity constraint (23: an
# entry id stored for another entry) and a program limit (54: a text too long for an
# index's row). Such a row is set aside; any other error (a lock or statement timeout, a
# deadlock, permissions) is the database's, and leaves the batch to be read again.
_ROW_ERROR_CLASSES = ("22", "23", "54")


def _row_refused(exc: BaseException) -> bool:
    """Whether PostgreSQL refused a row for its own values (``_ROW_ERROR_CLASSES``)."""
    if not isinstance(exc, asyncpg.PostgresError) or _writes_failed(exc):
        return False
    # asyncpg's own refusal of an argument it cannot encode is a DataError (22000) too.
    state = str(getattr(exc, "sqlstate", None) or "")
    return state[:2] in _ROW_ERROR_CLASSES


@dataclass(slots=True)
class _Failed:
    """The first error of the streams one pass could not set up, read, claim or
    acknowledge. On a cluster that is one master's part (down, stalled, failing over):
    the others' entries are written all the same, and the error is reported once, after
    them, instead of leaving every master's entries unwritten (and those already read
    pending until ``claim_idle_ms``)."""

    error: Exception | None = None

    def answered(self, reply: Any, tolerated: str = "") -> bool:
        """Whether ``reply`` is an answer (or an error naming ``tolerated``); an error is
        kept when it is the pass's first."""
        if isinstance(reply, Exception) and not (tolerated and tolerated in str(reply)):
            self.error = self.error or reply
            return False
        return True

    def raise_first(self) -> None:
        """Raise the kept error, if any."""
        if self.error is not None:
            raise self.error


def rows_for(stream: str, entry_id: str, fields: dict[bytes, bytes]) -> tuple[_Row, _Row | None]:
    """The ledger row and (for a call) the CDR row of one stream entry."""
    # The fields are read by their raw names, as the stream holds them: decoding every
    # name first was a third of the writer's time per entry.
    f = fields
    key = f"{keys.bucket_of_ledger_key(stream)}-{entry_id}"
    kind = f[b"kind"].decode()
    occurred = _ts(int(f[b"ts"]))
    account = f[b"account"].decode()
    raw_reference = f.get(b"reference")
    reference = None if raw_reference is None else raw_reference.decode()
    ledger_row = (key, account, kind, int(f[b"amount"]), int(f[b"balance"]), reference, occurred)
    packed_cdr = f.get(b"cdr")
    if packed_cdr is None:
        return ledger_row, None
    cdr = msgpack.unpackb(packed_cdr)
    fee, block, step, price = cdr["rate"]
    authorized = _ts(cdr["authorized_at_ms"])
    cdr_row = (
        key,
        reference,
        account,
        cdr["plan"],
        cdr["zone"],
        cdr["destination"],
        cdr["caller"],
        cdr["currency"],
        authorized,
        # An imported record ended when the switch says, not when it was debited.
        _ts(cdr["stopped_at_ms"]) if "stopped_at_ms" in cdr else occurred,
        int(f[b"duration"]),
        cdr["billed"],
        fee,
        block,
        step,
        price,
        int(f[b"rated"]),
        int(f[b"charged"]),
        # An imported call's CDR names its own cause; the debit's is that of any usage.
        cdr.get("cause") or (f[b"cause"].decode() if b"cause" in f else "normal"),
        cdr.get("nas"),
        cdr.get("member"),
        cdr.get("direction", "outbound"),
        cdr.get("counter"),
        cdr.get("counter_seconds", 0),
        cdr.get("area"),
        cdr.get("rate_type"),
        cdr.get("supplier"),
        cdr.get("record_id"),
        cdr.get("template"),
        # The plan whose deck rated the call (an access number's); None: the account's.
        cdr.get("rating_plan"),
        _answered_at(f.get(b"answered"), authorized),
    )
    return ledger_row, cdr_row


def _answered_at(answered: bytes | None, authorized: datetime) -> datetime | None:
    """Where a call's price placed its start on the time bands, from its stop's entry
    (stop.lua's ``answered``, epoch s): its answer, or its authorization when none was
    reported (0, a provisional start), as the stop priced it. None: the entry has none
    (an imported record, a usage event, an entry of a release before migration 0074)."""
    if answered is None:
        return None
    second = int(answered)
    return authorized if second <= 0 else datetime.fromtimestamp(second, tz=UTC)


def _set_aside_command(
    stream: str, entry_id: bytes | str, fields: dict[bytes, bytes], reason: str
) -> tuple[Any, ...]:
    """The script call that keeps an entry PostgreSQL refused (or no one could read),
    whole with the error, in the bucket's dead-letter stream, and takes it off the
    ledger stream: once, however many writers hold it (set_aside.lua)."""
    bucket = keys.bucket_of_ledger_key(stream)
    kept: dict[bytes, bytes | str] = dict(fields)
    kept[b"original_id"] = entry_id
    kept[b"error"] = reason[:500]
    flat = [part for pair in kept.items() for part in pair]
    names = (stream, keys.dead_letters(bucket))
    return (
        "EVALSHA",
        scripts.SET_ASIDE.sha,
        len(names),
        *names,
        keys.LEDGER_GROUP,
        entry_id,
        *flat,
    )


def _log_set_aside(stream: str, entry_id: bytes | str, reason: str) -> None:
    """One line and one count for an entry set aside (by this writer, not another)."""
    metrics.LEDGER_DEAD_LETTERS.inc()
    log.error(
        "ledger entry set aside: PostgreSQL refused it",
        extra={"stream": stream, "entry": _s(entry_id), "error": reason[:200]},
    )


async def _run_with_scripts(wire: RedisWire, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """``execute_many``, loading the scripts again where Redis answered NOSCRIPT (a
    restart, a SCRIPT FLUSH, a master a failover promoted) and sending those again."""
    replies = await wire.execute_many(commands)
    missing = [
        i
        for i, reply in enumerate(replies)
        if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT")
    ]
    if missing:
        await wire.execute_on_every_master([("SCRIPT", "LOAD", scripts.SET_ASIDE.source)])
        again = await wire.execute_many([commands[i] for i in missing])
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


def _rounds(groups: list[list[str]], size: int) -> list[list[list[str]]]:
    """``groups`` (streams one command may name together) as round trips of at most
    ``size`` streams each: a larger group is split, smaller ones share a round trip."""
    pieces = [group[at : at + size] for group in groups for at in range(0, len(group), size)]
    rounds: list[list[list[str]]] = []
    streams = size
    for piece in pieces:
        if streams + len(piece) > size:
            rounds.append([])
            streams = 0
        rounds[-1].append(piece)
        streams += len(piece)
    return rounds


class LedgerWriter:
    """One consumer of every bucket's ledger stream."""

    def __init__(
        self,
        redis: RedisClient,
        pool: asyncpg.Pool,
        *,
        batch_size: int = 1000,
        claim_idle_ms: int = 30_000,
        block_ms: int = 500,
        linger: float = 0.1,
        health: BackendHealth | None = None,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
        migration_wait: float = MIGRATION_WAIT_S,
    ) -> None:
        # Its own connections to the Redis ``redis`` speaks to: a blocking read must not
        # hold the hot path's, and WAIT confirms the writes of the connection it runs on.
        # A command of a slot being migrated (TRYAGAIN) is retried ``migration_wait``
        # seconds, as the setting (``redis_migration_wait_ms``) says.
        self._wire: RedisWire = wire_for(
            redis,
            wait_replicas=wait_replicas,
            wait_timeout_ms=wait_timeout_ms,
            migration_wait=migration_wait,
        )
        self._sessions = 0
        self._health = health if health is not None else backend_health.default()
        self._pool = pool
        self._batch_size = batch_size
        self._claim_idle_ms = claim_idle_ms
        self._block_ms = block_ms
        self._linger = linger
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._streams = keys.all_ledgers()
        self.written = 0
        self._writes_refused = False  # PostgreSQL answers but refuses writes (logged once)
        # Entries this writer read and could not write (a failed insert): read again,
        # before any new one, so that PostgreSQL refusing writes for a while (a standby
        # after a failover, a full disk) leaves one batch unwritten, not one a second.
        self._own_unwritten = False

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[RedisWire]:
        """The wire, closed again after a call made outside ``run`` (tests, tools)."""
        self._sessions += 1
        try:
            yield self._wire
        finally:
            self._sessions -= 1
            if self._sessions == 0:
                await self._wire.close()

    async def ensure_groups(self) -> None:
        """Create the consumer group on every bucket stream (idempotent); raises the
        first failure, once the groups are made wherever Redis answered."""
        failed = _Failed()
        await self._create_groups(failed)
        failed.raise_first()

    async def _create_groups(self, failed: _Failed) -> None:
        """``ensure_groups``, the failures kept in ``failed``."""
        async with self._session() as wire:
            replies = await wire.execute_many(
                [
                    ("XGROUP", "CREATE", stream, keys.LEDGER_GROUP, "0", "MKSTREAM")
                    for stream in self._streams
                ]
            )
        for reply in replies:
            failed.answered(reply, tolerated="BUSYGROUP")

    async def read_new(self, block_ms: int | None = None) -> int:
        """Write and acknowledge new entries; returns how many were written.

        ``block_ms``: when none are there, wait up to this long for some (on a
        cluster, which cannot block on many slots at once: wait, then return 0).

        Two reads, so that one batch stays about ``batch_size`` entries: XREADGROUP's
        COUNT applies to each stream, and asking every one of the 1,024 streams for a
        whole batch could return a million entries at once after a PostgreSQL outage
        left a backlog in every bucket. First every stream is asked for its share of a
        batch (at least one entry); then the streams that gave all they were asked,
        which may hold more (a busy account's bucket), share what is left of it.

        Streams that could not be read (a cluster master failing) are skipped: the
        others' entries are written, then the first such failure is raised.
        """
        failed = _Failed()
        written = await self._read_new(block_ms, failed)
        failed.raise_first()
        return written

    async def _read_new(self, block_ms: int | None, failed: _Failed) -> int:
        """``read_new``, the failures of streams kept in ``failed``."""
        async with self._session() as wire:
            groups = wire.multi_key_groups(self._streams)
            share = max(1, self._batch_size // len(self._streams))
            if self._own_unwritten:
                own, _ = await self._read(wire, groups, share, failed, pending=True)
                if own:
                    return await self._write(own, failed)
                if failed.error is None:
                    # Else a master's own pending entries are still to be read: next pass.
                    self._own_unwritten = False
            entries, full = await self._read(wire, groups, share, failed)
            room = self._batch_size - len(entries)
            if full and room > 0:
                more, _ = await self._read(
                    wire, wire.multi_key_groups(full), max(1, room // len(full)), failed
                )
                entries += more
            if not entries and block_ms:
                if len(groups) == 1:
                    # Nothing there: one read names every stream and waits for the first
                    # entry to come (with no entries to hand out, it costs Redis little).
                    entries, _ = await self._read(wire, groups, share, failed, ("BLOCK", block_ms))
                else:
                    await asyncio.sleep(block_ms / 1000)
            return await self._write(entries, failed)

    async def _read(
        self,
        wire: RedisWire,
        groups: list[list[str]],
        count: int,
        failed: _Failed,
        block: tuple[Any, ...] = (),
        *,
        pending: bool = False,
    ) -> tuple[list[_Entry], list[str]]:
        """New entries of the streams in ``groups`` (``pending``: those this writer read
        and has not acknowledged), at most ``count`` from each, and the streams that
        gave ``count`` (they may hold more). A stream Redis failed to read (its master's
        failure, kept in ``failed``) gives none.

        Without ``block``, a round trip names at most ``READ_STREAMS`` streams, and the
        next is sent when it is answered: Redis runs one command at a time, and one read
        of all 1,024 streams, each with entries, held every other client for 2.7 ms.
        """
        rounds = [groups] if block else _rounds(groups, READ_STREAMS)
        entries: list[_Entry] = []
        full: list[str] = []
        for batch in rounds:
            commands = [
                (
                    "XREADGROUP",
                    "GROUP",
                    keys.LEDGER_GROUP,
                    self.consumer,
                    "COUNT",
                    count,
                    *block,
                    "STREAMS",
                    *group,
                    *(("0" if pending else ">") for _ in group),
                )
                for group in batch
            ]
            replies = await wire.execute_many(commands)
            for reply in replies:
                if not failed.answered(reply):
                    continue
                for stream, messages in reply or []:
                    name = _s(stream)
                    if len(messages) >= count:
                        full.append(name)
                    entries.extend(_messages(name, messages))
        return entries, full

    async def claim_stale(self) -> int:
        """Take over entries another consumer read but never acknowledged; raises the
        first failure of a stream that could not be claimed from (a cluster master
        failing), once the others' entries are written."""
        failed = _Failed()
        written = await self._claim(failed)
        failed.raise_first()
        return written

    async def _claim(self, failed: _Failed) -> int:
        """``claim_stale``, the failures of streams kept in ``failed``."""
        async with self._session() as wire:
            replies = await wire.execute_many(
                [
                    (
                        "XAUTOCLAIM",
                        stream,
                        keys.LEDGER_GROUP,
                        self.consumer,
                        self._claim_idle_ms,
                        "0-0",
                        "COUNT",
                        self._batch_size,
                    )
                    for stream in self._streams
                ]
            )
            entries: list[_Entry] = []
            for stream, reply in zip(self._streams, replies, strict=True):
                if failed.answered(reply):
                    entries.extend(_messages(stream, reply[1] if reply else None))
            return await self._write(entries, failed)

    async def _write(self, entries: Sequence[_Entry], failed: _Failed | None = None) -> int:
        """Store ``entries`` in PostgreSQL, then acknowledge them; how many were written.
        An acknowledgement a master failed to take is kept in ``failed`` (None: raised):
        its entries, stored already, are read again later and change nothing."""
        if failed is None:
            failed = _Failed()
            written = await self._write(entries, failed)
            failed.raise_first()
            return written
        if not entries:
            return 0
        rows: list[tuple[str, bytes | str, dict[bytes, bytes], _Row, _Row | None]] = []
        poison: list[tuple[str, bytes | str, dict[bytes, bytes], str]] = []
        refused = 0  # rows PostgreSQL refused (poison also holds unreadable entries)
        for done, (stream, entry_id, fields) in enumerate(entries, 1):
            if done % ROWS_BETWEEN_TURNS == 0:
                # A batch of thousands read in one go is turned into rows a slice at a
                # time: calls served by the same loop wait a slice, not the batch.
                await asyncio.sleep(0)
            if fields is None:
                continue  # deleted while pending: it was written and acknowledged before
            try:
                ledger_row, cdr_row = rows_for(stream, _s(entry_id), fields)
            except (KeyError, ValueError, TypeError) as exc:
                poison.append((stream, entry_id, fields, f"unreadable entry: {exc!r}"))
                continue
            rows.append((stream, entry_id, fields, ledger_row, cdr_row))
        try:
            started = time.perf_counter()
            await self._insert([(r[3], r[4]) for r in rows])
            _PG_ROUNDTRIP.observe(time.perf_counter() - started)
            self._health.report_success(POSTGRESQL)
            if self._writes_refused:
                self._writes_refused = False
                log.warning("PostgreSQL takes the ledger's writes again")
        except asyncpg.PostgresError as exc:
            if _writes_failed(exc):
                raise
            # One row PostgreSQL cannot store must not hold back the batch (its other
            # accounts' entries, every later import waiting for them): insert row by
            # row and set the refused ones aside in the dead-letter stream. A row that
            # fails for the database's reason raises, and the batch is read again.
            refused = await self._insert_each(rows, poison)
        written = len(rows) - refused
        # Acknowledge only after the commit: a crash before this line re-delivers
        # the entries, and the inserts above ignore what is already there. An entry set
        # aside goes to the dead-letter stream in the step that acknowledges and deletes
        # it (set_aside.lua), so neither a writer stopped in between nor a second writer
        # holding the same entry (claimed while this one inserted) sets it aside twice.
        commands: list[tuple[Any, ...]] = [_set_aside_command(*entry) for entry in poison]
        aside = {(stream, _s(entry_id)) for stream, entry_id, _, _ in poison}
        by_stream: dict[str, list[Any]] = {}
        for stream, entry_id, _ in entries:
            if (stream, _s(entry_id)) not in aside:
                by_stream.setdefault(stream, []).append(entry_id)
        for stream, ids in by_stream.items():
            commands.append(("XACK", stream, keys.LEDGER_GROUP, *ids))
            commands.append(("XDEL", stream, *ids))
        started = time.perf_counter()
        async with self._session() as wire:
            replies = await _run_with_scripts(wire, commands)
        for reply in replies:
            failed.answered(reply)
        _REDIS_ROUNDTRIP.observe(time.perf_counter() - started)
        for (stream, entry_id, _, reason), reply in zip(poison, replies, strict=False):
            if reply == 1:  # 0: another writer set it aside (or wrote it) already
                _log_set_aside(stream, entry_id, reason)
        self.written += written
        metrics.LEDGER_WRITTEN.inc(written)
        return written

    async def _insert_each(
        self,
        rows: Sequence[tuple[str, bytes | str, dict[bytes, bytes], _Row, _Row | None]],
        poison: list[tuple[str, bytes | str, dict[bytes, bytes], str]],
    ) -> int:
        """Insert ``rows`` one at a time; each PostgreSQL refuses for its own values
        (``_row_refused``) is added to ``poison``. How many were refused."""
        refused = 0
        for stream, entry_id, fields, ledger_row, cdr_row in rows:
            try:
                await self._insert([(ledger_row, cdr_row)])
            except asyncpg.PostgresError as exc:
                if not _row_refused(exc):
                    raise
                poison.append((stream, entry_id, fields, str(exc)))
                refused += 1
        return refused

    async def _insert(self, rows: Sequence[tuple[_Row, _Row | None]]) -> None:
        ledger_rows = [ledger for ledger, _ in rows]
        cdr_rows = [cdr for _, cdr in rows if cdr is not None]
        async with self._pool.acquire() as conn, conn.transaction():
            if ledger_rows:
                await conn.executemany(_LEDGER_SQL, ledger_rows)
            if cdr_rows:
                await conn.executemany(_CDR_SQL, cdr_rows)

    async def run(self, stopping: asyncio.Event, claim_every: float = 5.0) -> None:
        """Write until ``stopping`` is set; errors are logged and retried, never fatal."""
        async with self._session():  # one set of connections for the whole run
            await self._run(stopping, claim_every)

    async def _run(self, stopping: asyncio.Event, claim_every: float) -> None:
        groups_ready = False
        last_claim = 0.0
        while not stopping.is_set():
            failed = _Failed()
            claimed = written = 0
            try:
                if not groups_ready:
                    # Also after a failure: groups vanish if Redis lost its data. Those of
                    # a master that fails are made on a later pass; the rest read meanwhile.
                    await self._create_groups(failed)
                    groups_ready = failed.error is None
                if not self._health.is_up(POSTGRESQL):
                    await self._probe_postgresql()
                if time.monotonic() - last_claim >= claim_every:
                    last_claim = time.monotonic()
                    claimed = await self._claim(failed)
                written = await self._read_new(self._block_ms, failed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                groups_ready = False
                if _writes_failed(exc):
                    # Not a bug's: PostgreSQL away or refusing writes. What was read is
                    # written first when it takes writes again; a bug's batch is left to
                    # be claimed again later, and new entries go on.
                    self._own_unwritten = True
                self._log_failure(exc)
                await _pause(stopping, 1.0)
                continue
            if failed.error is not None:
                # Part of Redis failed (a cluster master): the others' entries are written
                # and acknowledged; the failure is reported once, as an outage is.
                groups_ready = False
                self._log_failure(failed.error)
                if not claimed + written:
                    await _pause(stopping, 1.0)
                continue
            self._health.report_success(REDIS)
            if 0 < written < self._batch_size and self._linger > 0:
                # Under steady traffic, let entries gather for a moment: one read of
                # 1024 streams and one transaction per batch instead of per entry.
                await _pause(stopping, self._linger)

    def _log_failure(self, exc: Exception) -> None:
        if isinstance(exc, _WRITES_REFUSED) and backend_health.backend_of(exc) is None:
            # A primary that answers and refuses writes (a full disk), or a standby: not
            # an unreachable PostgreSQL for the rest of ocs (its reads still work), so
            # the writer says it itself, once until a write succeeds.
            metrics.BACKEND_ERRORS.labels(POSTGRESQL, "ledger").inc()
            if not self._writes_refused:
                self._writes_refused = True
                log.error(
                    "PostgreSQL refuses the ledger's writes; entries wait in Redis",
                    extra={"error": backend_health.describe(exc)},
                )
            return
        backend = backend_health.backend_of(exc, POSTGRESQL)
        if backend is not None:
            metrics.BACKEND_ERRORS.labels(backend, "ledger").inc()
        # asyncpg raises a bare OSError when it cannot connect; redis-py wraps its own.
        if self._health.report(exc, default=POSTGRESQL):
            return  # an unreachable backend: the tracker logs it once per outage
        if isinstance(exc, ResponseError) and str(exc).startswith("NOGROUP"):
            log.warning(
                "ledger consumer groups missing (Redis lost its data?); recreating them",
                extra={"error": backend_health.describe(exc)},
            )
            return
        # Also called for a stream's failure kept from an answered pass: no exception
        # is being handled then, so the traceback is named.
        log.error("ledger write failed; retrying", exc_info=exc)

    async def _probe_postgresql(self) -> None:
        """One ``SELECT 1``: ends a PostgreSQL outage as soon as it answers (raises if not)."""
        # Bounded: an unanswering host must not hold the writer (or its shutdown) for long.
        async with asyncio.timeout(_PROBE_TIMEOUT_S), self._pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
        self._health.report_success(POSTGRESQL)


async def _pause(stopping: asyncio.Event, seconds: float) -> None:
    """Wait ``seconds``, or less if ``stopping`` is set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopping.wait(), timeout=seconds)
