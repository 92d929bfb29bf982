"""What the balance scripts answer, as values: a reservation, a live call's entry, a
stop's and an interim report's results, an account's creation.

msgspec Structs, defined apart from ``ocs.balances.store`` so that a build which compiles
the store with mypyc (decision 0038) keeps their class options (mypyc drops a class
statement's keywords: ``frozen``, ``gc``).
"""

import msgspec


class Reserved(msgspec.Struct, frozen=True, gc=False):
    """The authorize script reserved a line and ``reserved`` funds for the call;
    ``ivr_override`` is the account's packed IVR override (None: none)."""

    reserved: int
    available_before: int
    balance: int
    credit_limit: int
    ivr_override: str | None = None


class RecordClient(msgspec.Struct, frozen=True, gc=False, rename={"nas": "n"}):
    """The NAS client a packed live-call record names (``CallRecord.nas``, None: none),
    read without decoding the rest: whose call a call reference is (decision 0052)."""

    nas: str | None = None

    @classmethod
    def of(cls, packed: bytes) -> "RecordClient":
        """The client of a packed record."""
        client: RecordClient = _RECORD_CLIENT.decode(packed)
        return client


_RECORD_CLIENT = msgspec.msgpack.Decoder(RecordClient)


# ``LiveEntry.provisional``: the entry's start is the answer the switch reported (or 0, a
# RADIUS call's Accounting-Start still to come); a provisional start, the second of its
# authorization (an HTTP call not yet answered, decision 0055); the same once a repeat of
# its authorization was granted, so that it is not released as unconfirmed.
ANSWERED = 0
PROVISIONAL = 1
PROVISIONAL_REPEATED = 2


class LiveEntry(msgspec.Struct, frozen=True, gc=False):
    """A live call as Redis holds it: ``<held>|<started>|<used>|<debited>|<record>``.

    ``started`` is written ``0<second>`` for a provisional start (``00<second>`` once a
    repeat of the authorization was granted): every reader that takes it as a number
    reads the authorization second, and ``provisional`` says which it is.
    """

    held: int
    started: int  # epoch seconds; 0 while the Accounting-Start is still to come
    used: int
    debited: int
    record: bytes
    provisional: int = ANSWERED

    @property
    def answered_at(self) -> int:
        """When the call was answered (epoch seconds); 0 while no answer was reported
        (a provisional start is the authorization's, not an answer)."""
        return 0 if self.provisional else self.started

    def fields(self) -> str:
        """``<held>|<started>|<used>|<debited>`` as Redis holds them (start.lua's check)."""
        started = "0" * self.provisional + str(self.started)
        return f"{self.held}|{started}|{self.used}|{self.debited}"


def parse_live_entry(entry: bytes) -> LiveEntry:
    """A live-calls hash value, split into its fields."""
    held, started, used, debited, record = entry.split(b"|", 4)
    # A start written with leading zeros is provisional (``LiveEntry``); "0" alone is none.
    provisional = ANSWERED
    if started[0] == 48 and len(started) > 1:  # b"0"
        provisional = PROVISIONAL_REPEATED if started[1] == 48 else PROVISIONAL
    return LiveEntry(int(held), int(started), int(used), int(debited), record, provisional)


class NotLive(msgspec.Struct, frozen=True, gc=False):
    """The record a stop was given to check is not the live call's: ``entry`` is the
    account's live call that holds the id now, None when the id's call was closed
    already (stop_live.lua). Nothing was changed."""

    entry: LiveEntry | None = None


class StopResult(msgspec.Struct, frozen=True, gc=False):
    """A stopped (or charged) call as the script recorded it; ``repeated``: a repeat."""

    charged: int
    rated: int
    balance: int
    duration: int
    ledger_entry: str
    cause: str
    repeated: bool
    added: int = 0  # a late stop's: what it charged to the close's (negative: gave back)


class UsageResult(msgspec.Struct, frozen=True, gc=False):
    """A charged usage event as charge.lua recorded it; ``repeated``: a repeat.

    ``service``, ``billed``, ``currency`` and ``zone`` are what the event was charged
    as, so a retry is answered with them whatever it says and whatever the catalog says
    now; None in a result kept before they were (or an imported record's).
    """

    charged: int
    balance: int
    quantity: int
    repeated: bool
    service: str | None = None
    billed: int | None = None
    currency: str | None = None
    zone: str | None = None


class CounterShort(msgspec.Struct, frozen=True, gc=False):
    """A late stop priced with more free counter seconds than its counter still has:
    nothing was charged; price it again with ``seconds`` counter seconds in all."""

    seconds: int


class Amend(msgspec.Struct, frozen=True, gc=False):
    """A late stop of a call ocs closed by policy: nothing was done; its CDR is to carry
    what it changes from the close, which recorded ``duration`` seconds, and its price is
    placed on the time bands from ``started``, the answer the close found (epoch s; 0:
    never answered, or a close recorded before closes kept it)."""

    duration: int
    started: int = 0


class UpdateResult(msgspec.Struct, frozen=True, gc=False):
    """A live call after an interim report: seconds used, funds debited and still held."""

    used: int
    debited: int
    held: int
    started_now: bool = False  # the report was the first sign the call started
    # The call's start as its entry holds it after the report (0: not told, a reply of an
    # earlier version's script): what every report of the call answers.
    started: int = 0


class Created(msgspec.Struct, frozen=True, gc=False):
    """create_account.lua made the account, or (``adopted``) found it made before by a
    request with the same token, one PostgreSQL never recorded: a retry finishes that
    creation. ``balance``: its balance now; ``pin_digest``: the PIN digest an adopted card
    was given then ("" for none)."""

    balance: int
    adopted: bool = False
    pin_digest: str = ""
