"""Secrets from files (`<SECRET>_FILE`, as Kubernetes mounts them): one rule for every
`SecretStr` setting, found by introspection, with clear errors that never hold the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import SecretStr

from shared.bus import nats_password
from shared.errors import ConfigError
from shared.settings import Settings, load_settings, secret_fields

#: What each secret needs beside it to make a valid configuration.
COMPANIONS = {"nats_password": {"nats_user": "svc"}, "alert_webhook_url": {"alert_webhook_secret": "hook-secret"}}
VALUES = {
    "mongo_url": "mongodb://app:from-the-file@db:27017/",
    "alert_webhook_url": "https://hooks.example/from-the-file",
    "alert_slack_webhook_url": "https://hooks.example/slack-from-the-file",
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("PULSE_"):
            monkeypatch.delenv(key)


def test_every_secret_setting_has_a_file_setting() -> None:
    secrets = secret_fields()
    assert set(secrets) >= {"nats_password", "nats_token", "mongo_url", "polymarket_api_key"}
    assert all(f"{name}_file" in Settings.model_fields for name in secrets)


@pytest.mark.parametrize("secret", secret_fields())
def test_a_secret_is_read_from_its_file_without_the_final_newline(
    secret: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = VALUES.get(secret, f"{secret}-from-the-file")
    path = tmp_path / secret
    path.write_text(value + "\n")
    for name, companion in COMPANIONS.get(secret, {}).items():
        monkeypatch.setenv(f"PULSE_{name.upper()}", companion)
    monkeypatch.setenv(f"PULSE_{secret.upper()}_FILE", str(path))
    settings = load_settings()
    held = getattr(settings, secret)
    assert isinstance(held, SecretStr)
    assert held.get_secret_value() == value
    assert value not in repr(settings)
    assert value not in settings.model_dump_json()


@pytest.mark.parametrize("secret", secret_fields())
def test_a_secret_and_its_file_together_is_a_clear_error(
    secret: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = VALUES.get(secret, "the-value-itself")
    path = tmp_path / secret
    path.write_text(value)
    monkeypatch.setenv(f"PULSE_{secret.upper()}", value)
    monkeypatch.setenv(f"PULSE_{secret.upper()}_FILE", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings(**COMPANIONS.get(secret, {}))
    message = str(info.value)
    assert f"PULSE_{secret.upper()} and PULSE_{secret.upper()}_FILE are both set: set only one" in message
    assert value not in message


@pytest.mark.parametrize(
    ("content", "problem"), [(None, "cannot read {path} (FileNotFoundError)"), ("\n", "{path} is empty")]
)
def test_an_unreadable_or_empty_secret_file_names_the_variable(
    content: str | None, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "token"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(nats_token_file=path)
    assert "PULSE_NATS_TOKEN_FILE: " + problem.format(path=path) in str(info.value)


def test_the_nats_password_file_is_read_again_at_each_login(tmp_path: Path) -> None:
    path = tmp_path / "password"
    path.write_text("first\n")
    password = nats_password(load_settings(nats_user="svc", nats_password_file=path))
    assert callable(password)
    assert password() == "first"
    path.write_text("second\n")
    assert password() == "second"
    path.unlink()  # mid-rotation: the last password read is kept
    assert password() == "second"


def test_a_nats_password_without_file_is_the_value() -> None:
    assert nats_password(load_settings(nats_user="svc", nats_password="plain")) == "plain"


def test_mongo_tls_certificate_and_key_go_together(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="set PULSE_MONGO_TLS_CERT_FILE and PULSE_MONGO_TLS_KEY_FILE together"):
        load_settings(mongo_tls_cert_file=tmp_path / "client.crt")
