"""Every Redis key ocs uses, built in one place.

All keys of one account carry the same hash tag, a *bucket* of accounts
``{b:N}`` with ``N = crc32(account) % BUCKETS``, so that each Lua script
touches one hash slot and the same code runs on a standalone Redis and on
Redis Cluster. The ledger stream of a bucket shares that tag, so a script can
change a balance and append its ledger entry atomically.

Changing ``BUCKETS`` moves every key: it is fixed for the life of a deployment.
"""

import json
from binascii import crc32

BUCKETS = 1024

LEDGER_GROUP = "ledger-writer"


def bucket_of(name: str) -> int:
    """The bucket an account (or a call id, for call references) belongs to."""
    return crc32(name.encode()) % BUCKETS


# Every bucket's hash tag ``{b:N}``, made once: a request builds half a dozen keys.
_TAGS = tuple(f"{{b:{bucket}}}" for bucket in range(BUCKETS))


def account(account_id: str) -> str:
    """Hash: balance, credit_limit, reserved, max_lines, status, plan, currency, and the
    policy fields min_balance, critical, lock, committed, member_lines, ml:<member>,
    expire_days, pw, expires, and pwfails, pwfail_until (wrong passwords, decision 0045);
    created (``<ms>:<token>`` of the creating request) and a card's pin (its PIN digest),
    for a retried creation to finish it (decision 0042)."""
    return f"acct:{_TAGS[bucket_of(account_id)]}:{account_id}"


def account_in(bucket: int, account_id: str) -> str:
    """``account(account_id)`` when its bucket is known already (a batch of one bucket)."""
    return f"acct:{_TAGS[bucket]}:{account_id}"


def stopped_call_in(bucket: int, account_id: str, call_id: str) -> str:
    """``stopped_call(account_id, call_id)`` when the account's bucket is known already."""
    return f"stopped:{_TAGS[bucket]}:{account_id}:{call_id}"


def live_calls(account_id: str) -> str:
    """Hash: call id -> msgpack live-call record; its length is the lines in use."""
    return f"calls:{_TAGS[bucket_of(account_id)]}:{account_id}"


def live_calls_in(bucket: int, account_id: str) -> str:
    """``live_calls(account_id)`` when the account's bucket is known already."""
    return f"calls:{_TAGS[bucket]}:{account_id}"


def stopped_call(account_id: str, call_id: str) -> str:
    """String: msgpack result of a stopped call, kept to answer a repeated stop."""
    return f"stopped:{_TAGS[bucket_of(account_id)]}:{account_id}:{call_id}"


def usage_done(account_id: str, event_id: str) -> str:
    """String: msgpack result of a usage event, kept to answer a repeated one. Not the
    stopped-call key: an event id may equal a live call's id."""
    return f"usage:{_TAGS[bucket_of(account_id)]}:{account_id}:{event_id}"


def usage_done_in(bucket: int, account_id: str, event_id: str) -> str:
    """``usage_done(account_id, event_id)`` when the account's bucket is known already."""
    return f"usage:{_TAGS[bucket]}:{account_id}:{event_id}"


def topup_done(account_id: str, topup_id: str) -> str:
    """String: msgpack result of a top-up, kept to answer a repeated top-up."""
    return f"topup:{_TAGS[bucket_of(account_id)]}:{account_id}:{topup_id}"


def fee_done(account_id: str, reference: str) -> str:
    """String: msgpack result of a fee, kept to answer a repeated one."""
    return f"fee:{_TAGS[bucket_of(account_id)]}:{account_id}:{reference}"


def call_expiry(bucket: int) -> str:
    """Sorted set: ``account\\x00call id`` scored by the live call's expiry (epoch s)."""
    return f"expiry:{_TAGS[bucket]}"


def ledger(bucket: int) -> str:
    """Stream: every balance change and CDR of the bucket's accounts."""
    return f"ledger:{_TAGS[bucket]}"


def import_refused(bucket: int, import_id: int) -> str:
    """Set: accounts of the bucket a usage import could not charge; their later rows wait."""
    return f"mediation:{_TAGS[bucket]}:{import_id}:refused"


def dead_letters(bucket: int) -> str:
    """Stream: ledger entries PostgreSQL refused, kept whole with the error, for an operator."""
    return f"ledger-dead:{_TAGS[bucket]}"


def all_ledgers() -> list[str]:
    """Every bucket's ledger stream key, in bucket order."""
    return [ledger(bucket) for bucket in range(BUCKETS)]


def call_ref(call_id: str) -> str:
    """String: msgpack reference (account, rate) of a live call, found by call id alone."""
    return f"callref:{_TAGS[bucket_of(call_id)]}:{call_id}"


def client_call_ref(call_id: str, client: str | None) -> str:
    """String: the reference of a NAS client's call whose id another client's live call
    holds (``call_ref`` names that one; decision 0052). ``client`` None: a call authorized
    with no NAS (the HTTP switch's). No call id holds a "|"."""
    return call_ref(f"{call_id}|{client or ''}")


def caller_ref(caller: str) -> str:
    """String: the account a caller id (Calling-Station-Id) identifies, for pinless calls."""
    return f"caller:{_TAGS[bucket_of(caller)]}:{caller}"


def did_ref(number: str) -> str:
    """String: the account an assigned number (DID, toll-free) identifies: the callee of
    an inbound call to it (decision 0030)."""
    return f"did:{_TAGS[bucket_of(number)]}:{number}"


def account_ivr(account_id: str) -> str:
    """String: an account's IVR override, ``announce|language`` (empty: the plan's)."""
    return account_ivr_in(bucket_of(account_id), account_id)


def account_ivr_in(bucket: int, account_id: str) -> str:
    """``account_ivr`` of an account whose bucket is known already."""
    return f"ivracct:{_TAGS[bucket]}:{account_id}"


def member_lines(account_id: str) -> str:
    """Hash: member -> its calls live now (for the per-member line limit)."""
    return f"mlines:{_TAGS[bucket_of(account_id)]}:{account_id}"


def member_lines_in(bucket: int, account_id: str) -> str:
    """``member_lines(account_id)`` when the account's bucket is known already."""
    return f"mlines:{_TAGS[bucket]}:{account_id}"


def counters(account_id: str) -> str:
    """Hash: ``<counter>:limit``, ``<counter>:used``, ``<counter>:held`` seconds this cycle;
    ``<counter>:cycle``, the label of the cycle a reset last started (``<label>|bought``:
    bought or first used in that cycle after its reset); ``<counter>:gone`` once
    cancelled while calls still hold some of it; ``cycle``, the label of the account's
    last reset, ``cycle_from`` when it began (epoch ms) and ``closed_from`` when the cycle
    before it began (the one closed cycle kept); ``<counter>:carried`` and
    ``<counter>:closed``, what the closed cycle left its late usage records (kept by the
    reset, ``closed`` by a cancel too; counter_reset.lua)."""
    return f"counters:{_TAGS[bucket_of(account_id)]}:{account_id}"


def counters_in(bucket: int, account_id: str) -> str:
    """``counters(account_id)`` when the account's bucket is known already."""
    return f"counters:{_TAGS[bucket]}:{account_id}"


def member_ref(member: str) -> str:
    """String: the account a member (SIP user, extension, caller id) belongs to."""
    return f"member:{_TAGS[bucket_of(member)]}:{member}"


def pin_ref(pin_digest: str) -> str:
    """String: the account (card) a PIN opens, keyed by the PIN's digest, never the PIN."""
    return f"pin:{_TAGS[bucket_of(pin_digest)]}:{pin_digest}"


def card_batch(batch_id: str) -> str:
    """String: the token of the request that began a PIN batch, written before its first
    card, so that only that request again may finish a batch it left half made."""
    return f"batch:{_TAGS[bucket_of(batch_id)]}:{batch_id}"


def pin_failures(scope: str, who: str) -> str:
    """String counter: failed PIN attempts from one caller, one NAS or one API token in
    the window."""
    return f"pinfail:{_TAGS[bucket_of(who)]}:{scope}:{who}"


def expiry_member(account_id: str, call_id: str) -> str:
    """The member of the reservation-expiry set for one call of one account."""
    return f"{account_id}\x00{call_id}"


def split_expiry_member(member: bytes | str) -> tuple[str, str]:
    """(account id, call id) of an expiry-set member: the inverse of ``expiry_member``."""
    text = member.decode() if isinstance(member, bytes) else member
    account_id, _, call_id = text.partition("\x00")
    return account_id, call_id


def expiry_member_account(member: bytes) -> bytes:
    """The account id, undecoded, of an expiry-set member as Redis returns it: a pass
    over every live call keeps the distinct ones and decodes those alone."""
    return member.partition(b"\x00")[0]


def live_state_sample() -> str:
    """String (JSON, with its own expiry): the latest live-state sample, taken by one
    process for every process (ocs.state_metrics)."""
    return "state:live"


def live_state_lease() -> str:
    """String (SET NX PX): held by the process taking the next live-state sample."""
    return "state:live:lease"


def counter_cycle_run(label: str, plan_id: str | None, account_id: str | None) -> str:
    """String (epoch microseconds, Redis's clock): when the first counter reset of cycle
    ``label`` over that scope (a plan, an account, None: all) began; a run again of it
    compares purchases and cancels with this (counter_reset.lua)."""
    scope = json.dumps([plan_id, account_id], separators=(",", ":"))
    return f"counters:run:{label}:{scope}"


def counter_cycle_opened(plan_id: str) -> str:
    """String: the label of the latest counter cycle the billing worker opened for the
    plan's accounts at its period's start (``ocs.billing.counter_cycles``); none before
    the worker first saw the plan."""
    return f"counters:opened:{plan_id}"


def nas_restart(client: str, node: str, kind: str, stamp: int) -> str:
    """String (epoch ms, with its own expiry): the time before which the first copy of a
    NAS's Accounting-On or -Off (``kind``) with Event-Timestamp ``stamp`` closed the calls
    of ``node`` within NAS client ``client``; its retransmissions close by the same."""
    return f"nasrestart:{_TAGS[bucket_of(client)]}:{client}:{kind}:{stamp}:{node}"


def nas_generations(client: str, node: str) -> str:
    """Sorted set, no expiry: the restarts (Accounting-On/Off) of NAS ``node`` within
    client ``client``, each its cut-off in epoch ms (member and score), the latest
    few kept. A session id the NAS numbers afresh after its latest is qualified by it,
    so that it names a new call (decision 0059). One small key per NAS that restarted."""
    return f"nasgen:{_TAGS[bucket_of(client)]}:{client}:{node}"


def bucket_of_ledger_key(key: str) -> int:
    """Inverse of ``ledger``: the bucket number in ``ledger:{b:N}``."""
    return int(key[key.index("{b:") + 3 : key.index("}")])


def write_probe() -> str:
    """String (SET PX, a few seconds): written by ``/readyz`` and, while Redis refuses
    writes, by the auto-pipeline, to learn whether Redis takes a write (ocs.backend_health)."""
    return "health:write-probe"


# What a key holds, by the prefix before its first ":" (``ocs demo`` tells its own stores
# from a deployment's by them: ocs.demo_stores).
# Keys named after one account: ``<prefix>:{b:N}:<account id>[:<call, event, ...>]``.
ACCOUNT_KEY_PREFIXES = frozenset(
    {"acct", "calls", "stopped", "usage", "topup", "fee", "counters", "mlines", "ivracct"}
)
# Strings whose value is the account the key's name (caller, number, member, PIN digest)
# identifies.
REFERENCE_KEY_PREFIXES = frozenset({"caller", "did", "member", "pin"})
# A call's reference (``call_ref``): its value is the live call's msgpack record.
CALL_REF_PREFIX = "callref"
# Streams whose entries each name their account (field ``account``).
LEDGER_KEY_PREFIXES = frozenset({"ledger", "ledger-dead"})
# The live calls' expiry sets: each member names its account (``expiry_member``).
EXPIRY_PREFIX = "expiry"
# Traces of requests (failed PINs, a NAS's restarts), no account's data.
TRACE_KEY_PREFIXES = frozenset({"pinfail", "nasrestart", "nasgen"})
# Keys any process writes for itself, holding no account's data.
PROCESS_KEYS = frozenset({live_state_sample(), live_state_lease(), write_probe()})


def key_prefix(key: str) -> str:
    """What a key holds: the part of its name before the first ":" (``acct``, ``ledger``)."""
    return key.partition(":")[0]


def account_of_key(key: str) -> str | None:
    """The account an account-named key (``ACCOUNT_KEY_PREFIXES``) is of; None for a key of
    another kind or one without a bucket tag (``counters:run:...``). No account id holds
    a ":" or a "}"."""
    prefix, _, rest = key.partition(":")
    if prefix not in ACCOUNT_KEY_PREFIXES or not rest.startswith("{b:"):
        return None
    return rest.partition("}:")[2].partition(":")[0] or None


def counter_cycle_scope(key: str) -> tuple[str | None, str | None] | None:
    """(plan id, account id) of a ``counter_cycle_run`` key, (plan id, None) of a
    ``counter_cycle_opened`` one; None for any other key."""
    if key.startswith("counters:opened:"):
        return key.removeprefix("counters:opened:"), None
    if not key.startswith("counters:run:"):
        return None
    _label, sep, scope = key.removeprefix("counters:run:").partition(":[")
    if not sep:
        return None
    try:
        plan_id, account_id = json.loads("[" + scope)
    except (ValueError, TypeError):  # not a pair: not a key ocs made
        return None
    return plan_id, account_id
