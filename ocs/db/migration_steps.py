"""Migration steps that cannot run in one transaction: backfills done in id ranges, and
indexes on large tables built ``CONCURRENTLY``.

A migration ``NNNN_name.sql`` is applied in one transaction, which must stay short: it
holds its locks (an ``ALTER TABLE`` holds ACCESS EXCLUSIVE, which blocks every reader of
the table) until it commits, and every ``ocs`` process migrates when it starts. A
migration that must rewrite many rows is split: its SQL file does the fast part (a
column, a trigger, a constraint ``NOT VALID``), and a *step* registered here under the
same version does the rest in many short transactions, then validates what needs all
rows filled (``VALIDATE CONSTRAINT`` takes SHARE UPDATE EXCLUSIVE: readers and writers
go on).

A step runs on the runner's connection outside any transaction (autocommit, one
statement per ``execute``), so it may run what a transaction block refuses: an index on a
large table is built by ``create_index_concurrently``.

The runner (``ocs.db.migrate``) records the version with the SQL part, marked unfinished,
runs the step, then marks it finished. A step killed half-way (a process stopped, systemd's
start timeout) is run again from the start on the next ``ocs`` start: a step must be
resumable, touching only rows not done yet. Versions later than an unfinished step wait
for it.
"""

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

log = logging.getLogger("ocs.db")

# How long one statement of a migration may wait for a table lock, and how many times it
# is tried. An ALTER TABLE queued behind a long transaction (a billing run) would, while it
# waits, block every reader queued behind it: it gives up after LOCK_TIMEOUT_MS, lets the
# readers through, and tries again after LOCK_RETRY_PAUSE_S.
LOCK_TIMEOUT_MS = 5_000
LOCK_TRIES = 5
LOCK_RETRY_PAUSE_S = 2.0

# Rows of ids per backfill transaction: short enough that a kill rolls back seconds of
# work, long enough that 1M rows take ~100 transactions.
BACKFILL_RANGE = 10_000

# Told after each committed range of a step: (version, rows done, rows to do).
Progress = Callable[[int, int, int], Awaitable[None]]
Step = Callable[[asyncpg.Connection, Progress | None], Awaitable[None]]


class MigrationLockTimeout(Exception):
    """A migration statement found its table locked every time it tried."""


async def in_transaction(
    conn: asyncpg.Connection, action: Callable[[], Awaitable[object]], what: str
) -> None:
    """Run ``action`` in one transaction whose lock waits give up after LOCK_TIMEOUT_MS,
    tried LOCK_TRIES times; ``MigrationLockTimeout`` naming ``what`` after the last."""
    for attempt in range(1, LOCK_TRIES + 1):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {int(LOCK_TIMEOUT_MS)}")
                await action()
            return
        except asyncpg.LockNotAvailableError:
            # Rolled back: its queued lock request is gone and readers go on.
            log.warning(
                "migration waited too long for a lock",
                extra={"migration": what, "attempt": attempt, "tries": LOCK_TRIES},
            )
        if attempt < LOCK_TRIES:
            await asyncio.sleep(LOCK_RETRY_PAUSE_S)
    raise MigrationLockTimeout(
        f"migration {what}: a table it changes stayed locked by another transaction"
        f" ({LOCK_TRIES} tries of {LOCK_TIMEOUT_MS} ms); start again once it is done"
        " (pg_stat_activity shows which)"
    )


# Migration 0062's rule (decision 0027, addendum 2026-12-07): what a posted invoice asks,
# max(min(amount_due, new_charges), 0) rounded once to its currency's ISO 4217 minor unit,
# half away from zero. The minor unit of every currency whose exponent is not 2 (as the
# iso4217 package ships the table, decision 0019). For x >= 0 and an even step
# (10^(6 - e)), (x + step / 2) / step in integer division is x / step rounded half away
# from zero. An invoice paid under the old rule (its exact ask) stays paid: it asks at most
# what it was paid (were 12.345 rounded to 12.35, dunning would pursue the half cent).
# A void invoice keeps what it said and asks nothing: it stays NULL. ``{where}`` picks the
# rows: $1 and $2 bound an id range.
_ASK_0062 = """
WITH minor (code, exponent) AS (VALUES
    ('BHD', 3), ('BIF', 0), ('CLF', 4), ('CLP', 0), ('DJF', 0), ('GNF', 0),
    ('IQD', 3), ('ISK', 0), ('JOD', 3), ('JPY', 0), ('KMF', 0), ('KRW', 0),
    ('KWD', 3), ('LYD', 3), ('OMR', 3), ('PYG', 0), ('RWF', 0), ('TND', 3),
    ('UGX', 0), ('UYI', 0), ('UYW', 4), ('VND', 0), ('VUV', 0), ('XAF', 0),
    ('XOF', 0), ('XPF', 0)
),
asks AS (
    SELECT i.id, GREATEST(LEAST(i.amount_due, i.new_charges), 0) AS exact,
           (10::numeric ^ (6 - COALESCE(m.exponent, 2)))::bigint AS step
    FROM invoices i LEFT JOIN minor m ON m.code = i.currency::text
    WHERE i.state = 'posted' AND i.amount_asked IS NULL AND {where}
)
UPDATE invoices i SET amount_asked = CASE
        WHEN i.amount_paid >= a.exact
            THEN LEAST((a.exact + a.step / 2) / a.step * a.step, i.amount_paid)
        ELSE (a.exact + a.step / 2) / a.step * a.step
    END
FROM asks a WHERE i.id = a.id
"""
# One that its payments now settle (12.34 paid on an ask of 12.344871) is paid now.
_PAID_0062 = """
UPDATE invoices i SET paid_at = now()
WHERE i.state = 'posted' AND i.paid_at IS NULL AND i.amount_asked > 0
    AND i.amount_paid >= i.amount_asked AND {where}
"""
_IN_RANGE = "i.id >= $1 AND i.id < $2"


async def _fill_range_0062(conn: asyncpg.Connection, low: int, high: int) -> int:
    """Fill the ask of the posted invoices with ids in [low, high); how many."""
    status = await conn.execute(_ASK_0062.format(where=_IN_RANGE), low, high)
    await conn.execute(_PAID_0062.format(where=_IN_RANGE), low, high)
    return int(status.split()[-1])


async def _backfill_0062(conn: asyncpg.Connection, progress: Progress | None) -> None:
    """Migration 0062's backfill: every posted invoice's ``amount_asked`` in id ranges,
    then the constraint that says every posted invoice has one, validated."""
    todo = await conn.fetchrow(
        "SELECT count(*) AS n, min(id) AS low, max(id) AS high FROM invoices"
        " WHERE state = 'posted' AND amount_asked IS NULL"
    )
    total, done, started = int(todo["n"]), 0, time.monotonic()
    log.info("migration backfill started", extra={"version": 62, "rows": total})
    low = todo["low"]
    while low is not None and low <= todo["high"]:
        high = low + BACKFILL_RANGE
        filled = 0

        async def fill(low: int = low, high: int = high) -> None:
            """One range, in its own transaction."""
            nonlocal filled
            filled = await _fill_range_0062(conn, low, high)

        await in_transaction(conn, fill, "0062 backfill")
        tenth = done * 10 // max(total, 1)
        done, low = done + filled, high
        if done * 10 // max(total, 1) > tenth:
            # One line per tenth: a long backfill shows it moves, without flooding.
            log.info("migration backfill", extra={"version": 62, "rows": done, "of": total})
        if progress is not None:
            await progress(62, done, total)
    await _finish_0062(conn)
    log.info(
        "migration backfill done",
        extra={"version": 62, "rows": done, "seconds": round(time.monotonic() - started, 1)},
    )


async def _finish_0062(conn: asyncpg.Connection) -> None:
    """The CHECK that every posted invoice has its ask: added NOT VALID (a brief lock, no
    scan), the invoices posted meanwhile filled, then validated without blocking anyone.

    An older process still running during the backfill posts invoices without an ask:
    from the CHECK on it is refused, and the sweep after it fills those posted before."""
    exists = await conn.fetchval(
        "SELECT true FROM pg_constraint WHERE conrelid = 'invoices'::regclass"
        " AND conname = 'invoices_posted_asks'"
    )

    async def constrain() -> None:
        """Checks rows written from now on only."""
        await conn.execute(
            "ALTER TABLE invoices ADD CONSTRAINT invoices_posted_asks"
            " CHECK (state <> 'posted' OR amount_asked IS NOT NULL) NOT VALID"
        )

    async def sweep() -> None:
        """A scan that locks only the rows it fills (usually none)."""
        await conn.execute(_ASK_0062.format(where="true"))
        await conn.execute(_PAID_0062.format(where="true"))

    async def validate() -> None:
        """Checks every row under SHARE UPDATE EXCLUSIVE: reads and writes go on."""
        await conn.execute("ALTER TABLE invoices VALIDATE CONSTRAINT invoices_posted_asks")
        await conn.execute("ALTER TABLE invoices VALIDATE CONSTRAINT invoices_amount_asked_check")

    if not exists:
        await in_transaction(conn, constrain, "0062 constraint")
    await in_transaction(conn, sweep, "0062 sweep")
    await in_transaction(conn, validate, "0062 validate")


# Migration 0065's fill (decision 0050, addendum 2026-12-07): each invoice's snapshots
# name this cluster unless they name transactions it has not reached (read in another
# cluster before a move: NULL, compared by time), and are dated by the invoice's creation
# (their read time was not kept), the earlier snapshot by the newest invoice of the account
# that read it. Posted and void invoices too (0065's trigger allows exactly this change).
# A row is done once its read time is set: a resumed step touches only the others.
# ``{where}`` picks the rows: $1 and $2 bound an id range.
_USAGE_0065 = """
UPDATE invoices i SET
    usage_snapshot_system = CASE
        WHEN pg_snapshot_xmax(i.usage_snapshot) <= pg_current_xact_id()
        THEN (SELECT system_identifier FROM pg_control_system()) END,
    usage_snapshot_at = i.created_at
WHERE i.usage_snapshot IS NOT NULL AND i.usage_snapshot_at IS NULL AND {where}
"""
_LATE_0065 = """
UPDATE invoices i SET
    late_after_system = CASE
        WHEN pg_snapshot_xmax(i.late_after_snapshot) <= pg_current_xact_id()
        THEN (SELECT system_identifier FROM pg_control_system()) END,
    late_after_at = (
        SELECT max(e.created_at) FROM invoices e
        WHERE e.account_id = i.account_id AND e.kind = 'invoice'
          AND e.usage_snapshot::text = i.late_after_snapshot::text)
WHERE i.late_after_snapshot IS NOT NULL AND i.late_after_at IS NULL
  AND i.late_after_system IS NULL AND {where}
"""


async def _fill_in_ranges(
    conn: asyncpg.Connection,
    version: int,
    todo_sql: str,
    statements: tuple[str, ...],
    progress: Progress | None,
) -> None:
    """Run ``statements`` (each taking an id range as $1, $2) over the ids ``todo_sql``
    finds (``n``, ``low``, ``high``), ``BACKFILL_RANGE`` ids a transaction of its own, with
    a line when it starts and one when it is done."""
    todo = await conn.fetchrow(todo_sql)
    total, started = int(todo["n"]), time.monotonic()
    log.info("migration backfill started", extra={"version": version, "rows": total})
    low = todo["low"]
    while low is not None and low <= todo["high"]:
        high = low + BACKFILL_RANGE

        async def fill(low: int = low, high: int = high) -> None:
            """One range, in its own transaction."""
            for statement in statements:
                await conn.execute(statement, low, high)

        await in_transaction(conn, fill, f"{version:04d} backfill")
        low = high
        if progress is not None:
            # Told in ids gone through: counting the rows done would scan the table again.
            span = todo["high"] - todo["low"] + 1
            await progress(version, min(high - todo["low"], span), span)
    log.info(
        "migration backfill done",
        extra={
            "version": version,
            "rows": total,
            "seconds": round(time.monotonic() - started, 1),
        },
    )


async def _backfill_0065(conn: asyncpg.Connection, progress: Progress | None) -> None:
    """Migration 0065's backfill: the cluster and read time of every invoice's usage
    snapshots, in id ranges of their own transactions (posted and void ones included)."""
    await _fill_in_ranges(
        conn,
        65,
        "SELECT count(*) AS n, min(id) AS low, max(id) AS high FROM invoices"
        " WHERE (usage_snapshot IS NOT NULL AND usage_snapshot_at IS NULL)"
        " OR (late_after_snapshot IS NOT NULL AND late_after_at IS NULL"
        " AND late_after_system IS NULL)",
        (_USAGE_0065.format(where=_IN_RANGE), _LATE_0065.format(where=_IN_RANGE)),
        progress,
    )


# Migration 0066's rule: a flat fee line naming its subscription bundle gets the position
# of that bundle's flat fee rule whose "name: description" its description begins with
# (as ``bundles._fee_line`` wrote it, cut at 200 characters), the longest where several
# do. Where that longest is the text of two rules or more (a bundle's fee rules may share
# a description), the line keeps none and is matched by its text as before: naming one of
# them would leave the other's period unbilled, billed again by the next run. ``{where}``
# picks the lines: $1 and $2 bound an id range.
_RULE_0066 = """
UPDATE invoice_lines l SET bundle_rule_position = m.position
FROM (
    SELECT id, position FROM (
        SELECT l.id, r.position,
               rank() OVER (PARTITION BY l.id ORDER BY length(m.prefix) DESC) AS longest,
               count(*) OVER (PARTITION BY l.id, length(m.prefix)) AS alike
        FROM invoice_lines l
        JOIN subscription_bundles sb ON sb.id = l.subscription_bundle_id
        JOIN bundles b ON b.id = sb.bundle_id
        JOIN bundle_rules r ON r.bundle_id = b.id AND r.kind = 'flat_fee'
        CROSS JOIN LATERAL (SELECT left(b.name || ': ' || r.description || ' ', 200) AS prefix) m
        WHERE l.kind = 'bundle_fee' AND l.bundle_rule_position IS NULL AND {where}
          AND starts_with(l.description, m.prefix)
    ) c
    WHERE longest = 1 AND alike = 1
) m
WHERE l.id = m.id
"""
_LINES_IN_RANGE = "l.id >= $1 AND l.id < $2"


async def _backfill_0066(conn: asyncpg.Connection, progress: Progress | None) -> None:
    """Migration 0066's backfill: each flat fee line's rule, in id ranges of invoice
    lines; a line no rule's name matches keeps none (matched by its text, as before)."""
    await _fill_in_ranges(
        conn,
        66,
        "SELECT count(*) AS n, min(id) AS low, max(id) AS high FROM invoice_lines"
        " WHERE kind = 'bundle_fee' AND bundle_rule_position IS NULL",
        (_RULE_0066.format(where=_LINES_IN_RANGE),),
        progress,
    )


async def create_index_concurrently(
    conn: asyncpg.Connection, version: int, name: str, definition: str
) -> None:
    """Build index ``name`` as ``CREATE INDEX CONCURRENTLY name ON definition`` (what
    follows ``ON``: table, columns, any ``WHERE``) on ``conn``, outside any transaction.

    The build takes SHARE UPDATE EXCLUSIVE: the table's readers and writers go on, and the
    build waits for the transactions older than it instead (a long billing run delays it,
    never the other way round). A build stopped half-way (a kill, a cancel, a deadlock)
    leaves the index INVALID: never used by queries, yet updated by every write, and
    ``IF NOT EXISTS`` would keep it for ever. It is dropped (``CONCURRENTLY`` too) and
    built again; a valid one is kept."""
    valid = await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)", name
    )
    if valid:
        return
    started = time.monotonic()
    # A role's lock_timeout would stop the build's waits for older transactions, leaving
    # an INVALID index at every start: it waits as long as they last, blocking no one.
    await conn.execute("SET lock_timeout = 0")
    try:
        if valid is not None:
            log.warning(
                "migration dropping an invalid index left by a stopped build",
                extra={"version": version, "index": name},
            )
            await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")
        log.info("migration index build started", extra={"version": version, "index": name})
        await conn.execute(f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {definition}")
    finally:
        await conn.execute("RESET lock_timeout")
    log.info(
        "migration index build done",
        extra={
            "version": version,
            "index": name,
            "seconds": round(time.monotonic() - started, 1),
        },
    )


async def _index_0064(conn: asyncpg.Connection, progress: Progress | None) -> None:
    """Migration 0064's index of the payments' credits in the ledger (``ocs.billing.credit``
    finds a credit's row by its reference, ``pay:<payment id>``), built while the ledger
    writer's inserts and billing runs go on."""
    await create_index_concurrently(
        conn, 64, "ledger_payment_credit_idx", "ledger (reference) WHERE reference LIKE 'pay:%'"
    )


# Migration 0068's fill: a free number's ``freed_on`` is the latest day its
# ``number.released`` events gave it back (events are kept), GREATEST of what it has: a
# release by this version meanwhile is kept, and a resumed step changes no row again.
# $1 and $2 bound an id range of events.
_FREED_0068 = """
UPDATE number_set_numbers n SET freed_on = r.freed
FROM (
    SELECT e.data ->> 'number' AS number, max((e.data ->> 'on')::date) AS freed
    FROM events e
    WHERE e.kind = 'number.released' AND e.id >= $1 AND e.id < $2
    GROUP BY 1
) r
WHERE n.number = r.number AND n.account_id IS NULL
  AND (n.freed_on IS NULL OR n.freed_on < r.freed)
"""


async def _step_0068(conn: asyncpg.Connection, progress: Progress | None) -> None:
    """Migration 0068's step: the day each number given back before it was freed, read
    from its release events in id ranges, then account_numbers' index by number (a take's
    check that no one else is charged for the number after its day), built while takes,
    releases and billing runs go on."""
    await _fill_in_ranges(
        conn,
        68,
        "SELECT count(*) AS n, min(id) AS low, max(id) AS high FROM events"
        " WHERE kind = 'number.released'",
        (_FREED_0068,),
        progress,
    )
    await create_index_concurrently(
        conn, 68, "account_numbers_number_idx", "account_numbers (number)"
    )


# Migration 0071's rule (decision 0023, addendum 2026-12-07): what a flat fee line written
# before it adjusts, told by its description as ``bundles.taken_back_lines`` wrote it (cut
# at 200 characters), on the lines naming their subscription bundle and rule (every
# take-back and reversal does). Charging: a take-back when it begins "Credit of " and says
# "taken back: ", or is cut before saying it ("Credit of 3.21 on <a long name>..."),
# unless it begins with its own rule's fee text (a fee charge of a bundle named "Credit
# of ..."). Crediting: a reversal when it begins "Take-back of " (the only other credits
# say "Credit: ..."). A line is done once marked: a resumed step leaves it. ``{where}``
# picks the lines: $1 and $2 bound an id range.
_ADJUSTMENT_0071 = """
UPDATE invoice_lines l
SET adjustment = CASE WHEN l.exact_amount > 0 THEN 'take_back' ELSE 'take_back_reversal' END
WHERE l.kind = 'bundle_fee' AND l.adjustment IS NULL AND {where}
  AND l.subscription_bundle_id IS NOT NULL AND l.bundle_rule_position IS NOT NULL
  AND ((l.exact_amount < 0 AND l.description LIKE 'Take-back of %')
       OR (l.exact_amount > 0
           AND (l.description LIKE 'Credit of % taken back: %'
                OR (length(l.description) = 200 AND l.description LIKE 'Credit of % on %'))
           AND NOT EXISTS (
               SELECT 1 FROM subscription_bundles sb
               JOIN bundles b ON b.id = sb.bundle_id
               JOIN bundle_rules r ON r.bundle_id = b.id
               WHERE sb.id = l.subscription_bundle_id AND r.position = l.bundle_rule_position
                 AND starts_with(l.description,
                                 left(b.name || ': ' || r.description || ' ', 200)))))
"""
# A credit note's line is marked as the line it reverses (made after it: a lower id, its
# range done first).
_REVERSED_0071 = """
UPDATE invoice_lines l SET adjustment = r.adjustment
FROM invoice_lines r
WHERE l.kind = 'reversal' AND l.adjustment IS NULL AND {where}
  AND r.id = l.reverses_line AND r.adjustment IS NOT NULL
"""


async def _backfill_0071(conn: asyncpg.Connection, progress: Progress | None) -> None:
    """Migration 0071's backfill: each take-back and reversal of a fee period, and their
    credit notes' copies, marked in id ranges of invoice lines; then the column's CHECK,
    added ``NOT VALID`` by the file, validated without blocking anyone."""
    await _fill_in_ranges(
        conn,
        71,
        "SELECT count(*) AS n, min(id) AS low, max(id) AS high FROM invoice_lines"
        " WHERE adjustment IS NULL AND ("
        "(kind = 'bundle_fee' AND (description LIKE 'Credit of %'"
        " OR description LIKE 'Take-back of %'))"
        " OR (kind = 'reversal' AND (description LIKE 'Reversal: Credit of %'"
        " OR description LIKE 'Reversal: Take-back of %')))",
        (
            _ADJUSTMENT_0071.format(where=_LINES_IN_RANGE),
            _REVERSED_0071.format(where=_LINES_IN_RANGE),
        ),
        progress,
    )

    async def validate() -> None:
        """Checks every row under SHARE UPDATE EXCLUSIVE: reads and writes go on."""
        await conn.execute("ALTER TABLE invoice_lines VALIDATE CONSTRAINT invoice_lines_adjustment")

    await in_transaction(conn, validate, "0071 validate")


# Version -> the step run after that version's SQL file, outside its transaction.
STEPS: dict[int, Step] = {
    62: _backfill_0062,
    64: _index_0064,
    65: _backfill_0065,
    66: _backfill_0066,
    68: _step_0068,
    71: _backfill_0071,
}
