"""Whether the stores may still hold a PIN or password digest of the old form (decision 0054).

A PIN no new-form digest opens is looked up by its old form as well, for the cards
stored before the pepper and not re-keyed yet (``ocs.balances.rekey``). Once ``ocs
credentials rekey`` has left no old-form digest in either store, that second look-up
can find nothing, yet every wrong PIN (an IVR brute-force attempt, a mistyped card)
paid one Redis round trip for it, for ever.

So the command records in PostgreSQL when it finishes with none left
(``pepper_check.old_forms_gone_at``, migration 0056), and clears that mark as it begins:
a run cut short, or one re-keying what a restored backup brought back, leaves the
look-up on. Each process reads the mark at its start and then again, in the background,
on a wrong PIN that comes ``REFRESH_S`` seconds or more after its last read: a process
started before the command stops the look-up without a restart, and one that has no
wrong PINs reads nothing. A right PIN never gets here: its cost is unchanged.

No process of this version writes an old-form digest (cards, passwords and re-keyed
references are all of the new form), so nothing but a re-key's start needs to clear it.
"""

import asyncio
import contextlib
import logging
import time

import asyncpg

log = logging.getLogger("ocs.rekey")

# The longest a process goes on with what it last read while wrong PINs arrive.
REFRESH_S = 10.0

# What a process logs when it reads that the mark changed: once per change.
_GONE = "no old-form PIN or password digest is left: a wrong PIN is looked up once"
_BACK = (
    "old-form PIN digests may be left (a re-key has begun): a PIN no new-form digest"
    " opens is looked up by its old form again"
)


async def read_gone(pool: asyncpg.Pool) -> bool:
    """Whether the last ``ocs credentials rekey`` left no old-form digest, none begun since."""
    gone = await pool.fetchval("SELECT old_forms_gone_at IS NOT NULL FROM pepper_check")
    return bool(gone)


async def record_gone(pool: asyncpg.Pool, gone: bool) -> None:
    """Record whether the stores are free of old-form digests (``ocs credentials rekey``
    alone: False as it begins, True when it finished with none left)."""
    await pool.execute(
        "UPDATE pepper_check SET old_forms_gone_at = CASE WHEN $1 THEN now() END", gone
    )


class OldForms:
    """What this process knows of the mark: whether a PIN no new-form digest opens is to be
    looked up by its old form too. Without a pool (a test's own service, a command that
    loads no pepper) it always is, as before the mark existed."""

    def __init__(self, pool: asyncpg.Pool | None = None, *, gone: bool = False) -> None:
        self._pool = pool
        self._gone = gone
        self._read_at = time.monotonic()
        self._refresh: asyncio.Task[None] | None = None
        self._failing = False
        # A plain attribute: a test narrows it.
        self.refresh_s = REFRESH_S

    @classmethod
    async def load(cls, pool: asyncpg.Pool) -> "OldForms":
        """The mark as PostgreSQL holds it now, kept up to date from ``pool``."""
        return cls(pool, gone=await read_gone(pool))

    @property
    def gone(self) -> bool:
        """Whether this process last read that no old-form digest is left."""
        return self._gone

    def may_be_left(self) -> bool:
        """Whether a PIN no new-form digest opens is to be looked up by its old form; called
        only on such a PIN, it reads the mark again (in the background, not awaited) when
        the last read is ``refresh_s`` old."""
        if (
            self._pool is not None
            and self._refresh is None
            and time.monotonic() - self._read_at >= self.refresh_s
        ):
            self._refresh = asyncio.get_running_loop().create_task(self._read(self._pool))
        return not self._gone

    async def _read(self, pool: asyncpg.Pool) -> None:
        """Read the mark; log when it changed, and the first failure of a run of them."""
        try:
            gone = await read_gone(pool)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not self._failing:
                log.warning(
                    "cannot read whether old-form PIN digests are left; going on as before",
                    extra={"error": type(exc).__name__, "old_form_lookup": not self._gone},
                )
            self._failing = True
        else:
            self._failing = False
            if gone != self._gone:
                log.info(_GONE if gone else _BACK, extra={"old_form_lookup": not gone})
            self._gone = gone
        finally:
            self._read_at = time.monotonic()
            self._refresh = None

    async def stop(self) -> None:
        """Cancel a read in flight (the process is closing its pool)."""
        task, self._refresh = self._refresh, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
