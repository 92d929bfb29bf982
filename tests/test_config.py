"""Where settings come from, which source wins, and how a bad value is reported.

Priority, lowest first: defaults, the TOML file (--config or OCS_CONFIG), OCS_*
environment variables, command-line flags. A bad value stops the process with
exit code 2 and one line that names the key, the variable or the flag.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocs.config import ConfigError, Settings, load_settings


def write_toml(tmp_path: Path, text: str, name: str = "ocs.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


FILE = """
http_port = 1111
http_host = "10.0.0.1"
log_level = "debug"
ledger_batch_size = 50
"""


# --- priority ------------------------------------------------------------------------


def test_defaults_apply_when_nothing_is_configured() -> None:
    settings = load_settings(environ={})
    assert settings == Settings()
    assert (settings.http_port, settings.log_level, settings.log_format) == (8080, "INFO", "auto")
    assert settings.redis_url is None and settings.database_url is None  # embedded servers
    assert settings.config_file is None


def test_the_file_overrides_the_defaults(tmp_path: Path) -> None:
    path = write_toml(tmp_path, FILE)
    settings = load_settings(path, environ={})
    assert settings.http_port == 1111
    assert settings.http_host == "10.0.0.1"
    assert settings.log_level == "DEBUG"
    assert settings.ledger_batch_size == 50
    assert settings.log_format == "auto"  # not in the file: the default
    assert settings.config_file == path


def test_the_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, FILE)
    settings = load_settings(path, environ={"OCS_HTTP_PORT": "2222", "OCS_LOG_LEVEL": "warning"})
    assert settings.http_port == 2222
    assert settings.log_level == "WARNING"
    assert settings.http_host == "10.0.0.1"  # only in the file
    assert settings.ledger_batch_size == 50


def test_flags_override_the_environment_and_the_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, FILE)
    settings = load_settings(
        path,
        environ={"OCS_HTTP_PORT": "2222", "OCS_LOG_LEVEL": "warning"},
        overrides={"http_port": "3333", "log_level": None, "log_format": "text"},
    )
    assert settings.http_port == 3333
    assert settings.log_level == "WARNING"  # a flag not given (None) leaves the value alone
    assert settings.log_format == "text"
    assert settings.http_host == "10.0.0.1"


def test_an_ocs_table_in_the_file_is_read_too(tmp_path: Path) -> None:
    path = write_toml(tmp_path, '[ocs]\nhttp_port = 4444\nlog_format = "text"\n')
    settings = load_settings(path, environ={})
    assert (settings.http_port, settings.log_format) == (4444, "text")


def test_ocs_config_names_the_file_and_an_explicit_file_wins(tmp_path: Path) -> None:
    from_env = write_toml(tmp_path, "http_port = 5555\n", "env.toml")
    explicit = write_toml(tmp_path, "http_port = 6666\n", "explicit.toml")
    assert load_settings(environ={"OCS_CONFIG": str(from_env)}).http_port == 5555
    assert load_settings(explicit, environ={"OCS_CONFIG": str(from_env)}).http_port == 6666


def test_ocs_config_in_the_process_environment_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the CLI and `ocs serve` call: no ``environ`` given, the process's own."""
    for name in [k for k in os.environ if k.startswith("OCS_")]:
        monkeypatch.delenv(name)
    path = write_toml(tmp_path, 'redis_url = "redis://cache:6379/0"\nhttp_port = 5555\n')
    monkeypatch.setenv("OCS_CONFIG", str(path))
    settings = load_settings()
    assert (settings.redis_url, settings.http_port) == ("redis://cache:6379/0", 5555)
    assert settings.config_file == path
    monkeypatch.setenv("OCS_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match="OCS_CONFIG: file not found") as raised:
        load_settings()
    assert "absent.toml" in str(raised.value)


def test_environment_values_are_parsed_to_their_types() -> None:
    settings = load_settings(
        environ={
            "OCS_RUN_LEDGER_WRITER": "no",
            "OCS_SHUTDOWN_TIMEOUT": "2.5",
            "OCS_DATA_DIR": "/srv/ocs",
            "OCS_REDIS_URL": "redis://cache:6379/0",
            "OCS_DATABASE_URL": "postgresql://ocs@db/ocs",
            "OCS_LOG_FORMAT": "TEXT",
        }
    )
    assert settings.run_ledger_writer is False
    assert settings.shutdown_timeout == 2.5
    assert settings.data_dir == Path("/srv/ocs")
    assert settings.redis_url == "redis://cache:6379/0"
    assert settings.database_url == "postgresql://ocs@db/ocs"
    assert settings.log_format == "text"


def test_the_default_data_dir_is_per_user_whatever_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert load_settings(environ={}).data_dir == tmp_path / "data" / "ocs"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert load_settings(environ={}).data_dir == tmp_path / "home" / ".local" / "share" / "ocs"
    # Root gets the service's own place, never /root opened to pgserver's user.
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert load_settings(environ={}).data_dir == Path("/var/lib/ocs")


def test_the_suite_and_handoff_variables_are_not_taken_for_settings() -> None:
    settings = load_settings(
        environ={"OCS_TEST_REDIS_URL": "redis://x", "OCS_LISTEN_FDS": "3,4,5", "HTTP_PORT": "1"}
    )
    assert settings == Settings()


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [("OCS_REDIS_ULR", "OCS_REDIS_URL"), ("OCS_DATABSE_URL", "OCS_DATABASE_URL")],
)
def test_an_unknown_ocs_variable_stops_with_the_closest_key(variable: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={variable: "redis://127.0.0.1:6399/0"})
    assert variable in str(raised.value)
    assert f"did you mean {suggestion!r}" in str(raised.value)


def test_an_unknown_key_in_the_file_names_the_closest_key(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'redis_ulr = "redis://127.0.0.1:6399/0"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert "redis_ulr" in str(raised.value) and "did you mean 'redis_url'" in str(raised.value)


def test_serve_with_a_misspelt_variable_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "OCS_REDIS_ULR": "redis://x:1/0"}
    done = subprocess.run(
        [sys.executable, "-m", "ocs", "serve", "--data-dir", str(tmp_path / "var")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "OCS_REDIS_ULR" in done.stderr and "OCS_REDIS_URL" in done.stderr
    assert not (tmp_path / "var").exists()  # no private embedded store was started


# --- bad values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OCS_HTTP_PORT", "abc"),
        ("OCS_HTTP_PORT", "70000"),
        ("OCS_HTTP_PORT", "-1"),
        ("OCS_HTTP_PORT", "8080.5"),
        ("OCS_LOG_LEVEL", "verbose"),
        ("OCS_LOG_FORMAT", "xml"),
        ("OCS_REDIS_URL", "http://cache:6379"),
        ("OCS_DATABASE_URL", "mysql://db/ocs"),
        ("OCS_RUN_LEDGER_WRITER", "maybe"),
        ("OCS_SHUTDOWN_TIMEOUT", "-1"),
        ("OCS_SHUTDOWN_TIMEOUT", "soon"),
        ("OCS_SHUTDOWN_TIMEOUT", "nan"),
        ("OCS_LEDGER_BATCH_SIZE", "0"),
        ("OCS_DATABASE_POOL_SIZE", "many"),
        ("OCS_INVOICE_LOCALE", "english"),
        ("OCS_INVOICE_LOCALE", "xx_YY_ZZ"),
    ],
)
def test_a_bad_environment_value_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={variable: value})
    assert variable in str(raised.value)


@pytest.mark.parametrize(
    "line",
    [
        'http_port = "abc"',
        "http_port = 70000",
        "http_port = true",
        "http_port = 8080.5",
        'log_level = "loud"',
        "log_format = 1",
        'data_dir = ""',
        "ledger_batch_size = 1.9",
        "shutdown_timeout = -0.5",
        # Values of a type the setting cannot be: refused naming it, not a TypeError.
        "switch_networks = 5",
        "switch_networks = [10]",
        "radius_call_id_order = 5",
        'invoice_locale = "klingon"',
        "invoice_fallback_fonts = [1]",
        'radius_clients = [{address = "10.0.0.0/8", secret = "x", name = ["a"]}]',
    ],
)
def test_a_bad_value_in_the_file_names_the_key_and_the_file(tmp_path: Path, line: str) -> None:
    path = write_toml(tmp_path, line + "\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    message = str(raised.value)
    assert line.split(" = ")[0] in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("http_prot = 8080\n", "http_prot"),
        ("[ocs]\nhttp-port = 8080\n", "http-port"),
        ("[server]\nport = 8080\n", "server"),
    ],
)
def test_an_unknown_key_in_the_file_is_refused(tmp_path: Path, text: str, key: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError, match="unknown setting") as raised:
        load_settings(path, environ={})
    assert key in str(raised.value)


def test_a_key_beside_the_ocs_table_is_not_silently_ignored(tmp_path: Path) -> None:
    # Top-level keys must come before the first table in TOML, so this is an easy file
    # to write; its http_port must either be applied or refused, never dropped.
    path = write_toml(tmp_path, 'http_port = 1111\n[ocs]\nlog_level = "debug"\n')
    try:
        settings = load_settings(path, environ={})
    except ConfigError as exc:
        assert "http_port" in str(exc)
    else:
        assert (settings.http_port, settings.log_level) == (1111, "DEBUG")


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "http_port = = 8080\n")
    with pytest.raises(ConfigError, match="not valid TOML") as raised:
        load_settings(path, environ={})
    assert str(path) in str(raised.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found") as raised:
        load_settings(tmp_path / "absent.toml", environ={})
    assert "absent.toml" in str(raised.value)


def test_a_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={}, overrides={"http_port": "abc"})
    assert str(raised.value).startswith("--http-port:")


# --- the command line ----------------------------------------------------------------


def run_ocs(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m ocs ARGS`` in an empty directory, with only the given OCS_* variables.

    Its per-user data location (default data dir) is ``tmp_path/xdg``, never the real one.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("OCS_")}
    environ["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    environ.update(env or {})
    done = subprocess.run(
        [sys.executable, "-m", "ocs", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environ,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def assert_one_line_naming(err: str, name: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert name in lines[0], err
    return lines[0]


def test_serve_with_a_bad_port_flag_exits_2_naming_the_flag(tmp_path: Path) -> None:
    code, out, err = run_ocs(tmp_path, "serve", "--http-port", "abc")
    assert code == 2
    assert out == ""
    line = assert_one_line_naming(err, "--http-port")
    assert "abc" in line
    assert "configuration error" in line  # a setting given as a flag: still configuration
    assert not (tmp_path / "xdg").exists()  # nothing was started


def test_serve_with_a_bad_port_variable_exits_2_naming_the_variable(tmp_path: Path) -> None:
    code, out, err = run_ocs(tmp_path, "serve", env={"OCS_HTTP_PORT": "70000"})
    assert code == 2
    assert out == ""
    line = assert_one_line_naming(err, "OCS_HTTP_PORT")
    assert "70000" in line
    assert not (tmp_path / "xdg").exists()


def test_serve_with_an_unknown_invoice_locale_exits_2_naming_the_setting(
    tmp_path: Path,
) -> None:
    # Taken before, it made every invoice PDF answer 500 and every invoice email fail.
    code, out, err = run_ocs(tmp_path, "serve", env={"OCS_INVOICE_LOCALE": "english"})
    assert code == 2
    assert out == ""
    line = assert_one_line_naming(err, "OCS_INVOICE_LOCALE")
    assert "'english' is not a locale" in line
    assert not (tmp_path / "xdg").exists()  # nothing was started


@pytest.mark.parametrize(
    ("given", "taken"), [("en-GB", "en_GB"), ("fr-FR", "fr_FR"), ("ja_JP", "ja_JP"), ("de", "de")]
)
def test_an_invoice_locale_is_taken_as_babel_names_it(given: str, taken: str) -> None:
    assert load_settings(environ={"OCS_INVOICE_LOCALE": given}).invoice_locale == taken


def test_serve_with_a_missing_config_file_exits_2_naming_the_file(tmp_path: Path) -> None:
    code, out, err = run_ocs(tmp_path, "serve", "--config", "missing.toml")
    assert code == 2
    assert out == ""
    assert_one_line_naming(err, "missing.toml")


def test_a_command_with_ocs_config_naming_a_missing_file_exits_2_naming_it(
    tmp_path: Path,
) -> None:
    code, out, err = run_ocs(tmp_path, "plans", "list", env={"OCS_CONFIG": "missing.toml"})
    assert code == 2, err
    assert out == ""
    line = assert_one_line_naming(err, "missing.toml")
    assert "OCS_CONFIG" in line
    assert not (tmp_path / "xdg").exists()  # no embedded store started in its place


def test_a_command_reads_the_file_ocs_config_names(tmp_path: Path) -> None:
    write_toml(tmp_path, "http_port = 8080\nredis_host = 'cache'\n")
    code, out, err = run_ocs(tmp_path, "plans", "list", env={"OCS_CONFIG": "ocs.toml"})
    assert code == 2, err
    assert out == ""
    assert_one_line_naming(err, "redis_host")
    assert not (tmp_path / "xdg").exists()


def test_serve_with_an_unknown_key_in_the_config_file_exits_2_naming_the_key(
    tmp_path: Path,
) -> None:
    write_toml(tmp_path, "http_port = 8080\nredis_host = 'cache'\n")
    code, out, err = run_ocs(tmp_path, "serve", "--config", "ocs.toml")
    assert code == 2
    assert out == ""
    assert_one_line_naming(err, "redis_host")


def test_a_bad_log_level_flag_exits_2_naming_the_flag(tmp_path: Path) -> None:
    code, _, err = run_ocs(tmp_path, "plans", "list", "--log-level", "chatty")
    assert code == 2
    assert_one_line_naming(err, "--log-level")


@pytest.mark.parametrize(
    ("key", "url", "said"),
    [
        ("redis_url", "redis://:S3CRET@localhost:abc/0", "a port is not a number"),
        ("redis_url", "redis://:S3CRET@[::1/0", "an IPv6 host needs both brackets"),
        ("database_url", "postgresql://u:S3CRET@localhost:notaport/db", "a port is not a"),
        ("database_url", "postgresql://u:S3CRET@h1:5432,h2:99999/db", "a port is not a"),
        ("database_url", "postgresql://u:S3CRET@[::1/db", "an IPv6 host needs both"),
    ],
)
def test_a_url_with_a_bad_host_or_port_is_refused_without_its_password(
    key: str, url: str, said: str
) -> None:
    # Before, such a URL passed, and the first connect died with a 45-line traceback.
    with pytest.raises(ConfigError, match=said) as raised:
        load_settings(environ={}, overrides={key: url})
    assert "S3CRET" not in str(raised.value)


@pytest.mark.parametrize(
    ("key", "url"),
    [
        ("redis_url", "redis://[::1]:6379/0"),
        ("redis_url", "unix:///run/redis.sock?db=1"),
        ("database_url", "postgresql://u:p@h1:5432,[::1]:5433,h3/db"),
        ("database_url", "postgresql:///db?host=/run/postgresql"),
    ],
)
def test_urls_the_client_libraries_take_are_taken(key: str, url: str) -> None:
    assert getattr(load_settings(environ={}, overrides={key: url}), key) == url
