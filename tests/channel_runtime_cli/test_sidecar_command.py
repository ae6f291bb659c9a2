"""`channel-runtime sidecar` (SPEC 11): its arguments and its refusal of unusable settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from channel_runtime_cli.main import build_parser, main


def test_the_sidecar_command_and_its_defaults() -> None:
    args = build_parser().parse_args(["sidecar"])
    assert (args.host, args.port, args.home) == ("0.0.0.0", 8787, None)
    args = build_parser().parse_args(["sidecar", "--home", "h", "--host", "127.0.0.1", "--port", "9000"])
    assert (args.host, args.port, args.home) == ("127.0.0.1", 9000, "h")


def test_an_unusable_setting_is_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CONNECTOR_COMMAND_TIMEOUT_SECONDS", "a while")
    assert main(["sidecar", "--home", str(tmp_path / "home")]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: CONNECTOR_COMMAND_TIMEOUT_SECONDS must be a number of seconds, not 'a while'"
    )
