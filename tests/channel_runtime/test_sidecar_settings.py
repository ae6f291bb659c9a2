"""Sidecar mode's settings (SPEC 11): the seed's environment names, checked values, no secret in repr."""

from __future__ import annotations

from pathlib import Path

import pytest

from channel_runtime.settings import SettingsError, SidecarSettings


def test_the_seed_environment_names(tmp_path: Path) -> None:
    env = {
        "CONNECTOR_HOME": str(tmp_path / "connector-home"),
        "CONNECTOR_API_TOKEN": "api-token-0123456789",
        "BEAVER_BRIDGE_BASE_URL": "http://app.internal:8000/",
        "BEAVER_BRIDGE_TOKEN": "bridge-token-0123456789",
        "CONNECTOR_COMMAND_TIMEOUT_SECONDS": "45",
        "CHANNEL_RUNTIME_BRIDGE_TOKEN": "not-a-sidecar-thing",
    }
    settings = SidecarSettings.load(env)
    assert settings.home == (tmp_path / "connector-home").resolve()
    assert settings.service.store_url == f"sqlite:///{settings.home / 'state.db'}"
    assert (settings.service.host, settings.service.port) == ("0.0.0.0", 8787)
    assert settings.connector_token == "api-token-0123456789"
    assert settings.bridge_base_url == "http://app.internal:8000"
    assert settings.bridge_token == "bridge-token-0123456789"
    assert settings.command_timeout == 45.0
    assert settings.service.bridge_token is None  # a sidecar has no bridge of its own
    assert (settings.home / "admin-token").is_file()  # generated, as for serve
    for secret in ("api-token-0123456789", "bridge-token-0123456789", settings.service.admin_token):
        assert secret in settings.secrets() and secret not in repr(settings)


def test_flags_win_and_unset_values_are_none(tmp_path: Path) -> None:
    settings = SidecarSettings.load({"CONNECTOR_HOME": "/nowhere"}, home=tmp_path / "h", host="127.0.0.1", port=9)
    assert settings.home == (tmp_path / "h").resolve()
    assert (settings.service.host, settings.service.port) == ("127.0.0.1", 9)
    assert settings.connector_token is None and settings.bridge_base_url is None and settings.bridge_token is None
    assert settings.command_timeout is None and settings.forward_retry_cap == 30.0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONNECTOR_COMMAND_TIMEOUT_SECONDS", "soon"),
        ("CONNECTOR_COMMAND_TIMEOUT_SECONDS", "-1"),
        ("CONNECTOR_COMMAND_TIMEOUT_SECONDS", "inf"),
        ("CHANNEL_RUNTIME_FORWARD_RETRY_CAP_SECONDS", "0"),
        ("BEAVER_BRIDGE_BASE_URL", "app.internal:8000"),
    ],
)
def test_a_value_that_cannot_be_used_is_refused_by_name(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        SidecarSettings.load({name: value}, home=tmp_path)
