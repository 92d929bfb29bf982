"""Redis Cluster hash slots: which slot a key lives in, and which key a command names.

A key's slot is the CRC16 (XMODEM) of its hash tag, the text between its first
``{`` and the next ``}`` when that is not empty, else of the whole key, modulo
16384 (the cluster specification's ``HASH_SLOT``). Every key ocs writes carries a
bucket tag ``{b:N}`` (ocs/balances/keys.py), so the few thousand tags in use are
hashed once and remembered.
"""

from binascii import crc_hqx
from collections.abc import Sequence
from typing import Any

SLOTS = 16384

# Commands the hot path and the ledger writer send that name no key: any node answers.
_KEYLESS = frozenset({"PING", "SCRIPT", "WAIT", "INFO", "CLUSTER", "ASKING", "ECHO", "TIME"})

# Commands whose first word after the name is a subcommand, the key next.
_SUBCOMMAND_KEYED = frozenset({"XGROUP", "XINFO", "OBJECT", "MEMORY"})

_by_tag: dict[str, int] = {}


def key_slot(key: str | bytes) -> int:
    """The cluster slot of ``key``."""
    text = key.decode() if isinstance(key, bytes) else key
    start = text.find("{")
    if start >= 0:
        end = text.find("}", start + 1)
        if end > start + 1:
            text = text[start + 1 : end]
    slot = _by_tag.get(text)
    if slot is None:
        slot = crc_hqx(text.encode(), 0) % SLOTS
        if len(_by_tag) < 65_536:  # tags are buckets; a bound all the same
            _by_tag[text] = slot
    return slot


def command_key(command: Sequence[Any]) -> str | bytes | None:
    """The key a command is routed by: its first key (EVALSHA/EVAL: the first of KEYS,
    XREADGROUP/XREAD: the first stream), None for a command that names none."""
    name = str(command[0]).upper()
    at = 1
    if name in ("EVALSHA", "EVAL"):
        if int(command[2]) == 0:
            return None
        at = 3
    elif name in ("XREADGROUP", "XREAD"):
        words = [_text(w).upper() if isinstance(w, str | bytes) else "" for w in command]
        at = words.index("STREAMS") + 1
    elif name in _SUBCOMMAND_KEYED:
        at = 2  # XGROUP CREATE <key> ..., XINFO STREAM <key>, OBJECT ENCODING <key>
    elif name in _KEYLESS or len(command) < 2:
        return None
    if at >= len(command):
        return None
    key = command[at]
    return key if isinstance(key, str | bytes) else str(key)


def command_keys(command: Sequence[Any]) -> list[str | bytes]:
    """Every key a command names (EVALSHA/EVAL: all of KEYS; XREADGROUP: the streams;
    otherwise the first key), for checking that a multi-key command stays in one slot."""
    name = str(command[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return list(command[3 : 3 + int(command[2])])
    if name in ("XREADGROUP", "XREAD"):
        words = [_text(w).upper() if isinstance(w, str | bytes) else "" for w in command]
        at = words.index("STREAMS") + 1
        streams = list(command[at:])
        return streams[: len(streams) // 2]
    key = command_key(command)
    return [] if key is None else [key]


def one_slot(command: Sequence[Any]) -> bool:
    """Whether every key of ``command`` lives in one slot (a cluster runs it)."""
    return len({key_slot(key) for key in command_keys(command)}) <= 1


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
