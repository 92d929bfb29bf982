"""The one settings object of an ocs process and where its values come from.

Priority, lowest to highest: the defaults below, a TOML file (``--config``),
``OCS_*`` environment variables, command-line flags. Every key is declared
once in ``_FIELDS`` with its type; a bad value raises ``ConfigError`` whose
message names the key and where it came from, and the CLI exits with code 2.
"""

import math
import os
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

    ``$XDG_DATA_HOME/ocs`` (else ``~/.local/share/ocs``), never the current
    directory: a command run from another folder must find the same store.
    """
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ocs"


def resolved_log_format(fmt: str) -> str:
    """``json`` or ``text``: ``auto`` means text on a terminal, JSON otherwise."""
    if fmt != "auto":
        return fmt
    return "text" if sys.stderr.isatty() else "json"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything an ocs process is configured with."""

    # None means: start an embedded server under data_dir.
    redis_url: str | None = None
    database_url: str | None = None
    data_dir: Path = field(default_factory=default_data_dir)
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    # Server processes sharing the listening ports (SO_REUSEPORT); see ocs/workers.py.
    workers: int = 1
    log_level: str = "INFO"
    # "auto": text on a terminal, JSON lines otherwise (see resolved_log_format).
    log_format: str = "auto"
    # A live call's record expires this long after its granted duration ends.
    call_expiry_grace: int = 300
    # How long a stopped call's result is kept to answer a repeated stop.
    stop_dedupe_ttl: int = 7 * 24 * 3600
    shutdown_timeout: float = 10.0
    ledger_batch_size: int = 1000
    # A ledger entry left unacknowledged this long by a dead writer is taken over.
    ledger_claim_idle_ms: int = 30_000
    redis_max_connections: int = 64
    database_pool_size: int = 10
    run_ledger_writer: bool = True
    # An Access-Accept's reservation is released if no Accounting-Start binds it in time.
    # Long enough for a call to ring out: a stop that still comes later is charged
    # ("late-stop"), but its funds were free for other calls meanwhile.
    start_timeout: int = 300
    # Interim-Updates debit what a call has used so far (else they only record it).
    debit_on_interim: bool = False
    # How the janitor charges a started call the switch never stopped.
    stale_call_policy: str = "full_grant"
    janitor_interval: float = 1.0
    run_janitor: bool = True
    # PIN guessing: after this many failed PINs within the window a caller id (or a
    # NAS, for the larger limit) is refused with return code 10 until the window ends.
    pin_guess_limit_caller: int = 5
    pin_guess_limit_nas: int = 100
    pin_guess_window: int = 900
    # Refuse admin API requests without a valid token even before the first token
    # exists (ocs.http.admin_auth); once one exists they are refused anyway.
    # Secure by default: without a token the admin API refuses everything. False
    # restores the trial behaviour (open until the first token exists).
    admin_token_required: bool = True
    # Printed once and stored at the first start when no admin token exists yet;
    # set it (OCS_ADMIN_BOOTSTRAP_TOKEN) to choose the token instead of printing one.
    admin_bootstrap_token: str | None = field(default=None, repr=False)
    # The call lifecycle and PIN queries over HTTP need a `switch` (or admin) token.
    switch_token_required: bool = False
    # HTTP call-lifecycle clients without a token are accepted only from these
    # networks (like RADIUS NAS clients); switch_open accepts anyone (trials only).
    switch_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    switch_open: bool = False
    # While Redis or PostgreSQL stays unreachable, repeat one reminder line this often.
    backend_down_reminder: float = 60.0
    # Disconnect-Request (RFC 5176): seconds to wait for a NAS's answer, per attempt.
    disconnect_timeout: float = 1.0
    radius_enabled: bool = True
    radius_host: str = "0.0.0.0"
    radius_auth_port: int = 1812
    radius_acct_port: int = 1813
    # Require a valid Message-Authenticator on every Access-Request (BlastRADIUS,
    # CVE-2024-3596); a client entry may relax it for itself, on purpose only.
    radius_require_message_authenticator: bool = True
    # RFC 5080 duplicate detection: a retransmission within this window gets the
    # cached reply.
    radius_dedupe_window: float = 30.0
    # Where the call id comes from, first present wins.
    radius_call_id_order: tuple[str, ...] = ("h323-conf-id", "Acct-Session-Id", "call-id")
    # RADIUS clients from the config file: address or CIDR, secret, name, policy.
    radius_clients: tuple["RadiusClientConfig", ...] = ()
    config_file: Path | None = field(default=None)


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
        return text

    return parse


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


def _parse_optional_token(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    if len(text) < 16 or not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError("expected a token of at least 16 printable ASCII characters")
    return text


def _parse_networks(value: Any) -> tuple[str, ...]:
    import ipaddress

    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
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
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    if not items or any(item not in _CALL_ID_SOURCES for item in items):
        raise ValueError(f"expected a list of {', '.join(_CALL_ID_SOURCES)}")
    return tuple(items)


def _parse_translation(n: int, rules: Any) -> tuple[dict[str, str], ...] | None:
    if rules is None:
        return None
    from ocs.charging.translation import validate_rules
    from ocs.errors import OcsError

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
                name=str(item.get("name") or network),
                network=network,
                secret=secret,
                require_message_authenticator=require,
                coa_port=coa_port,
                translation=_parse_translation(n, item.get("translation")),
            )
        )
    return tuple(clients)


_FIELDS: dict[str, Callable[[Any], Any]] = {
    "redis_url": _parse_optional_url(("redis://", "rediss://", "unix://")),
    "database_url": _parse_optional_url(("postgresql://", "postgres://")),
    "data_dir": lambda value: Path(_parse_str(str(value))),
    "http_host": _parse_str,
    "http_port": _parse_int(0, 65535),
    "workers": _parse_int(1, 256),
    "log_level": _parse_choice("DEBUG", "INFO", "WARNING", "ERROR"),
    "log_format": _parse_choice("auto", "json", "text"),
    "call_expiry_grace": _parse_int(1, 7 * 24 * 3600),
    "stop_dedupe_ttl": _parse_int(60, 365 * 24 * 3600),
    "shutdown_timeout": _parse_float,
    "ledger_batch_size": _parse_int(1, 100_000),
    "ledger_claim_idle_ms": _parse_int(100, 3_600_000),
    "redis_max_connections": _parse_int(2, 10_000),
    "database_pool_size": _parse_int(1, 1000),
    "run_ledger_writer": _parse_bool,
    "start_timeout": _parse_int(1, 24 * 3600),
    "debit_on_interim": _parse_bool,
    "stale_call_policy": _parse_choice("last_reported", "full_grant"),
    "janitor_interval": _parse_float,
    "run_janitor": _parse_bool,
    "admin_token_required": _parse_bool,
    "admin_bootstrap_token": _parse_optional_token,
    "switch_token_required": _parse_bool,
    "switch_networks": _parse_networks,
    "switch_open": _parse_bool,
    "backend_down_reminder": _parse_float,
    "pin_guess_limit_caller": _parse_int(1, 1_000_000),
    "pin_guess_limit_nas": _parse_int(1, 10_000_000),
    "pin_guess_window": _parse_int(1, 30 * 24 * 3600),
    "disconnect_timeout": _parse_float,
    "radius_enabled": _parse_bool,
    "radius_host": _parse_str,
    "radius_auth_port": _parse_int(0, 65535),
    "radius_acct_port": _parse_int(0, 65535),
    "radius_require_message_authenticator": _parse_bool,
    "radius_dedupe_window": _parse_float,
    "radius_call_id_order": _parse_call_id_order,
    "radius_clients": _parse_radius_clients,
}

ENV_PREFIX = "OCS_"


def _apply(values: dict[str, Any], source: Mapping[str, Any], origin: str, env: bool) -> None:
    for key, raw in source.items():
        name = key[len(ENV_PREFIX) :].lower() if env else key
        parser = _FIELDS.get(name)
        if parser is None:
            if env:
                continue  # other OCS_* variables (test URLs, tooling) are not ours
            raise ConfigError(f"{origin}: unknown setting {key!r}")
        label = key if env else f"{origin}: {key}"
        try:
            values[name] = parser(raw)
        except ValueError as exc:
            raise ConfigError(f"{label}: {exc}") from None


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings: defaults < TOML file < OCS_* environment < overrides (CLI flags)."""
    values: dict[str, Any] = {}
    path = Path(config_file) if config_file else None
    if path is None and environ is not None and environ.get("OCS_CONFIG"):
        path = Path(environ["OCS_CONFIG"])
    if path is not None:
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"--config: file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
        # Accept either top-level keys or an [ocs] table, not both: a key outside the
        # table would otherwise be silently ignored.
        section = document
        if isinstance(document.get("ocs"), dict):
            outside = sorted(k for k in document if k != "ocs")
            if outside:
                raise ConfigError(f"{path}: key(s) {', '.join(outside)} outside the [ocs] table")
            section = document["ocs"]
        _apply(values, section, str(path), env=False)
    env = os.environ if environ is None else environ
    _apply(
        values,
        {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and k != "OCS_CONFIG"},
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
    return settings


def setting_names() -> list[str]:
    """All configurable keys, for documentation and the CLI."""
    return [f.name for f in fields(Settings) if f.name in _FIELDS]


def with_overrides(settings: Settings, **changes: Any) -> Settings:
    """A copy of ``settings`` with some values changed (tests, demo)."""
    return replace(settings, **changes)
