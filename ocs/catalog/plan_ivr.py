"""A plan's IVR default: what a prepaid IVR announces (the balance, the time the funds
buy, both or nothing), in which language, and where the switch forwards an unanswered
call (the voicemail server). Decision 0030; why it is catalog, decision 0035.

A plan's default is a plan setting like its tariffs: PostgreSQL keeps it
(``plan_ivr``, migration 0038) and every serving process holds it in its catalog
snapshot, so an authorization reads it from memory. An account's override lives
beside the account's real-time state (ocs.balances.ivr).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from ocs.errors import invalid

ANNOUNCE = ("none", "balance", "time", "both")
LANGUAGE = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")  # a BCP 47 tag: en, pt-BR
VOICEMAIL_MAX = 200
# What a voicemail server address may hold: a SIP URI or host[:port], never a separator
# of an account override's packed form (|) or of a Cisco AVPair's text.
_SERVER = re.compile(r"[A-Za-z0-9@:;=._+\-/\[\]]{1,200}")
# A catalog notification ``ivr:<plan>``: a plan's IVR default changed. It is no deck's,
# so the reload it starts keeps every deck.
IVR_CHANGED = "ivr"


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


def plan_ivr_from_row(row: asyncpg.Record) -> PlanIvr:
    """A ``plan_ivr`` row (or a row with its columns) as a ``PlanIvr``."""
    return PlanIvr(
        row["plan_id"],
        row["announce"],
        row["language"],
        row["voicemail_enabled"],
        row["voicemail_server"],
    )


async def read_plan_ivrs(conn: asyncpg.Connection) -> dict[str, PlanIvr]:
    """Every plan's IVR default that is set, by plan (a catalog load reads them all)."""
    rows = await conn.fetch(
        "SELECT plan_id, announce, language, voicemail_enabled, voicemail_server FROM plan_ivr"
    )
    return {row["plan_id"]: plan_ivr_from_row(row) for row in rows}
