"""The one settings object of an ocs process and where its values come from.

Priority, lowest to highest: the defaults below, a TOML file (``--config``),
``OCS_*`` environment variables, command-line flags. Every key is declared
once, as a field of ``Settings`` with its default, parser and help; a bad
value raises ``ConfigError`` whose message names the key and where it came
from, and the CLI exits with code 2.
"""

import math
import os
import re
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


def default_data_dir() -> Path:
    """Where embedded servers keep their data unless told: one stable place per user.

    ``$XDG_DATA_HOME/ocs``, else ``/var/lib/ocs`` for root and
    ``~/.local/share/ocs`` for anyone else; never the current directory: a
    command run from another folder must find the same store.
    """
    base = os.environ.get("XDG_DATA_HOME")
    if not base and os.geteuid() == 0:
        # The service's own place. Not /root/.local/share: pgserver runs PostgreSQL as
        # another user and would open every parent directory of the data to all users.
        return Path("/var/lib/ocs")
    return Path(base or Path.home() / ".local" / "share") / "ocs"


def resolved_log_format(fmt: str) -> str:
    """``json`` or ``text``: ``auto`` means text on a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    return "text" if sys.stderr.isatty() else "json"


@dataclass(frozen=True, slots=True)
class RadiusClientConfig:
    """A NAS allowed to send RADIUS requests, as written in the configuration."""

    name: str
    network: str
    secret: str = field(repr=False)
    require_message_authenticator: bool | None = None
    coa_port: int | None = None  # RFC 5176 dynamic-authorization port, for Disconnect
    # The NAS's own translation rules ({match, replace} tables), instead of the plan's.
    translation: tuple[dict[str, str], ...] | None = None


def _parse_int(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool | float):
            raise ValueError(f"expected an integer, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise ValueError(f"expected an integer from {low} to {high}, got {number}")
        return number

    return parse


def _parse_float(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"1", "true", "yes", "on"}:
        return True
    if text in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _parse_optional_url(schemes: tuple[str, ...]) -> Callable[[Any], str | None]:
    def parse(value: Any) -> str | None:
        if value is None or value == "":
            return None
        text = str(value)
        if not text.startswith(schemes):
            raise ValueError(f"expected a URL starting with {' or '.join(schemes)}")
        _check_hosts(text)
        return text

    return parse


def _check_hosts(url: str) -> None:
    """Refuse a URL whose host or port the client libraries would choke on later, with a
    traceback, at the first connect. Each host of a PostgreSQL list (``h1:5432,h2``) is
    checked alone. The message never quotes the URL: it may hold a password."""
    if url.startswith("unix://"):
        return
    after_scheme = url.partition("://")[2]
    authority = re.split(r"[/?#]", after_scheme, maxsplit=1)[0]
    for host in authority.rpartition("@")[2].split(","):
        if host.startswith("[") != ("]" in host) or host.count("[") > 1:
            raise ValueError("not a valid URL: an IPv6 host needs both brackets, [ and ]")
        port = host.rpartition("]")[2] if host.startswith("[") else host
        if ":" not in port:
            continue
        digits = port.rpartition(":")[2]
        if digits and (not digits.isdigit() or not 0 < int(digits) < 65536):
            # Not quoted: a password with an unescaped '/' would be read as a port.
            raise ValueError("not a valid URL: a port is not a number 1-65535")


def _parse_choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = str(value).strip()
        normalized = text.upper() if choices[0].isupper() else text.lower()
        if normalized not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
        return normalized

    return parse


def _parse_str(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _parse_optional_text(value: Any) -> str | None:
    """A text setting that may be unset: empty text is None."""
    return None if value in ("", None) else _parse_str(value)


def _parse_optional_path(value: Any) -> Path | None:
    """A file setting that may be unset: empty text is None."""
    return None if value in ("", None) else Path(_parse_str(str(value)))


def _parse_optional_token(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    if len(text) < 16 or not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError("expected a token of at least 16 printable ASCII characters")
    return text


def _parse_optional_secret(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    # It goes into an HTTP header: printable ASCII, no spaces (no header injection).
    if not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError("expected printable ASCII characters without spaces")
    return text


def _parse_seconds(low: float, high: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = _parse_float(value)
        if not low <= number <= high:
            raise ValueError(f"expected seconds from {low:g} to {high:g}, got {number:g}")
        return number

    return parse


def _parse_locale(value: Any) -> str:
    """A locale babel knows, as babel names it: ``en-GB`` and ``en_GB`` are both en_GB."""
    from babel import Locale, UnknownLocaleError

    text = _parse_str(value).strip().replace("-", "_")
    try:
        return str(Locale.parse(text))
    except (ValueError, UnknownLocaleError):
        raise ValueError(f"{value!r} is not a locale (like en_GB, fr-FR or ja_JP)") from None


# Where common Linux distributions install TrueType fonts with Chinese, Japanese and
# Korean characters (ReportLab embeds TrueType outlines only: not Noto Sans CJK's).
INVOICE_FALLBACK_FONTS = (
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # Debian: fonts-droid-fallback
    "/usr/share/fonts/google-droid-sans-fonts/DroidSansFallbackFull.ttf",  # Fedora, RHEL
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",  # fonts-wqy-microhei
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",  # fonts-wqy-zenhei
    "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf",  # fonts-ipafont-gothic
    "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",  # fonts-nanum
)


def _parse_font_paths(value: Any) -> tuple[str, ...]:
    """Font file paths: a list, or one text separated by commas; empty: none."""
    return tuple(path for path in _text_list(value, "font file paths") if path)


def _text_list(value: Any, what: str) -> list[str]:
    """A list of texts given as a list, or as one text separated by commas."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of {what}, or them in one text separated by commas")
    return list(value)


def _parse_networks(value: Any) -> tuple[str, ...]:
    import ipaddress

    items = _text_list(value, "IP addresses or CIDRs")
    networks = []
    for item in items:
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(str(item), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or CIDR") from None
    return tuple(networks)


_CALL_ID_SOURCES = ("h323-conf-id", "Acct-Session-Id", "call-id")


def _parse_call_id_order(value: Any) -> tuple[str, ...]:
    items = _text_list(value, ", ".join(_CALL_ID_SOURCES))
    if not items or any(item not in _CALL_ID_SOURCES for item in items):
        raise ValueError(f"expected a list of {', '.join(_CALL_ID_SOURCES)}")
    return tuple(items)


def _parse_translation(n: int, rules: Any) -> tuple[dict[str, str], ...] | None:
    if rules is None:
        return None
    from ocs.errors import OcsError
    from ocs.rating.translation import validate_rules

    try:
        validate_rules(rules)
    except OcsError as exc:
        raise ValueError(f"entry {n}: translation {exc.message}") from None
    return tuple(dict(rule) for rule in rules)


def _parse_radius_clients(value: Any) -> tuple[RadiusClientConfig, ...]:
    import ipaddress
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueError("expected a JSON list of {name, address, secret}") from None
    if not isinstance(value, list):
        raise ValueError("expected a list of {name, address, secret} tables")
    clients = []
    for n, item in enumerate(value):
        if not isinstance(item, dict):
            raise ValueError(f"entry {n}: expected a table with name, address and secret")
        unknown = set(item) - {
            "name",
            "address",
            "secret",
            "require_message_authenticator",
            "coa_port",
            "translation",
        }
        if unknown:
            raise ValueError(f"entry {n}: unknown key(s) {', '.join(sorted(unknown))}")
        address = item.get("address")
        secret = item.get("secret")
        if not isinstance(address, str):
            raise ValueError(f"entry {n}: address is required (an IP address or CIDR)")
        try:
            network = str(ipaddress.ip_network(address, strict=False))
        except ValueError:
            raise ValueError(
                f"entry {n}: address {address!r} is not an IP address or CIDR"
            ) from None
        if not isinstance(secret, str) or not secret:
            raise ValueError(f"entry {n}: secret is required")
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"entry {n}: name must be a non-empty text")
        require = item.get("require_message_authenticator")
        if require is not None and not isinstance(require, bool):
            raise ValueError(f"entry {n}: require_message_authenticator must be true or false")
        coa_port = item.get("coa_port")
        if coa_port is not None and (
            isinstance(coa_port, bool)
            or not isinstance(coa_port, int)
            or not 1 <= coa_port <= 65535
        ):
            raise ValueError(f"entry {n}: coa_port must be a port number from 1 to 65535")
        clients.append(
            RadiusClientConfig(
                name=name or network,
                network=network,
                secret=secret,
                require_message_authenticator=require,
                coa_port=coa_port,
                translation=_parse_translation(n, item.get("translation")),
            )
        )
    return tuple(clients)


def _setting(
    default: Any, parse: Callable[[Any], Any], help: str, *, flag: bool = False, **options: Any
) -> Any:
    """Declare one setting: its default, how a configured value is parsed, and what it does.

    The TOML, environment and CLI layers all read this one declaration; ``flag``
    also makes it a command-line flag (``--http-port``) of every command.
    """
    metadata = {"parse": parse, "help": help, "flag": flag}
    if callable(default) and not isinstance(default, type):
        return field(default_factory=default, metadata=metadata, **options)
    return field(default=default, metadata=metadata, **options)


_DAY = 24 * 3600


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything an ocs process is configured with; each field is one setting."""

    redis_url: str | None = _setting(
        None,
        _parse_optional_url(("redis://", "rediss://", "unix://")),
        "Redis URL; none starts an embedded Redis under data_dir",
        flag=True,
    )
    database_url: str | None = _setting(
        None,
        _parse_optional_url(("postgresql://", "postgres://")),
        "PostgreSQL DSN; none starts an embedded PostgreSQL under data_dir",
        flag=True,
    )
    data_dir: Path = _setting(
        default_data_dir,
        lambda value: Path(_parse_str(str(value))),
        "where embedded servers keep their data (default: one place per user)",
        flag=True,
    )
    http_host: str = _setting("0.0.0.0", _parse_str, "HTTP listen address", flag=True)
    http_port: int = _setting(
        8080, _parse_int(0, 65535), "HTTP listen port (0: any free port)", flag=True
    )
    workers: int = _setting(
        1,
        _parse_int(1, 256),
        "server processes on the sockets the parent binds (ocs/workers.py)",
        flag=True,
    )
    worker_start_attempts: int = _setting(
        5,
        _parse_int(1, 1000),
        "`--workers`: the parent exits 1 when a worker (or the background process) exited"
        " this many times in a row and none of its kind was ever ready",
    )
    log_level: str = _setting(
        "INFO",
        _parse_choice("DEBUG", "INFO", "WARNING", "ERROR"),
        "least severe log level written",
        flag=True,
    )
    log_format: str = _setting(
        "auto",
        _parse_choice("auto", "json", "text"),
        "auto: text on a terminal, JSON lines otherwise",
        flag=True,
    )
    call_expiry_grace: int = _setting(
        300,
        _parse_int(1, 7 * _DAY),
        "a live call's record expires this long after its granted duration ends",
    )
    stop_dedupe_ttl: int = _setting(
        7 * _DAY,
        _parse_int(60, 365 * _DAY),
        "how long a stopped call's result is kept to answer a repeated stop",
    )
    shutdown_timeout: float = _setting(
        10.0, _parse_float, "seconds requests in flight may take at shutdown"
    )
    ledger_batch_size: int = _setting(1000, _parse_int(1, 100_000), "ledger entries per batch")
    ledger_claim_idle_ms: int = _setting(
        30_000,
        _parse_int(100, 3_600_000),
        "a ledger entry left unacknowledged this long by a dead writer is taken over",
    )
    redis_max_connections: int = _setting(64, _parse_int(2, 10_000), "Redis connection pool size")
    redis_cluster: bool = _setting(
        False,
        _parse_bool,
        "redis_url names a node of a Redis Cluster: each command goes to the master of its"
        " key's slot",
    )
    redis_wait_replicas: int = _setting(
        0,
        _parse_int(0, 16),
        "answer a batch of Redis writes only once this many replicas of its master have it"
        " (WAIT); 0: do not wait",
    )
    redis_wait_timeout_ms: int = _setting(
        100,
        _parse_int(1, 60_000),
        "how long a batch waits for its replicas (ms); one not confirmed in time is answered"
        " unavailable",
    )
    redis_migration_wait_ms: int = _setting(
        1000,
        _parse_int(0, 60_000),
        "how long a command of a Redis Cluster slot being migrated (answered TRYAGAIN) is"
        " retried before it is answered unavailable (ms); the other commands sent with it"
        " are answered meanwhile",
    )
    database_pool_size: int = _setting(10, _parse_int(1, 1000), "PostgreSQL pool size")
    # Decision 0009, addendum 2026-12-07: in production only `ocs db migrate`, run as a
    # step of its own, should change the schema, never a command run from a newer ocs.
    migrate_on_start: bool = _setting(
        True,
        _parse_bool,
        "every process applies pending schema migrations when it starts (false: it refuses"
        " to start while any is pending; `ocs db migrate` applies them)",
    )
    run_ledger_writer: bool = _setting(True, _parse_bool, "run the ledger writer in this process")
    # Long enough for a call to ring out: a stop that still comes later is charged
    # ("late-stop"), but its funds were free for other calls meanwhile. Also how long
    # after its authorization any call (an HTTP /start too) may be answered for its
    # grant to hold (decision 0040): a longer timeout grants banded calls less.
    start_timeout: int = _setting(
        300,
        _parse_int(1, _DAY),
        "an Access-Accept's reservation is released if no Accounting-Start binds it in time;"
        " a call priced by time band (RADIUS or HTTP) is granted what its funds pay for"
        " whenever in this time it is answered",
    )
    debit_on_interim: bool = _setting(
        False, _parse_bool, "Interim-Updates debit what a call has used so far"
    )
    stale_call_policy: str = _setting(
        "full_grant",
        _parse_choice("last_reported", "full_grant"),
        "how a started call the switch never stopped is charged: its granted duration"
        " (full_grant) or its last reported usage",
    )
    janitor_interval: float = _setting(1.0, _parse_float, "seconds between janitor sweeps")
    run_janitor: bool = _setting(True, _parse_bool, "run the janitor in this process")
    # A NAS that does not answer holds its request for disconnect_timeout times three;
    # the janitor's sweeps never wait for them, these bound the UDP sockets they hold.
    janitor_disconnects_in_flight: int = _setting(
        64,
        _parse_int(1, 10_000),
        "Disconnect-Requests the janitor has waiting on NASes at once, for expired calls",
    )
    # Decision 0039: the ledger writer's batches, the janitor's sweeps and the pass over
    # every live call leave the serving loop for a process of their own.
    background_process: bool = _setting(
        False,
        _parse_bool,
        "`ocs serve` runs the ledger writer, the janitor and the live-state pass in a"
        " process of its own, beside the serving process(es)",
    )
    run_live_state_pass: bool = _setting(
        True,
        _parse_bool,
        "this process may take the pass over every live call for the gauges (false: it"
        " only publishes the one another process took)",
    )
    # The billing worker (`ocs billing-worker`, decision 0021).
    billing_poll_interval: float = _setting(
        30.0, _parse_float, "seconds between the billing worker's looks for due cycles and runs"
    )
    billing_chunk_size: int = _setting(
        1000, _parse_int(1, 100_000), "accounts per invoice-run chunk a billing worker claims"
    )
    billing_lease: float = _setting(
        300.0,
        _parse_float,
        "seconds a billing worker holds a chunk; a dead worker's chunk is taken over after it",
    )
    billing_run_delay: float = _setting(
        300.0,
        _parse_float,
        "seconds after a period ends (or starts) before its run is created, the worker's"
        " or an operator's (refused before then unless early): CDRs reach PostgreSQL a"
        " moment after each call",
    )
    billing_auto_post: bool = _setting(
        True,
        _parse_bool,
        "a billing worker posts the runs it creates once drafted (false: `ocs billing post`)",
    )
    billing_counter_cycles: bool = _setting(
        True,
        _parse_bool,
        "a billing worker opens each plan's counter cycle (a reset, its recurring fees"
        " charged) when the plan's billing period begins (false: the operator schedules"
        " `ocs counters reset`)",
    )
    billing_commitments_budget: float = _setting(
        10.0,
        _parse_float,
        "seconds a billing worker's pass spends at most, after its runs and dunning,"
        " committing locking plans' charges (a batch of 500 accounts at least); a plan"
        " not finished goes on at the next pass",
    )
    billing_metrics_port: int = _setting(
        0, _parse_int(0, 65535), "port `ocs billing-worker` serves /metrics on (0: none)"
    )
    # The external tax engine (ocs/billing/tax_engine.py, docs/tax-engine.md).
    tax_engine_url: str | None = _setting(
        None,
        _parse_optional_url(("http://", "https://")),
        "URL invoices' lines are POSTed to for their taxes (none: no external tax engine)",
    )
    tax_engine_timeout: float = _setting(
        10.0,
        _parse_seconds(0.001, 600.0),
        "seconds one tax engine request may take in all (connect, send, answer)",
    )
    tax_engine_retries: int = _setting(
        3,
        _parse_int(0, 10),
        "times a timed-out, unreachable, 5xx or 429 tax engine request is tried again",
    )
    tax_engine_backoff: float = _setting(
        0.5,
        _parse_seconds(0.0, 30.0),
        "seconds before the first tax engine retry, doubled for each next one (30 s at most)",
    )
    # A secret: sent as a bearer token only, never logged or shown.
    tax_engine_token: str | None = _setting(
        None,
        _parse_optional_secret,
        "bearer token the tax engine requires (none: no Authorization header)",
        repr=False,
    )
    # Invoice documents (issue 14): PDFs and their issuer block.
    invoice_documents_dir: str | None = _setting(
        None,
        _parse_optional_text,
        "directory invoice PDFs are stored under (none: <data dir>/invoices)",
    )
    # Usage mediation (issue 15): files sent to the API, and their rejects files.
    usage_imports_dir: str | None = _setting(
        None,
        _parse_optional_text,
        "directory usage files sent to the API and their rejects are kept under"
        " (none: <data dir>/usage-imports)",
    )
    # One import of a supplier at a time, and only once the PostgreSQL look-up of its
    # record ids can see every earlier import's CDRs (decision 0051).
    usage_import_supplier_wait: float = _setting(
        600.0,
        _parse_seconds(0, 86_400),
        "seconds a usage import waits for the running import of the same supplier to end"
        " before it is refused",
    )
    usage_import_ledger_wait: float = _setting(
        60.0,
        _parse_seconds(0, 3600),
        "seconds a usage import waits for the ledger writer to store every ledger entry"
        " made before it started; refused after that, since records an earlier import"
        " debited may not be in PostgreSQL yet",
    )
    # A killed import shows the counts of its last save (decision 0051).
    usage_import_save_every: float = _setting(
        2.0,
        _parse_seconds(0.01, 60),
        "seconds between two saves of a running usage import's counts (one UPDATE each):"
        " an import whose process was killed shows the counts of its last save",
    )
    invoice_issuer_name: str = _setting(
        "ocs", _parse_str, "the issuer's name printed on every invoice"
    )
    invoice_issuer_address: str | None = _setting(
        None,
        _parse_optional_text,
        "the issuer's address printed on every invoice (lines split by '|')",
    )
    # Checked at start (item 1 of the invoice documents review): an unknown locale was
    # taken, then every invoice PDF and invoice email failed on it.
    invoice_locale: str = _setting(
        "en_GB",
        _parse_locale,
        "the locale invoice amounts and dates are written in (babel: en_GB, fr-FR, ja_JP)",
    )
    invoice_fallback_fonts: tuple[str, ...] = _setting(
        INVOICE_FALLBACK_FONTS,
        _parse_font_paths,
        "TrueType font files (.ttf, .ttc) that draw the characters of invoice PDFs their"
        " own font (DejaVu Sans) lacks, such as Chinese, Japanese and Korean; the first"
        " that has a character draws it, files not on this machine are skipped",
    )
    # Email (invoices and dunning notices) over SMTP.
    smtp_host: str | None = _setting(
        None,
        _parse_optional_text,
        "SMTP server invoices and notices are sent through (none: no email)",
    )
    smtp_port: int = _setting(25, _parse_int(1, 65535), "SMTP server port")
    smtp_from: str = _setting("billing@localhost", _parse_str, "the From address of emails")
    smtp_username: str | None = _setting(
        None, _parse_optional_text, "SMTP user name (none: no authentication)"
    )
    smtp_password: str | None = _setting(None, _parse_optional_secret, "SMTP password", repr=False)
    smtp_starttls: bool = _setting(False, _parse_bool, "upgrade the SMTP connection with STARTTLS")
    # The emails are one delivery target, capped as each webhook is (decision 0029's
    # addendum of 2026-12-07): an invoice run's backlog took every sending slot.
    email_in_flight: int = _setting(
        8,
        _parse_int(1, 64),
        "event emails sent at once, by every deliverer together (a large backlog leaves"
        " the other sending slots to the webhooks)",
    )
    # Payment gateway webhooks (Stripe's signature scheme).
    stripe_webhook_secret: str | None = _setting(
        None,
        _parse_optional_secret,
        "the signing secret of the payment gateway's webhooks (none: the webhook is refused)",
        repr=False,
    )
    stripe_webhook_tolerance: float = _setting(
        300.0,
        _parse_seconds(1.0, 3600.0),
        "seconds a signed gateway webhook stays acceptable (the replay window)",
    )
    # Outgoing webhooks (provisioning events).
    webhook_max_attempts: int = _setting(
        8, _parse_int(1, 100), "deliveries of an event tried before it is dead-lettered"
    )
    webhook_backoff: float = _setting(
        1.0,
        _parse_seconds(0.0, 3600.0),
        "seconds before an event's first redelivery, doubled each time",
    )
    webhook_timeout: float = _setting(
        10.0, _parse_seconds(0.001, 600.0), "seconds one webhook delivery may take"
    )
    webhook_in_flight: int = _setting(
        4,
        _parse_int(1, 64),
        "deliveries one webhook is sent at once, by every deliverer together (a slow"
        " receiver holds no more, and the others' events go on)",
    )
    # Off: a webhook's host may not be an address inside the network (decision 0029's
    # addendum of 2026-12-07): its errors, shown to viewers, made a blind port scanner.
    webhook_allow_private: bool = _setting(
        False,
        _parse_bool,
        "send webhooks to loopback, link-local, private, multicast and unspecified"
        " addresses too (off: refused when added, and after each look-up)",
    )
    # Dunning: what happens to live calls when an account is suspended for non-payment.
    dunning_live_calls: str = _setting(
        "finish",
        _parse_choice("finish", "disconnect"),
        "live calls of an account suspended by dunning: finish, or cut by Disconnect-Request",
    )
    # PIN guessing: after this many failed PINs within the window a caller id (or a
    # NAS, or an API token, for the larger limits) is refused with return code 10
    # until the window ends.
    pin_guess_limit_caller: int = _setting(
        5, _parse_int(1, 1_000_000), "wrong PINs a caller id may try within the window"
    )
    pin_guess_limit_nas: int = _setting(
        100, _parse_int(1, 10_000_000), "wrong PINs a NAS or HTTP client may try within the window"
    )
    # An API token may be used from many addresses (an IPv6 /64, a fleet of IVRs) and
    # names any caller id it likes: this bounds what one token may guess (decision 0042).
    pin_guess_limit_token: int = _setting(
        1000,
        _parse_int(1, 100_000_000),
        "wrong PINs the HTTP queries let in by one API token may try within the window",
    )
    pin_guess_window: int = _setting(
        900, _parse_int(1, 30 * _DAY), "seconds over which wrong PINs are counted"
    )
    # Password guessing (decision 0045): wrong passwords are counted per account; past
    # the limit within the window, its password-checked requests are refused with
    # return code 10 until the window ends.
    password_guess_limit: int = _setting(
        10, _parse_int(1, 1_000_000), "wrong passwords an account may take within the window"
    )
    password_guess_window: int = _setting(
        900,
        _parse_int(1, 30 * _DAY),
        "seconds from an account's first wrong password over which wrong ones are counted",
    )
    # Secure by default: without a token the admin API refuses everything. False
    # restores the trial behaviour (open until the first token exists).
    admin_token_required: bool = _setting(
        True, _parse_bool, "the admin API needs a token even before the first one exists"
    )
    # Printed once and stored at the first start when no admin token exists yet.
    admin_bootstrap_token: str | None = _setting(
        None,
        _parse_optional_token,
        "the first admin token, instead of a generated one printed once",
        repr=False,
    )
    # Decision 0054: the server secret PIN and password digests are keyed by. Never in
    # Redis or PostgreSQL, so that a copy of them does not give the PINs away.
    pepper_file: Path | None = _setting(
        None,
        _parse_optional_path,
        "file holding the server secret (pepper) PIN and password digests are keyed by; the"
        " same file for every ocs process (none: <data dir>/pepper, made by the first ocs serve)",
    )
    switch_token_required: bool = _setting(
        False,
        _parse_bool,
        "the HTTP call lifecycle and PIN queries need a switch (or admin) token",
    )
    # Like RADIUS NAS clients: identified by their network, or by a token.
    switch_networks: tuple[str, ...] = _setting(
        ("127.0.0.0/8", "::1/128"),
        _parse_networks,
        "networks whose HTTP switches and IVRs need no token",
    )
    switch_open: bool = _setting(
        False, _parse_bool, "accept the HTTP call lifecycle from anywhere with no token (trials)"
    )
    # Behind a reverse proxy every client's TCP peer is the proxy: its X-Forwarded-For
    # names the client, but only a proxy we trust may say so (ocs/http/client_address.py).
    http_trusted_proxies: tuple[str, ...] = _setting(
        (),
        _parse_networks,
        "networks of the reverse proxies whose X-Forwarded-For names the HTTP client"
        " (none: the header is ignored)",
    )
    backend_down_reminder: float = _setting(
        60.0,
        _parse_float,
        "while Redis or PostgreSQL stays unreachable, one reminder line this often (seconds)",
    )
    disconnect_timeout: float = _setting(
        1.0, _parse_float, "seconds to wait for a NAS's Disconnect answer, per attempt"
    )
    radius_enabled: bool = _setting(True, _parse_bool, "listen for RADIUS")
    radius_host: str = _setting("0.0.0.0", _parse_str, "RADIUS listen address", flag=True)
    radius_auth_port: int = _setting(
        1812, _parse_int(0, 65535), "RADIUS authentication port", flag=True
    )
    radius_acct_port: int = _setting(
        1813, _parse_int(0, 65535), "RADIUS accounting port", flag=True
    )
    # BlastRADIUS, CVE-2024-3596: a client entry may relax it for itself, on purpose only.
    radius_require_message_authenticator: bool = _setting(
        True, _parse_bool, "require a valid Message-Authenticator on every Access-Request"
    )
    radius_dedupe_window: float = _setting(
        30.0,
        _parse_float,
        "RFC 5080: a retransmission within this many seconds gets the cached reply",
    )
    radius_receive_buffer: int = _setting(
        4 * 1024 * 1024,
        _parse_int(0, 1 << 30),
        "bytes of receive buffer asked for each RADIUS socket (capped by net.core.rmem_max)",
    )
    # At ~3,000-4,500 decisions/s, 0.2-0.35 s of work queued at most. Measured A/B on a
    # loaded 2-core machine (benchmarks/radius_latency.py): 256 shed 5-19% at 3,000/s where
    # 1,024 lost nothing; saturated at 4,000/s, both shed.
    radius_max_in_flight: int = _setting(
        1024,
        _parse_int(1, 1_000_000),
        "RADIUS decisions running at once; more are dropped (overload)",
    )
    # A NAS retransmits after 1-3 s: an answer later than this is of little use to it, and
    # the work spent on it delays the requests behind it past their own budget.
    radius_queue_budget: float = _setting(
        0.25,
        _parse_float,
        "seconds a RADIUS request may wait before its decision starts; older ones are dropped"
        " (late)",
    )
    # Past this wait a queue that stays long is overload, and its oldest are dropped
    # (ocs/radius/queue_delay.py): answered requests then wait about this, not the budget.
    radius_queue_target: float = _setting(
        0.02,
        _parse_float,
        "seconds of waiting a RADIUS queue may keep for 100 ms before requests that waited"
        " longer are dropped (late); 0: only the budget applies",
    )
    gc_freeze: bool = _setting(
        True,
        _parse_bool,
        "after start-up, keep start-up objects out of the garbage collector's passes",
    )
    stall_report_ms: int = _setting(
        100,
        _parse_int(0, 60_000),
        "log an event-loop stall longer than this many milliseconds, naming where the loop"
        " was (0: off)",
    )
    radius_call_id_order: tuple[str, ...] = _setting(
        ("h323-conf-id", "Acct-Session-Id", "call-id"),
        _parse_call_id_order,
        "where a RADIUS call id comes from, first present wins",
    )
    radius_clients: "tuple[RadiusClientConfig, ...]" = _setting(
        (), _parse_radius_clients, "RADIUS clients: address or CIDR, secret, name, policy"
    )
    # Not a setting: where the settings were read from.
    config_file: Path | None = field(default=None)


# Every setting's parser, read from its one declaration above.
_FIELDS: dict[str, Callable[[Any], Any]] = {
    f.name: f.metadata["parse"] for f in fields(Settings) if "parse" in f.metadata
}

ENV_PREFIX = "OCS_"
# OCS_* variables that are not settings: the config file's path, the sockets a
# `--workers` parent hands its workers (ocs.listen_sockets), the build switch that
# compiles the hot modules (setup.py: left exported after a build, it must not stop
# every command), and the test suite's and benchmarks' own.
NOT_SETTINGS = frozenset({"OCS_CONFIG", "OCS_LISTEN_FDS", "OCS_SERVE_PART", "OCS_MYPYC"})
TEST_PREFIX = "OCS_TEST_"
BENCH_PREFIX = "OCS_BENCH_"


def _closest(name: str, env: bool) -> str:
    """ ", did you mean X?" for the known setting nearest to an unknown name, else ""."""
    import difflib

    match = difflib.get_close_matches(name, list(_FIELDS), n=1, cutoff=0.6)
    if not match:
        return ""
    return f"; did you mean {ENV_PREFIX + match[0].upper() if env else match[0]!r}?"


def _apply(values: dict[str, Any], source: Mapping[str, Any], origin: str, env: bool) -> None:
    for key, raw in source.items():
        name = key[len(ENV_PREFIX) :].lower() if env else key
        parser = _FIELDS.get(name)
        if parser is None:
            if env and (key in NOT_SETTINGS or key.startswith((TEST_PREFIX, BENCH_PREFIX))):
                continue
            # A typo must not fall back to a default: OCS_REDIS_ULR would otherwise
            # start a private embedded Redis and charge calls against it.
            where = "environment" if env else origin
            raise ConfigError(f"{where}: unknown setting {key!r}{_closest(name, env)}")
        label = key if env else f"{origin}: {key}"
        try:
            values[name] = parser(raw)
        except ValueError as exc:
            raise ConfigError(f"{label}: {exc}") from None
        except (TypeError, AttributeError):
            # A parser that did not foresee this type: refused, naming the setting.
            kind = type(raw).__name__
            raise ConfigError(f"{label}: a value of the wrong type ({kind}): {raw!r}") from None


def read_setting_file(path: Path, label: str) -> str | None:
    """The UTF-8 text of a file a setting names, None when there is no such file (the
    caller says whether that is an error); ``ConfigError`` naming ``label`` and the path
    when the file is there but cannot be read as text."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigError(f"{label}: a directory, not a file: {path}") from None
    except PermissionError:
        raise ConfigError(f"{label}: file not readable by this user: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: not UTF-8 text: {path}") from None


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < TOML file < OCS_* environment < overrides (CLI flags).

    The file is ``config_file`` (``--config``), else the one ``OCS_CONFIG`` names in
    ``environ`` (None: the process's environment).
    """
    values: dict[str, Any] = {}
    env = os.environ if environ is None else environ
    path = Path(config_file) if config_file else None
    named_by = "--config"
    if path is None and env.get("OCS_CONFIG"):
        path, named_by = Path(env["OCS_CONFIG"]), "OCS_CONFIG"
    if path is not None:
        text = read_setting_file(path, named_by)
        if text is None:
            raise ConfigError(f"{named_by}: file not found: {path}")
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{named_by} {path}: not valid TOML: {exc}") from None
        # Accept either top-level keys or an [ocs] table, not both: a key outside the
        # table would otherwise be silently ignored.
        section = document
        if isinstance(document.get("ocs"), dict):
            outside = sorted(k for k in document if k != "ocs")
            if outside:
                raise ConfigError(f"{path}: key(s) {', '.join(outside)} outside the [ocs] table")
            section = document["ocs"]
        _apply(values, section, str(path), env=False)
    _apply(
        values,
        {k: v for k, v in env.items() if k.startswith(ENV_PREFIX)},
        "environment",
        env=True,
    )
    if overrides:
        for key, raw in overrides.items():
            if raw is None:
                continue
            try:
                values[key] = _FIELDS[key](raw)
            except ValueError as exc:
                raise ConfigError(f"--{key.replace('_', '-')}: {exc}") from None
    settings = Settings(**values, config_file=path)
    if settings.redis_cluster and not settings.redis_url:
        # An embedded Redis is one standalone server: a cluster is always external.
        raise ConfigError("redis_cluster: needs redis_url, a node of the cluster")
    return settings


def setting_names() -> list[str]:
    """All configurable keys, for documentation and the CLI."""
    return list(_FIELDS)


def setting_flags() -> list[str]:
    """The settings every command also takes as a flag (``data_dir`` -> ``--data-dir``)."""
    return [f.name for f in fields(Settings) if f.metadata.get("flag")]


def setting_help(name: str) -> str:
    """The one-line help text declared with a setting."""
    return str(next(f.metadata["help"] for f in fields(Settings) if f.name == name))


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some values changed (tests, demo)."""
    return replace(settings, **changes)
