"""IVR settings: what a prepaid IVR announces (the balance, the time the funds buy,
both or nothing) and in which language, a plan's default and an account's override,
and the plan's voicemail server (decision 0030).

PostgreSQL keeps them (``plan_ivr``, ``account_ivr``, migration 0038); Redis keeps a
packed copy beside the account's real-time state, so a RADIUS answer reads them in
the round trip it already makes, never from PostgreSQL (as members and callers are
kept). This layer (balances) owns both writes, like ``accounts.py`` does.
"""

import re
from dataclasses import dataclass

import asyncpg
import msgspec

from ocs.balances.store import BalanceStore
from ocs.errors import OcsError, Reason, invalid

ANNOUNCE = ("none", "balance", "time", "both")
LANGUAGE = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")  # a BCP 47 tag: en, pt-BR
VOICEMAIL_MAX = 200
# What a voicemail server address may hold: a SIP URI or host[:port], never a separator
# of the packed form (|) or of a Cisco AVPair's text.
_SERVER = re.compile(r"[A-Za-z0-9@:;=._+\-/\[\]]{1,200}")


def validate_announce(value: object, field: str = "announce") -> str:
    """One of ``ANNOUNCE``; 400 naming ``field`` otherwise."""
    if value not in ANNOUNCE:
        raise invalid(field, f"expected one of {', '.join(ANNOUNCE)}")
    return str(value)


def validate_language(value: object, field: str = "language") -> str:
    """A language tag (``en``, ``pt-BR``); 400 naming ``field`` otherwise."""
    if not isinstance(value, str) or len(value) > 35 or not LANGUAGE.fullmatch(value):
        raise invalid(field, "expected a language tag such as en or pt-BR")
    return value


@dataclass(frozen=True, slots=True)
class PlanIvr:
    """A plan's IVR default. ``language`` None: each account's prompt language."""

    plan_id: str
    announce: str = "balance"
    language: str | None = None
    voicemail_enabled: bool = False
    voicemail_server: str = ""

    def validate(self) -> None:
        """Refuse (400, naming the field) what the database would refuse."""
        validate_announce(self.announce)
        if self.language is not None:
            validate_language(self.language)
        if self.voicemail_server and not _SERVER.fullmatch(self.voicemail_server):
            raise invalid(
                "voicemail_server", "expected a SIP URI or host[:port] of up to 200 characters"
            )
        if self.voicemail_enabled and not self.voicemail_server:
            raise invalid("voicemail_server", "an enabled voicemail needs its server")

    def pack(self) -> str:
        """The Redis copy: ``announce|language|0 or 1|server``."""
        enabled = "1" if self.voicemail_enabled else "0"
        return f"{self.announce}|{self.language or ''}|{enabled}|{self.voicemail_server}"


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


def effective(plan_packed: str | None, account_packed: str | None) -> Ivr:
    """The IVR settings of an account from the packed copies (``store.ivr``)."""
    announce, language, enabled, server = (plan_packed or "balance|||").split("|", 3)
    if account_packed:
        own_announce, own_language = account_packed.split("|", 1)
        announce = own_announce or announce
        language = own_language or language
    index = ANNOUNCE.index(announce) if announce in ANNOUNCE else 1
    return Ivr(
        play_balance=bool(index & 1),
        play_time=bool(index & 2),
        language=language or None,
        voicemail_enabled=enabled == "1",
        voicemail_server=server if enabled == "1" else "",
        configured=bool(plan_packed or account_packed),
    )


async def set_plan_ivr(pool: asyncpg.Pool, store: BalanceStore, settings: PlanIvr) -> PlanIvr:
    """Set a plan's IVR default (insert or replace); 404 for an unknown plan."""
    settings.validate()
    async with pool.acquire() as conn, conn.transaction():
        try:
            await conn.execute(
                "INSERT INTO plan_ivr (plan_id, announce, language, voicemail_enabled,"
                " voicemail_server) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (plan_id) DO UPDATE"
                " SET announce = EXCLUDED.announce, language = EXCLUDED.language,"
                " voicemail_enabled = EXCLUDED.voicemail_enabled,"
                " voicemail_server = EXCLUDED.voicemail_server",
                settings.plan_id,
                settings.announce,
                settings.language,
                settings.voicemail_enabled,
                settings.voicemail_server,
            )
        except asyncpg.ForeignKeyViolationError:
            raise OcsError(
                Reason.PLAN_NOT_FOUND, f"plan {settings.plan_id!r} does not exist", field="plan_id"
            ) from None
        # Inside the transaction: a Redis failure leaves PostgreSQL as it was.
        await store.set_ivr(plan_id=settings.plan_id, packed=settings.pack())
    return settings


async def plan_ivr(pool: asyncpg.Pool, plan_id: str) -> PlanIvr:
    """A plan's IVR default (the defaults when it has none set); 404 for an unknown plan."""
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT p.id, i.announce, i.language, i.voicemail_enabled, i.voicemail_server"
            " FROM plans p LEFT JOIN plan_ivr i ON i.plan_id = p.id WHERE p.id = $1",
            plan_id,
        )
    if row is None:
        raise OcsError(Reason.PLAN_NOT_FOUND, f"plan {plan_id!r} does not exist", field="plan_id")
    if row["announce"] is None:
        return PlanIvr(plan_id)
    return PlanIvr(
        plan_id,
        row["announce"],
        row["language"],
        row["voicemail_enabled"],
        row["voicemail_server"],
    )


async def set_account_ivr(
    pool: asyncpg.Pool, store: BalanceStore, settings: AccountIvr
) -> AccountIvr:
    """Set (or, with both fields None, clear) an account's override; 404 for an unknown one."""
    settings.validate()
    async with pool.acquire() as conn, conn.transaction():
        if await conn.fetchval("SELECT 1 FROM accounts WHERE id = $1", settings.account_id) is None:
            raise OcsError(
                Reason.ACCOUNT_NOT_FOUND,
                f"account {settings.account_id!r} does not exist",
                field="account_id",
            )
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
        await store.set_ivr(account_id=settings.account_id, packed=settings.pack())
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
