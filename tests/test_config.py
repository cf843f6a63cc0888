"""Settings: environment parsing, validation, the TOML file, the secret key file, masking."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from maildesk.config import Settings
from maildesk.errors import ConfigError


def _error(environ: dict[str, str], config_file: Path | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ, config_file=config_file)
    return info.value


def test_no_variables_give_the_declared_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_variables_outside_the_prefix_are_ignored() -> None:
    assert Settings.from_env({"PORT": "1", "DATA_DIR": "/x"}) == Settings()


# ------------------------------------------------------------------------------ types
@pytest.mark.parametrize("raw", ["1", "true", "True", "TRUE", "yes", "on", " On "])
def test_true_forms(raw: str) -> None:
    env = {"MAILDESK_ALLOW_LOOPBACK_WEBHOOKS": raw}
    assert Settings.from_env(env).allow_loopback_webhooks is True


@pytest.mark.parametrize("raw", ["0", "false", "False", "no", "off", "OFF", ""])
def test_false_forms(raw: str) -> None:
    env = {"MAILDESK_ALLOW_LOOPBACK_WEBHOOKS": raw}
    assert Settings.from_env(env).allow_loopback_webhooks is False


def test_false_from_the_environment_overrides_true_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "maildesk.toml"
    path.write_text("allow_loopback_webhooks = true\n")
    assert Settings.from_env({}, config_file=path).allow_loopback_webhooks is True
    env = {"MAILDESK_ALLOW_LOOPBACK_WEBHOOKS": "no"}
    assert Settings.from_env(env, config_file=path).allow_loopback_webhooks is False


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_a_bad_boolean_names_the_variable(raw: str) -> None:
    err = _error({"MAILDESK_ALLOW_LOOPBACK_WEBHOOKS": raw})
    assert err.field == "MAILDESK_ALLOW_LOOPBACK_WEBHOOKS"
    assert str(err).startswith("MAILDESK_ALLOW_LOOPBACK_WEBHOOKS: ")
    assert raw in str(err)


def test_int_settings_parse() -> None:
    settings = Settings.from_env({"MAILDESK_PORT": " 9000 ", "MAILDESK_WORKER_CONCURRENCY": "8"})
    assert settings.port == 9000
    assert settings.worker_concurrency == 8


@pytest.mark.parametrize("raw", ["abc", "80.5", "", "8025x"])
def test_a_bad_int_names_the_variable(raw: str) -> None:
    assert _error({"MAILDESK_PORT": raw}).field == "MAILDESK_PORT"


def test_float_settings_parse() -> None:
    settings = Settings.from_env({
        "MAILDESK_POLL_INTERVAL": "60", "MAILDESK_WORKER_TICK": "0.25",
        "MAILDESK_PUSH_SILENCE_THRESHOLD": "1e3",
    })
    assert settings.poll_interval == 60.0
    assert isinstance(settings.poll_interval, float)
    assert settings.worker_tick == 0.25
    assert settings.push_silence_threshold == 1000.0


@pytest.mark.parametrize("raw", ["soon", "2m", ""])
def test_a_bad_float_names_the_variable(raw: str) -> None:
    assert _error({"MAILDESK_POLL_INTERVAL": raw}).field == "MAILDESK_POLL_INTERVAL"


@pytest.mark.parametrize(("name", "raw"), [
    ("MAILDESK_POLL_INTERVAL", "0"),
    ("MAILDESK_LEASE_SECONDS", "-5"),
    ("MAILDESK_WORKER_TICK", "0"),
    ("MAILDESK_HTTP_TIMEOUT", "-1"),
    ("MAILDESK_PUSH_SILENCE_THRESHOLD", "0"),
    ("MAILDESK_PUSH_RENEWAL_INTERVAL", "-3600"),
    ("MAILDESK_WORKER_CONCURRENCY", "0"),
    ("MAILDESK_SAFETY_POLL_INTERVAL", "0"),
    ("MAILDESK_HTTP_CONNECT_TIMEOUT", "-1"),
    ("MAILDESK_POLL_INTERVAL", "inf"),
    ("MAILDESK_PORT", "0"),
    ("MAILDESK_PORT", "-1"),
])
def test_a_duration_or_count_out_of_range_names_the_variable(name: str, raw: str) -> None:
    err = _error({name: raw})
    assert err.field == name


def test_path_settings_expand_the_home_folder(tmp_path: Path) -> None:
    assert Settings.from_env({"MAILDESK_DATA_DIR": "~/md"}).data_dir == Path.home() / "md"
    assert Settings.from_env({"MAILDESK_DATA_DIR": str(tmp_path)}).data_dir == tmp_path


def test_string_settings_are_stripped() -> None:
    settings = Settings.from_env({"MAILDESK_HOST": " 0.0.0.0 ", "MAILDESK_DATABASE_URL": "  "})
    assert settings.host == "0.0.0.0"  # noqa: S104 - a parsed value, nothing listens here
    assert settings.database_url == ""


# ------------------------------------------------------------------------------ URLs
@pytest.mark.parametrize(("name", "raw"), [
    ("MAILDESK_BASE_URL", "mail.example.com"),
    ("MAILDESK_BASE_URL", "ftp://mail.example.com"),
    ("MAILDESK_BASE_URL", "https://"),
    ("MAILDESK_GMAIL_API_URL", "gmail.googleapis.com"),
    ("MAILDESK_GOOGLE_TOKEN_URL", "/token"),
    ("MAILDESK_GRAPH_API_URL", "graph"),
    ("MAILDESK_MICROSOFT_AUTHORITY_URL", "login.microsoftonline.com"),
])
def test_a_bad_url_names_the_variable(name: str, raw: str) -> None:
    err = _error({name: raw})
    assert err.field == name
    assert "URL" in err.problem


def test_a_base_url_with_a_trailing_slash_is_refused() -> None:
    err = _error({"MAILDESK_BASE_URL": "https://mail.example.com/"})
    assert err.field == "MAILDESK_BASE_URL"
    assert "slash" in err.problem
    ok = Settings.from_env({"MAILDESK_BASE_URL": "https://mail.example.com/maildesk"})
    assert ok.base_url == "https://mail.example.com/maildesk"


# ------------------------------------------------------------------------------ the TOML file
def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "maildesk.toml"
    path.write_text(text)
    return path


def test_the_file_sets_values_of_every_type(tmp_path: Path) -> None:
    path = _toml(tmp_path, f"""
data_dir = "{tmp_path / 'data'}"
base_url = "https://mail.example.com"
port = 9001
poll_interval = 45
worker_tick = 0.5
allow_loopback_webhooks = true
google_client_id = "from-file"
""")
    settings = Settings.from_env({}, config_file=path)
    assert settings.data_dir == tmp_path / "data"
    assert settings.base_url == "https://mail.example.com"
    assert settings.port == 9001
    assert settings.poll_interval == 45.0
    assert settings.worker_tick == 0.5
    assert settings.allow_loopback_webhooks is True
    assert settings.google_client_id == "from-file"


def test_the_file_is_found_through_maildesk_config_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = 9002\n")
    assert Settings.from_env({"MAILDESK_CONFIG_FILE": str(path)}).port == 9002


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'port = 9003\nhost = "0.0.0.0"\npoll_interval = 45\n')
    settings = Settings.from_env(
        {"MAILDESK_CONFIG_FILE": str(path), "MAILDESK_PORT": "9004"}
    )
    assert settings.port == 9004
    assert settings.host == "0.0.0.0"  # noqa: S104 - from the file, not overridden
    assert settings.poll_interval == 45.0


def test_an_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = 9005\npoll_intervall = 30\n")
    err = _error({}, config_file=path)
    assert err.field == "MAILDESK_POLL_INTERVALL"
    assert "unknown" in err.problem


def test_a_bad_value_in_the_file_names_the_setting(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'port = "eighty"\n')
    assert _error({}, config_file=path).field == "MAILDESK_PORT"


def test_an_invalid_url_in_the_file_is_refused(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'base_url = "https://mail.example.com/"\n')
    assert _error({}, config_file=path).field == "MAILDESK_BASE_URL"


@pytest.mark.parametrize("text", ["port = \n", "[broken\n", "port = 1\nport = 2\n"])
def test_a_malformed_file_names_maildesk_config_file(tmp_path: Path, text: str) -> None:
    path = _toml(tmp_path, text)
    err = _error({}, config_file=path)
    assert err.field == "MAILDESK_CONFIG_FILE"
    assert str(path) in err.problem


def test_a_missing_file_names_maildesk_config_file(tmp_path: Path) -> None:
    err = _error({"MAILDESK_CONFIG_FILE": str(tmp_path / "nope.toml")})
    assert err.field == "MAILDESK_CONFIG_FILE"


# ------------------------------------------------------------------------------ secret key
def test_with_secret_key_generates_an_owner_only_key_file_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "not-yet-there"
    first = Settings(data_dir=data_dir).with_secret_key()
    key_file = data_dir / "secret.key"
    assert len(first.secret_key) >= 32
    assert key_file.read_text().strip() == first.secret_key
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert first.secret_keys == [first.secret_key]

    second = Settings(data_dir=data_dir).with_secret_key()
    assert second.secret_key == first.secret_key
    assert key_file.read_text().strip() == first.secret_key


def test_each_data_folder_gets_its_own_key(tmp_path: Path) -> None:
    one = Settings(data_dir=tmp_path / "a").with_secret_key()
    two = Settings(data_dir=tmp_path / "b").with_secret_key()
    assert one.secret_key != two.secret_key


def test_a_configured_key_is_used_and_no_file_is_written(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, secret_key="configured")
    assert settings.with_secret_key() is settings
    assert not (tmp_path / "secret.key").exists()


def test_secret_keys_are_split_for_rotation_newest_first() -> None:
    settings = Settings.from_env({"MAILDESK_SECRET_KEY": " new-key , old-key ,, "})
    assert settings.secret_keys == ["new-key", "old-key"]


# ------------------------------------------------------------------------------ describe
def test_describe_masks_secrets_and_shows_everything_else(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, secret_key="sk-one,sk-two", google_client_secret="g-secret",
        microsoft_client_secret="m-secret", google_client_id="g-client", port=9100,
    )
    described = settings.describe()
    assert described["MAILDESK_SECRET_KEY"] == "***"
    assert described["MAILDESK_GOOGLE_CLIENT_SECRET"] == "***"
    assert described["MAILDESK_MICROSOFT_CLIENT_SECRET"] == "***"
    assert described["MAILDESK_GOOGLE_CLIENT_ID"] == "g-client"
    assert described["MAILDESK_PORT"] == "9100"
    assert described["MAILDESK_DATA_DIR"] == str(tmp_path)
    text = repr(described)
    for secret in ("sk-one", "sk-two", "g-secret", "m-secret"):
        assert secret not in text


def test_describe_shows_an_unset_secret_as_empty_not_masked() -> None:
    # So an operator can tell "not configured" from "configured".
    assert Settings().describe()["MAILDESK_GOOGLE_CLIENT_SECRET"] == ""


def test_describe_lists_every_setting() -> None:
    described = Settings().describe()
    assert len(described) == len(Settings.__dataclass_fields__)
    assert all(name.startswith("MAILDESK_") for name in described)


def test_the_default_database_is_a_sqlite_file_in_the_data_folder(tmp_path: Path) -> None:
    url = Settings(data_dir=tmp_path).effective_database_url
    assert url == f"sqlite+aiosqlite:///{(tmp_path / 'maildesk.db').resolve()}"
    configured = Settings(database_url="postgresql+asyncpg://u@h/db")
    assert configured.effective_database_url == "postgresql+asyncpg://u@h/db"


# ------------------------------------------------------------------------------ limits, masking
def test_describe_masks_the_password_in_the_database_url() -> None:
    url = "postgresql+asyncpg://maildesk:hunter2@db.internal:5432/maildesk"
    shown = Settings(database_url=url).describe()["MAILDESK_DATABASE_URL"]
    assert "hunter2" not in shown
    assert shown == "postgresql+asyncpg://maildesk:***@db.internal:5432/maildesk"
    no_password = "postgresql+asyncpg://maildesk@db.internal/maildesk"
    assert Settings(database_url=no_password).describe()["MAILDESK_DATABASE_URL"] == no_password


def test_an_unknown_log_level_names_the_variable() -> None:
    assert _error({"MAILDESK_LOG_LEVEL": "LOUD"}).field == "MAILDESK_LOG_LEVEL"


def test_a_nan_duration_names_the_variable() -> None:
    assert _error({"MAILDESK_POLL_INTERVAL": "nan"}).field == "MAILDESK_POLL_INTERVAL"


def test_a_port_out_of_range_names_the_variable() -> None:
    assert _error({"MAILDESK_PORT": "99999"}).field == "MAILDESK_PORT"
