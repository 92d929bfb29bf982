"""What a deployer gets in deploy/: the example settings file (every key, and it loads), the
systemd units (as `systemd-analyze verify` reads them), the compose file (as `docker
compose config` reads it) with its Prometheus configuration, and the probes those files
rely on: /healthz (liveness) stays 200 while the process lives, /readyz (readiness)
answers 503 until the catalog is loaded.
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis

from ocs.config import Settings, load_settings, setting_help, setting_names
from ocs.runtime import open_runtime
from ocs.services import Services
from tests.outage_helpers import FlakyPool, client_with_readyz
from tests.ports import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
EXAMPLE = DEPLOY / "ocs.example.toml"
UNITS = DEPLOY / "systemd"
COMPOSE = DEPLOY / "compose.yaml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
# Where the example shows a deployment's value rather than the default.
DEPLOYMENT_VALUES = {"redis_url", "database_url", "data_dir"}


# --- deploy/ocs.example.toml -----------------------------------------------------------


def _documented_keys() -> dict[str, str]:
    """Each key set in the example, with the comment lines right above it, joined."""
    found: dict[str, str] = {}
    comment: list[str] = []
    for line in EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            comment.append(line.lstrip("#").strip())
            continue
        match = re.match(r"([a-z_0-9]+) = ", line)
        if match:
            found[match[1]] = " ".join(comment)
        comment = []
    return found


def _squeezed(text: str) -> str:
    """``text`` without whitespace: a help text wrapped over comment lines still matches."""
    return "".join(text.split())


def test_the_example_settings_file_sets_every_setting_below_its_help() -> None:
    documented = _documented_keys()
    missing = [name for name in setting_names() if name not in documented]
    assert missing == [], f"deploy/ocs.example.toml lacks {missing}"
    undocumented = [
        name
        for name in setting_names()
        if _squeezed(setting_help(name)) not in _squeezed(documented[name])
    ]
    assert undocumented == [], f"the comment above each of {undocumented} lacks its help text"


def test_the_example_settings_file_loads_with_the_defaults_it_shows() -> None:
    loaded = load_settings(EXAMPLE, environ={})
    defaults = Settings()
    differ = [
        name
        for name in setting_names()
        if name not in DEPLOYMENT_VALUES and getattr(loaded, name) != getattr(defaults, name)
    ]
    assert differ == [], f"the example's values of {differ} are not the defaults"
    assert loaded.redis_url == "redis://127.0.0.1:6379/0"
    assert loaded.data_dir == Path("/var/lib/ocs")


def test_the_radius_clients_example_in_a_comment_is_a_valid_setting() -> None:
    text = EXAMPLE.read_text()
    start = text.index("#   radius_clients = [")
    block = text[start : text.index("#   ]", start) + len("#   ]")]
    example = tomllib.loads("\n".join(line[4:] for line in block.splitlines()))
    loaded = load_settings(environ={}, overrides=example)
    assert [(c.name, c.network, c.coa_port) for c in loaded.radius_clients] == [
        ("gw1", "192.0.2.10/32", None),
        ("pops", "198.51.100.0/24", 3799),
    ]


# --- deploy/systemd --------------------------------------------------------------------


def _unit(path: Path) -> dict[str, list[str]]:
    """A unit file's settings: each key with its values, in order."""
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.parametrize(
    ("unit", "command"),
    [("ocs.service", "serve"), ("ocs-billing-worker.service", "billing-worker")],
)
def test_a_unit_waits_for_readiness_and_runs_sandboxed(unit: str, command: str) -> None:
    settings = _unit(UNITS / unit)
    assert settings["ExecStart"] == [f"/usr/local/bin/ocs {command} --config /etc/ocs/ocs.toml"]
    assert settings["Type"] == ["notify"] and settings["NotifyAccess"] == ["main"]
    for key, value in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "ReadWritePaths": "/var/lib/ocs",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service",
        "KillMode": "mixed",
    }.items():
        assert settings.get(key) == [value], key
    # numba compiles into executable memory: this option would stop every start.
    assert "MemoryDenyWriteExecute" not in settings


def _start_as_the_unit(
    unit: str, config: Path, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """The unit's ExecStart, with ``config`` for /etc/ocs/ocs.toml and this interpreter's
    ocs for /usr/local/bin/ocs (``variables``: OCS_* set as its Environment= would), run
    to its end (a refused start ends at once)."""
    (command,) = _unit(UNITS / unit)["ExecStart"]
    program, *args = command.replace("/etc/ocs/ocs.toml", str(config)).split()
    assert program == "/usr/local/bin/ocs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    env.update(variables or {})
    return subprocess.run(
        [sys.executable, "-m", "ocs", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=config.parent,
        timeout=120,
    )


@pytest.mark.parametrize("unit", ["ocs.service", "ocs-billing-worker.service"])
def test_a_unit_stops_on_a_refusal_a_restart_cannot_fix_and_restarts_after_an_outage(
    unit: str, tmp_path: Path
) -> None:
    """A configuration error used to be restarted every few seconds for ever, its line
    logged each time: it exits 2, which the unit does not restart. A PostgreSQL not
    there yet exits 1, which it does."""
    settings = _unit(UNITS / unit)
    assert settings["Restart"] == ["on-failure"]
    never_restarted = {int(code) for code in settings["RestartPreventExitStatus"][0].split()}
    assert never_restarted == {2}

    wrong = tmp_path / "wrong.toml"
    wrong.write_text('http_port = "eighty"\n')
    refused = _start_as_the_unit(unit, wrong)
    assert refused.returncode in never_restarted, refused.stderr
    assert refused.stderr.strip().splitlines() == [
        f"ocs: configuration error: {wrong}: http_port: expected an integer, got 'eighty'"
    ]

    down = tmp_path / "down.toml"
    down.write_text(
        f'database_url = "postgresql://ocs@127.0.0.1:{free_port()}/ocs"\n'
        f'redis_url = "redis://127.0.0.1:{free_port()}/0"\n'
        f'data_dir = "{tmp_path}"\nradius_enabled = false\nhttp_port = 0\n'
    )
    outage = _start_as_the_unit(unit, down)
    assert outage.returncode not in never_restarted | {0}, outage.stderr
    assert "ocs: cannot use" in outage.stderr, outage.stderr


def _serve_unit_with(
    tmp_path: Path, name: str, lines: str, variables: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``ocs.service`` started on a settings file of ``lines`` whose Redis and PostgreSQL
    are not there: the ports are bound before either is asked, so a bind refusal ends it."""
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'database_url = "postgresql://ocs@127.0.0.1:{free_port()}/ocs"\n'
        f'redis_url = "redis://127.0.0.1:{free_port()}/0"\n'
        f'data_dir = "{tmp_path}"\n{lines}'
    )
    return _start_as_the_unit("ocs.service", config, variables)


@pytest.mark.parametrize(
    ("lines", "named"),
    [
        # An address not on the host yet: DHCP late, IPv6 still tentative, a VIP.
        ('http_host = "192.0.2.55"\nhttp_port = 0\nradius_enabled = false\n', "http_host"),
        ('http_port = 0\nradius_host = "192.0.2.55"\n', "radius_host"),
    ],
    ids=["http address", "radius address"],
)
def test_an_address_not_on_the_host_yet_is_restarted_until_it_is(
    lines: str, named: str, tmp_path: Path
) -> None:
    """Exit 2 for an address the host lacked at boot left the unit failed for good once
    the address came; it exits 1, which the unit restarts, with one line naming it.
    (A name the DNS does not answer for yet: tests/test_listen_hosts.py.)"""
    prevented = {
        int(c) for c in _unit(UNITS / "ocs.service")["RestartPreventExitStatus"][0].split()
    }
    start = _serve_unit_with(tmp_path, "late", lines)
    assert start.returncode == 1, start.stderr
    assert start.returncode not in prevented
    (line,) = start.stderr.strip().splitlines()
    assert line.startswith(f"ocs: refused by the system: {named}: "), line
    assert "(yet)" in line, line


@pytest.mark.parametrize(
    ("lines", "variables", "named"),
    [
        ('http_port = 0\nradius_host = "0.0.0.O"\n', {}, "radius_host"),
        ("http_port = 0\nradius_enabled = false\n", {"OCS_HTTP_HOST": "0.0.0.O"}, "http_host"),
    ],
    ids=["radius_host in the file", "OCS_HTTP_HOST"],
)
def test_a_mistyped_listen_host_stops_the_unit_naming_the_setting_and_value(
    lines: str, variables: dict[str, str], named: str, tmp_path: Path
) -> None:
    """A letter O for a zero used to exit 1 as "cannot resolve (yet)", which the unit
    restarted every few seconds for ever: no host name has that form, so it is a
    configuration error, exit 2, not restarted, in one line naming setting and value."""
    start = _serve_unit_with(tmp_path, "mistyped", lines, variables)
    assert start.returncode == 2, start.stderr
    assert start.stderr.strip().splitlines() == [
        f"ocs: configuration error: {named}: '0.0.0.O' is neither an IP address nor a host"
        " name (mistyped?)"
    ]


def test_a_port_in_use_still_stops_the_unit(tmp_path: Path) -> None:
    """A port another program holds does not free itself: exit 2, not restarted."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        start = _serve_unit_with(
            tmp_path,
            "taken",
            f'http_host = "127.0.0.1"\nhttp_port = {port}\nradius_enabled = false\n',
        )
    assert start.returncode == 2, start.stderr
    assert start.stderr.strip().splitlines() == [
        f"ocs: configuration error: http_port: address in use: 127.0.0.1:{port} (HTTP);"
        " another ocs serve or another program listens there"
    ]


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze not found: install Debian's systemd package"
    # verify checks that ExecStart's program exists: the installed ocs stands in for
    # /usr/local/bin/ocs, every other line is checked as written.
    ocs = shutil.which("ocs") or sys.executable
    copies = []
    for unit in sorted(UNITS.glob("*.service")):
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace("/usr/local/bin/ocs", ocs))
        copies.append(str(copy))
    assert len(copies) == 2
    done = subprocess.run([analyze, "verify", *copies], capture_output=True, text=True)
    # A bad value or an unknown key is only a warning ("ignoring"): none may be printed
    # about our units. Warnings about the machine's own units (verify loads them too,
    # e.g. a packaged freeradius.service) are not ours to fix.
    system_units = ("/lib/systemd/", "/usr/lib/systemd/", "/etc/systemd/", "/run/systemd/")
    ours = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if not line.startswith(system_units)
    ]
    assert (done.returncode, ours) == (0, [])


# --- deploy/compose.yaml and deploy/prometheus -----------------------------------------


def _compose_command() -> list[str]:
    """`docker compose` (the v2 plugin), else the standalone `docker-compose`."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True)
        if plugin.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    assert standalone is not None, (
        "neither `docker compose` nor `docker-compose` found: install the compose plugin"
        " or Debian's docker-compose package"
    )
    return [standalone]


def _compose_config(password: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"}
    if password is not None:
        env["POSTGRES_PASSWORD"] = password
    return subprocess.run(
        [*_compose_command(), "-f", str(COMPOSE), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
    )


def test_the_compose_file_is_valid_compose() -> None:
    done = _compose_config(password="a-test-password")
    assert done.returncode == 0, done.stderr


def test_the_compose_file_has_no_default_database_password() -> None:
    done = _compose_config(password=None)
    assert done.returncode != 0
    assert "set POSTGRES_PASSWORD" in done.stderr


def test_redis_keeps_an_append_only_file_fsynced_every_second() -> None:
    text = COMPOSE.read_text()
    assert '["redis-server", "--appendonly", "yes", "--appendfsync", "everysec"]' in text


def test_prometheus_scrapes_both_ocs_processes_and_loads_the_alert_rules() -> None:
    compose, prometheus = COMPOSE.read_text(), PROMETHEUS.read_text()
    # The targets are the compose services, on the ports they serve /metrics on.
    assert 'targets: ["ocs:8080"]' in prometheus
    assert 'targets: ["billing-worker:9101"]' in prometheus
    assert 'OCS_BILLING_METRICS_PORT: "9101"' in compose
    # Both files are mounted side by side, where rule_files finds alerts.yml.
    assert re.search(r"^rule_files:\n  - alerts\.yml$", prometheus, re.M)
    for name in ("prometheus.yml", "alerts.yml"):
        assert f"source: ./prometheus/{name}\n        target: /etc/prometheus/{name}" in compose


# --- the probes: liveness and readiness kept apart -------------------------------------


async def test_healthz_stays_200_while_postgresql_is_unreachable(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = FlakyPool(services.pool)
    monkeypatch.setattr(services, "pool", pool)
    client = await client_with_readyz(services)
    try:
        pool.down = True
        response = await client.get("/healthz")
        body = await response.json()
    finally:
        await client.close()
    assert response.status == 200
    assert body["status"] == "degraded"
    assert body["checks"] == {"redis": "ok", "postgres": "error: ConnectionRefusedError"}


async def test_healthz_stays_200_while_redis_is_unreachable(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setattr(services, "redis", nowhere)
    client = await client_with_readyz(services)
    try:
        response = await client.get("/healthz")
        body = await response.json()
    finally:
        await client.close()
        await nowhere.aclose()
    assert response.status == 200
    assert body["status"] == "degraded"
    assert body["checks"] == {"redis": "error: ConnectionError", "postgres": "ok"}


async def test_readyz_is_503_until_the_catalog_is_loaded(settings: Settings) -> None:
    async with open_runtime(settings, listen_catalog=False, load_catalog=False) as services:
        client = await client_with_readyz(services)
        try:
            loading = await client.get("/readyz")
            loading_body = await loading.json()
            await services.catalog.reload()
            loaded = await client.get("/readyz")
            loaded_body = await loaded.json()
        finally:
            await client.close()
    assert loading.status == 503
    assert loading_body == {
        "ready": False,
        "backends": {"redis": {"up": True}, "postgresql": {"up": True}},
        "catalog": "loading",
    }
    assert loaded.status == 200
    assert loaded_body == {
        "ready": True,
        "backends": {"redis": {"up": True}, "postgresql": {"up": True}},
    }


async def test_readyz_is_503_while_postgresql_takes_no_writes(
    services: Services, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After a failover the pool may still reach the old primary, now a standby: it
    # answers reads, so /readyz said ready while every change ocs stores failed there.
    read_only = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=2,
        server_settings={"default_transaction_read_only": "on"},
    )
    monkeypatch.setattr(services, "pool", read_only)
    client = await client_with_readyz(services)
    try:
        response = await client.get("/readyz")
        body = await response.json()
    finally:
        await client.close()
        await read_only.close()
    assert response.status == 503
    assert body["ready"] is False
    assert body["backends"]["postgresql"]["up"] is False
    assert body["backends"]["postgresql"]["error"] == "ReadOnlySQLTransactionError"
    # Reads still work there: no outage is logged or counted for the rest of ocs.
    assert services.health.is_up("postgresql")
