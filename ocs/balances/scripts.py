"""The Lua scripts that change real-time state, loaded once per process.

Each script's KEYS/ARGV contract is written at the top of its file in
``lua/``. Scripts run by SHA (EVALSHA); ``AutoPipeline`` loads them again
when Redis answers NOSCRIPT (after a restart or a SCRIPT FLUSH).
"""

from dataclasses import dataclass
from hashlib import sha1
from importlib import resources


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script with lib.lua's helpers prepended, and the SHA it runs by."""

    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    return resources.files("ocs.balances").joinpath("lua", f"{name}.lua").read_text("utf-8")


def _script(name: str, body: str) -> Script:
    # lib.lua's helpers come first in every script, so a rule is written once.
    source = _read("lib") + body
    return Script(name=name, source=source, sha=sha1(source.encode()).hexdigest())


def _load(name: str) -> Script:
    return _script(name, _read(name))


def _wrapping(name: str, wrapped: str) -> Script:
    """Script ``name`` with script ``wrapped``'s body above it as ``local function
    <wrapped>()``: its returns return from that function, for ``name`` to go on after."""
    return _script(name, f"local function {wrapped}()\n{_read(wrapped)}\nend\n{_read(name)}")


AUTHORIZE = _load("authorize")
AUTHORIZE_WITH_REF = _wrapping("authorize_with_ref", "authorize")
STOP = _load("stop")
STOP_LIVE = _wrapping("stop_live", "stop")
TOPUP = _load("topup")
CREATE_ACCOUNT = _load("create_account")
START = _load("start")
UPDATE = _load("update")
SNAPSHOT_BUCKET = _load("snapshot_bucket")
CHARGE = _load("charge")
CHARGE_BATCH = _load("charge_batch")
COUNTER_RESET = _load("counter_reset")
START_COUNTER = _load("start_counter")
PIN_ATTEMPT = _load("pin_attempt")
FEE = _load("fee")
CHECK_PASSWORD = _load("check_password")
LIFT_PASSWORD_BLOCK = _load("lift_password_block")
SET_POLICY = _load("set_policy")
RELEASE_PIN = _load("release_pin")
SET_ASIDE = _load("set_aside")
DROP_DID = _load("drop_did")
DISCARD_CARD = _load("discard_card")
RELEASE_UNCONFIRMED = _load("release_unconfirmed")
REKEY_FIELD = _load("rekey_field")
CLAIM_CALL_REF = _load("claim_call_ref")

ALL_SCRIPTS: tuple[Script, ...] = (
    AUTHORIZE,
    AUTHORIZE_WITH_REF,
    STOP,
    STOP_LIVE,
    TOPUP,
    CREATE_ACCOUNT,
    START,
    UPDATE,
    SNAPSHOT_BUCKET,
    CHARGE,
    CHARGE_BATCH,
    COUNTER_RESET,
    START_COUNTER,
    PIN_ATTEMPT,
    FEE,
    CHECK_PASSWORD,
    LIFT_PASSWORD_BLOCK,
    SET_POLICY,
    RELEASE_PIN,
    SET_ASIDE,
    DROP_DID,
    DISCARD_CARD,
    RELEASE_UNCONFIRMED,
    REKEY_FIELD,
    CLAIM_CALL_REF,
)
