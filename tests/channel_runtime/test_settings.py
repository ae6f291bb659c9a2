"""Settings (SPEC 8): environment, CLI overrides, the admin token generated once with mode 0600."""

from __future__ import annotations

import stat
from pathlib import Path

from channel_runtime.settings import Settings


def test_defaults_and_generated_admin_token(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = Settings.load({})
    home = (tmp_path / ".channel-runtime").resolve()
    assert first.home == home
    assert first.store_url == f"sqlite:///{home / 'state.db'}" and first.store_url.startswith("sqlite:////")
    assert (first.host, first.port, first.handler) == ("127.0.0.1", 8080, "echo")
    assert first.bridge_token is None and first.public_url is None and first.metrics_open is False
    assert first.admin_token_generated and len(first.admin_token) >= 40
    token_file = home / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert token_file.read_text().strip() == first.admin_token
    second = Settings.load({})
    assert second.admin_token == first.admin_token and not second.admin_token_generated
    assert first.admin_url == "http://127.0.0.1:8080/admin"
    assert first.admin_token not in repr(first)


def test_environment_and_flags(tmp_path: Path) -> None:
    env = {
        "CHANNEL_RUNTIME_HOME": str(tmp_path / "envhome"),
        "CHANNEL_RUNTIME_STORE": "memory://",
        "CHANNEL_RUNTIME_ADMIN_TOKEN": "from-env-token",
        "CHANNEL_RUNTIME_BRIDGE_TOKEN": "bridge-token",
        "CHANNEL_RUNTIME_PUBLIC_URL": "https://example.org/",
        "CHANNEL_RUNTIME_METRICS_OPEN": "1",
    }
    s = Settings.load(env)
    assert s.home == (tmp_path / "envhome").resolve()
    assert s.store_url == "memory://"
    assert s.admin_token == "from-env-token" and not s.admin_token_generated
    assert not (s.home / "admin-token").exists()
    assert s.bridge_token == "bridge-token" and s.metrics_open
    assert s.admin_url == "https://example.org/admin"
    assert sorted(s.secrets()) == ["bridge-token", "from-env-token"]

    flags = Settings.load(
        env, home=tmp_path / "flaghome", store="sqlite:///x.db", host="0.0.0.0", port=9000, handler="pkg.mod:fn"
    )
    assert flags.home == (tmp_path / "flaghome").resolve()
    assert (flags.store_url, flags.host, flags.port, flags.handler) == ("sqlite:///x.db", "0.0.0.0", 9000, "pkg.mod:fn")


def test_no_token_file_when_not_asked(tmp_path: Path) -> None:
    s = Settings.load({}, home=tmp_path / "h", create_admin_token=False)
    assert s.admin_token == "" and not (tmp_path / "h" / "admin-token").exists()


def test_secret_key_is_left_to_crypto(tmp_path: Path) -> None:
    s = Settings.load({"CHANNEL_RUNTIME_ADMIN_TOKEN": "t"}, home=tmp_path)
    key = s.secret_key()
    assert key and s.secret_key() == key
    assert stat.S_IMODE((tmp_path / "secret-key").stat().st_mode) == 0o600


def test_defer_ttl_from_the_environment(tmp_path: Path) -> None:
    import pytest

    base = {"CHANNEL_RUNTIME_ADMIN_TOKEN": "t"}
    assert Settings.load(base, home=tmp_path).defer_ttl_seconds == 86_400.0  # SPEC 6.4 default
    assert Settings.load({**base, "CHANNEL_RUNTIME_DEFER_TTL_SECONDS": "3600"}, home=tmp_path).defer_ttl_seconds == 3600
    for bad in ("0", "-5", "soon", "inf", "nan"):
        with pytest.raises(ValueError, match="CHANNEL_RUNTIME_DEFER_TTL_SECONDS"):
            Settings.load({**base, "CHANNEL_RUNTIME_DEFER_TTL_SECONDS": bad}, home=tmp_path)
