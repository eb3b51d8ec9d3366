"""mlsm.config: four layers in a fixed order, and errors that say which key and where."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mlsm.config import (
    DEFAULT_PORT,
    config_file,
    credentials_file,
    load_settings,
    save_credentials,
)
from mlsm.errors import ConfigError


def _write_config(text: str) -> Path:
    path = config_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------------ precedence
def test_defaults_apply_when_nothing_is_set(tmp_home):
    settings = load_settings()
    assert settings.port == DEFAULT_PORT
    assert settings.host == "127.0.0.1"


def test_config_file_is_found_under_xdg_config_home(tmp_home):
    assert config_file() == tmp_home / ".config" / "mlsm" / "config.toml"


def test_file_overrides_defaults(tmp_home):
    _write_config("port = 1001\n")
    assert load_settings().port == 1001


def test_environment_overrides_file(tmp_home, monkeypatch):
    _write_config("port = 1001\n")
    monkeypatch.setenv("MLSM_PORT", "1002")
    assert load_settings().port == 1002


def test_flags_override_environment(tmp_home, monkeypatch):
    _write_config("port = 1001\n")
    monkeypatch.setenv("MLSM_PORT", "1002")
    assert load_settings({"port": 1003}).port == 1003


def test_unset_flags_do_not_hide_lower_layers(tmp_home, monkeypatch):
    """click passes None / () for flags the user did not give."""
    monkeypatch.setenv("MLSM_PORT", "1002")
    monkeypatch.setenv("MLSM_DATASET_ROOTS", "/data")
    settings = load_settings({"port": None, "dataset_roots": ()})
    assert settings.port == 1002
    assert settings.dataset_roots == ["/data"]


def test_each_layer_only_overrides_the_keys_it_sets(tmp_home, monkeypatch):
    _write_config('host = "0.0.0.0"\nport = 1001\nlog_level = "debug"\n')
    monkeypatch.setenv("MLSM_PORT", "1002")
    settings = load_settings({"log_level": "error"})
    assert (settings.host, settings.port, settings.log_level) == ("0.0.0.0", 1002, "error")


def test_explicit_environ_replaces_process_environment(tmp_home, monkeypatch):
    monkeypatch.setenv("MLSM_PORT", "1002")
    assert load_settings(environ={}, use_file=False).port == DEFAULT_PORT


def test_mlsm_config_names_another_file(tmp_home, monkeypatch, tmp_path):
    other = tmp_path / "elsewhere.toml"
    other.write_text("port = 2001\n")
    _write_config("port = 1001\n")
    monkeypatch.setenv("MLSM_CONFIG", str(other))
    assert load_settings().port == 2001


@pytest.mark.parametrize("table", ["master", "agent", "client"])
def test_tables_only_group_keys(tmp_home, table):
    _write_config(f'[{table}]\nnode_name = "gpu-01"\n')
    assert load_settings().node_name == "gpu-01"


# ------------------------------------------------------------------ value parsing
def test_environment_values_are_converted_to_the_key_type(tmp_home, monkeypatch):
    monkeypatch.setenv("MLSM_PORT", "9000")
    monkeypatch.setenv("MLSM_ALLOW_PLAIN_HTTP", "true")
    monkeypatch.setenv("MLSM_SESSION_TTL", "60.5")
    settings = load_settings()
    assert (settings.port, settings.allow_plain_http, settings.session_ttl) == (9000, True, 60.5)


def test_environment_lists_and_labels(tmp_home, monkeypatch):
    monkeypatch.setenv("MLSM_DATASET_ROOTS", "/data:/scratch/ds")
    monkeypatch.setenv("MLSM_LABELS", "rack=b2, ib = yes")
    settings = load_settings()
    assert settings.dataset_roots == ["/data", "/scratch/ds"]
    assert settings.labels == {"rack": "b2", "ib": "yes"}


def test_empty_environment_value_counts_as_unset(tmp_home, monkeypatch):
    _write_config("port = 1001\n")
    monkeypatch.setenv("MLSM_PORT", "")
    assert load_settings().port == 1001


def test_derived_paths_follow_xdg_data_home(tmp_home):
    settings = load_settings()
    assert settings.data_path == tmp_home / ".local" / "share" / "mlsm"
    assert settings.agent_data_path == settings.data_path / "agent"
    assert settings.db_url == f"sqlite+aiosqlite:///{settings.data_path / 'mlsm.db'}"


def test_database_url_wins_over_the_sqlite_default(tmp_home, monkeypatch):
    url = "postgresql+asyncpg://u:p@db/mlsm"
    monkeypatch.setenv("MLSM_DATABASE_URL", url)
    assert load_settings().db_url == url


# ------------------------------------------------------------------ errors
def test_bad_environment_value_names_key_and_environment(tmp_home, monkeypatch):
    monkeypatch.setenv("MLSM_PORT", "abc")
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    message = str(excinfo.value)
    assert "'port'" in message
    assert "environment" in message


def test_bad_file_value_names_key_and_file(tmp_home):
    path = _write_config('port = "abc"\n')
    with pytest.raises(ConfigError) as excinfo:
        load_settings()
    assert "'port'" in str(excinfo.value)
    assert str(path) in str(excinfo.value)


def test_bad_flag_value_names_key_and_command_line(tmp_home):
    with pytest.raises(ConfigError) as excinfo:
        load_settings({"log_level": "loud"})
    assert "'log_level'" in str(excinfo.value)
    assert "command line" in str(excinfo.value)


@pytest.mark.parametrize(
    ("var", "value"),
    [("MLSM_PORT", "70000"), ("MLSM_SESSION_TTL", "0"), ("MLSM_MAX_BODY_BYTES", "10")],
)
def test_out_of_range_values_are_refused(tmp_home, monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=var.removeprefix("MLSM_").lower()):
        load_settings()


def test_malformed_label_is_refused(tmp_home, monkeypatch):
    monkeypatch.setenv("MLSM_LABELS", "rack")
    with pytest.raises(ConfigError, match="MLSM_LABELS"):
        load_settings()


@pytest.mark.parametrize("text", ["colour = 1\n", "[agent]\nnode_nmae = 'x'\n"])
def test_unknown_key_in_file_is_refused(tmp_home, text):
    _write_config(text)
    with pytest.raises(ConfigError, match="unknown setting"):
        load_settings()


def test_unknown_flag_key_is_refused(tmp_home):
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings({"colour": "red"})


def test_unreadable_toml_is_a_config_error(tmp_home):
    path = _write_config("port = = 1\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings()
    assert path.exists()


# ------------------------------------------------------------------ credentials
def test_credentials_file_is_written_0600(tmp_home):
    path = save_credentials("https://mlsm.lab:8765", "secret-token")
    assert path == credentials_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_credentials_file_stays_0600_when_overwritten(tmp_home):
    path = credentials_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('url = "old"\n')
    path.chmod(0o644)
    save_credentials("https://mlsm.lab:8765", "t")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_credentials_are_loaded_between_file_and_environment(tmp_home, monkeypatch):
    _write_config('url = "http://from-config"\ntoken = "config-token"\n')
    save_credentials('https://mlsm.lab:8765/"quoted"', "cred-token", fingerprint="sha256:ab")
    settings = load_settings()
    assert settings.url == 'https://mlsm.lab:8765/"quoted"'
    assert settings.token == "cred-token"
    assert settings.fingerprint == "sha256:ab"
    monkeypatch.setenv("MLSM_TOKEN", "env-token")
    assert load_settings().token == "env-token"


# ------------------------------------------------------------------ trusted proxies
def test_trusted_proxies_from_the_environment_are_comma_separated(tmp_home, monkeypatch):
    monkeypatch.setenv("MLSM_TRUSTED_PROXIES", "10.0.0.0/8, ::1,192.0.2.7")
    assert load_settings().trusted_proxies == ["10.0.0.0/8", "::1", "192.0.2.7"]


@pytest.mark.parametrize("value", ["proxy.example", "10.0.0.0/33", "1.2.3"])
def test_a_trusted_proxy_that_is_no_address_names_the_key(tmp_home, value):
    _write_config(f'trusted_proxies = ["{value}"]\n')
    with pytest.raises(ConfigError, match=r"trusted_proxies.*is not an IP address or CIDR"):
        load_settings()


def test_log_format_picks_text_for_a_terminal_and_json_otherwise() -> None:
    """`auto` (the default) asks the stream; `json` and `text` are what they say."""
    import io
    import logging

    from mlsm.logs import JsonLogFormatter, TextLogFormatter, log_formatter

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert load_settings(environ={}, use_file=False).log_format == "auto"
    assert isinstance(log_formatter("auto", Terminal()), TextLogFormatter)
    assert isinstance(log_formatter("auto", io.StringIO()), JsonLogFormatter)
    assert isinstance(log_formatter("json", Terminal()), JsonLogFormatter)
    assert isinstance(log_formatter("text", io.StringIO()), TextLogFormatter)
    record = logging.LogRecord("mlsm.master", logging.INFO, "", 0, "GET /a\x1b]0;x\x07", (), None)
    line = TextLogFormatter().format(record)
    assert "\x1b" not in line and "\\x1b]0;x\\x07" in line and " info " in line
