"""Settings: environment over YAML over defaults, validated with errors naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from nurture.errors import ConfigError
from nurture.settings import load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Given a working directory without nurture.yaml and no NURTURE_* variables
    monkeypatch.chdir(tmp_path)
    import os

    for name in list(os.environ):
        if name.startswith("NURTURE_"):
            monkeypatch.delenv(name)


def test_defaults_are_the_embedded_sqlite_file() -> None:
    s = load_settings()
    assert s.database_url == "sqlite:///nurture.db" and s.is_sqlite and s.port == 8000


def test_yaml_file_then_environment_override(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given a nurture.yaml and one environment variable
    (tmp_path / "nurture.yaml").write_text("port: 9001\nhost: 0.0.0.0\nlog_level: debug\n")
    monkeypatch.setenv("NURTURE_PORT", "9002")
    # When settings are loaded
    s = load_settings()
    # Then the environment wins over the file, the file over the defaults
    assert (s.port, s.host, s.log_level) == (9002, "0.0.0.0", "debug")


def test_explicit_config_file_must_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NURTURE_CONFIG", "/nowhere/nurture.yaml")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.path == "NURTURE_CONFIG" and "does not exist" in err.value.message


@pytest.mark.parametrize(
    ("env", "value", "field", "says"),
    [
        ("NURTURE_PORT", "eighty", "port", "valid integer"),
        ("NURTURE_PORT", "70000", "port", "less than or equal to 65535"),
        ("NURTURE_DATABASE_URL", "mysql://x/y", "database_url", "not supported"),
        ("NURTURE_DATABASE_URL", "::nonsense::", "database_url", "not a database URL"),
        ("NURTURE_SQLITE_SYNCHRONOUS", "OFF", "sqlite_synchronous", "FULL"),
        ("NURTURE_DEFAULT_PHONE_REGION", "Germany", "default_phone_region", "two-letter"),
    ],
)
def test_bad_values_name_the_setting_and_why(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, field: str, says: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.path == field
    assert env in err.value.message and says in err.value.message


def test_unknown_yaml_key_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "nurture.yaml").write_text("prot: 8000\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert err.value.path == "prot"
    assert "unknown setting 'prot'" in err.value.message and "port" in err.value.message


def test_broken_yaml_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "nurture.yaml").write_text("port: [8000\n")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "cannot read settings" in err.value.message


def test_masked_hides_passwords_and_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NURTURE_DATABASE_URL", "postgresql://app:hunter2@db.internal/nurture")
    monkeypatch.setenv("NURTURE_SECRET_KEY", "very-secret")
    masked = load_settings().masked()
    assert "hunter2" not in str(masked) and "very-secret" not in str(masked)
    assert masked["database_url"] == "postgresql://app:***@db.internal/nurture"
    assert masked["secret_key"] == "***"
