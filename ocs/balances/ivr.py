"""IVR settings of an account: its override of its plan's IVR default (what to
announce, in which language), and the settings an IVR is told, the plan's default
(ocs.catalog.plan_ivr) under the override (decision 0030).

PostgreSQL keeps the override (``account_ivr``, migration 0038); Redis keeps a
packed copy beside the account's real-time state, in its slot, so the authorize
script returns it with the grant and a RADIUS answer needs no read of its own
(decision 0035). This layer (balances) owns both writes, like ``accounts.py`` does.
"""

from dataclasses import dataclass

import asyncpg
import msgspec

from ocs.balances.store import BalanceStore
from ocs.catalog.plan_ivr import ANNOUNCE, PlanIvr, validate_announce, validate_language
from ocs.errors import OcsError, Reason, account_not_found


@dataclass(frozen=True, slots=True)
class AccountIvr:
    """An account's override of its plan's IVR default (None: the plan's)."""

    account_id: str
    announce: str | None = None
    language: str | None = None

    def validate(self) -> None:
        """Refuse (400, naming the field) what the database would refuse."""
        if self.announce is not None:
            validate_announce(self.announce)
        if self.language is not None:
            validate_language(self.language)

    def pack(self) -> str | None:
        """The Redis copy: ``announce|language``; None when nothing is overridden."""
        if self.announce is None and self.language is None:
            return None
        return f"{self.announce or ''}|{self.language or ''}"


class Ivr(msgspec.Struct, frozen=True, gc=False):
    """What an IVR is told for one account: the plan's default under its override.

    ``configured``: the plan or the account has IVR settings (else a RADIUS answer
    carries none, as before them). ``language`` None: no setting names one.
    """

    play_balance: bool
    play_time: bool
    language: str | None
    voicemail_enabled: bool
    voicemail_server: str
    configured: bool

    @property
    def announce(self) -> str:
        """``none``, ``balance``, ``time`` or ``both``."""
        return ANNOUNCE[self.play_balance + 2 * self.play_time]


# An account with no IVR settings at all: its answers carry none.
NO_IVR = Ivr(
    play_balance=True,
    play_time=False,
    language=None,
    voicemail_enabled=False,
    voicemail_server="",
    configured=False,
)


def effective(plan_default: PlanIvr | None, account_packed: str | None) -> Ivr:
    """The IVR settings of an account: its plan's default (None: none set) under its
    packed override (``AccountIvr.pack``; None: none)."""
    if plan_default is None and not account_packed:
        return NO_IVR  # most accounts: nothing to work out, on every grant
    announce = "balance" if plan_default is None else plan_default.announce
    language = None if plan_default is None else plan_default.language
    if account_packed:
        own_announce, own_language = account_packed.split("|", 1)
        announce = own_announce or announce
        language = own_language or language
    index = ANNOUNCE.index(announce) if announce in ANNOUNCE else 1
    enabled = plan_default is not None and plan_default.voicemail_enabled
    return Ivr(
        play_balance=bool(index & 1),
        play_time=bool(index & 2),
        language=language or None,
        voicemail_enabled=enabled,
        voicemail_server=plan_default.voicemail_server if plan_default and enabled else "",
        configured=plan_default is not None or bool(account_packed),
    )


async def set_account_ivr(
    pool: asyncpg.Pool, store: BalanceStore, settings: AccountIvr
) -> AccountIvr:
    """Set (or, with both fields None, clear) an account's override; 404 for an unknown one."""
    settings.validate()
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", settings.account_id) is None:
            raise account_not_found(settings.account_id)
        if settings.pack() is None:
            await conn.execute("DELETE FROM account_ivr WHERE account_id = $1", settings.account_id)
        else:
            await conn.execute(
                "INSERT INTO account_ivr (account_id, announce, language) VALUES ($1, $2, $3)"
                " ON CONFLICT (account_id) DO UPDATE SET announce = EXCLUDED.announce,"
                " language = EXCLUDED.language",
                settings.account_id,
                settings.announce,
                settings.language,
            )
        await store.set_account_ivr(settings.account_id, settings.pack())
    return settings


async def account_ivr(pool: asyncpg.Pool, account_id: str) -> AccountIvr:
    """An account's override (both None when it has none); 404 for an unknown account."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT a.id, i.announce, i.language FROM accounts a"
            " LEFT JOIN account_ivr i ON i.account_id = a.id WHERE a.id = $1",
            account_id,
        )
    if row is None:
        raise OcsError(
            Reason.ACCOUNT_NOT_FOUND, f"account {account_id!r} does not exist", field="account_id"
        )
    return AccountIvr(account_id, row["announce"], row["language"])
