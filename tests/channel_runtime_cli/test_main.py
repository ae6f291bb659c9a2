"""The `channel-runtime plugin ...` commands (SPEC 8), run in-process through `main(argv)`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from channel_runtime_cli.main import build_parser, main
from plugin_host.conformance import CHECKS


def test_plugin_new_validate_pack_check_install_list(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    home = tmp_path / "home"
    assert main(["plugin", "new", "acme_chat", "--kind", "acme"]) == 0
    folder = tmp_path / "acme_chat"
    manifest = json.loads((folder / "plugin.json").read_text())
    assert manifest["id"] == "acme_chat" and manifest["connectors"][0]["kind"] == "acme"
    assert "from plugin_host.sdk import" in (folder / "acme_chat_plugin" / "__main__.py").read_text()

    assert main(["plugin", "validate", str(folder)]) == 0
    assert "OK" in capsys.readouterr().out

    assert main(["plugin", "pack", str(folder), "-o", str(tmp_path / "acme.zip")]) == 0
    assert (tmp_path / "acme.zip").is_file()
    assert main(["plugin", "pack", str(folder)]) == 0
    assert (tmp_path / "acme_chat-0.1.0.zip").is_file()
    assert main(["plugin", "validate", str(tmp_path / "acme.zip")]) == 0

    capsys.readouterr()
    assert main(["plugin", "check", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("PASS") == len(CHECKS)
    assert main(["plugin", "check", str(tmp_path / "acme.zip")]) == 0

    assert main(["plugin", "list", "--home", str(home)]) == 0
    assert "no plugins installed" in capsys.readouterr().out
    assert main(["plugin", "install", str(tmp_path / "acme.zip"), "--home", str(home)]) == 0
    assert "installed: acme_chat 0.1.0" in capsys.readouterr().out
    assert main(["plugin", "install", str(tmp_path / "acme.zip"), "--home", str(home)]) == 0
    assert "already installed" in capsys.readouterr().out
    assert main(["plugin", "list", "--home", str(home)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "ACTIVE", "ENABLED", "VERSIONS"]
    assert lines[1].split() == ["acme_chat", "0.1.0", "no", "0.1.0"]
    assert not (home / "admin-token").exists()  # plugin commands never create the admin token

    # the scaffold's own tests pass with the SDK harness
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_and_validate_fail_clearly_on_a_broken_plugin(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["plugin", "new", "broken_one"]) == 0
    main_py = tmp_path / "broken_one" / "broken_one_plugin" / "__main__.py"
    main_py.write_text("import sys\nprint('hello, I am not JSON-RPC')\nsys.exit(1)\n")
    capsys.readouterr()
    assert main(["plugin", "check", str(tmp_path / "broken_one")]) == 1
    out = capsys.readouterr().out
    assert "FAIL  initialize: no answer" in out and "FAILED" in out

    (tmp_path / "broken_one" / "plugin.json").write_text('{"manifestVersion": 1, "id": "Broken One"}')
    assert main(["plugin", "validate", str(tmp_path / "broken_one")]) == 1
    out = capsys.readouterr().out
    assert out.startswith("INVALID") and "manifest_schema" in out
    assert main(["plugin", "pack", str(tmp_path / "broken_one")]) == 1
    assert main(["plugin", "validate", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_install_refuses_a_malicious_zip(tmp_path: Path, capsys) -> None:
    from tests.support import zips

    bad = tmp_path / "bad.zip"
    bad.write_bytes(zips.with_extra(zips.Entry("../escape.py", b"x")))
    assert main(["plugin", "install", str(bad), "--home", str(tmp_path / "home")]) == 1
    assert "unsafe_path" in capsys.readouterr().out


def test_new_refuses_bad_names_and_existing_folders(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["plugin", "new", "Bad-Name"]) == 1
    assert "plugin id" in capsys.readouterr().err
    assert main(["plugin", "new", "twice"]) == 0
    assert main(["plugin", "new", "twice"]) == 1
    assert "already exists" in capsys.readouterr().err


def test_serve_arguments() -> None:
    args = build_parser().parse_args(["serve"])
    assert (args.home, args.host, args.port, args.store, args.handler) == (None, "127.0.0.1", 8080, None, None)
    args = build_parser().parse_args(
        ["serve", "--home", "h", "--host", "0.0.0.0", "--port", "9000", "--store", "memory://", "--handler", "pkg:fn"]
    )
    assert (args.home, args.host, args.port, args.store, args.handler) == ("h", "0.0.0.0", 9000, "memory://", "pkg:fn")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "99999"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["plugin"])


def test_handler_loading() -> None:
    from channel_runtime.runtime import echo_handler
    from channel_runtime_cli.compose import CliError, load_handler

    assert load_handler("echo") is echo_handler
    assert load_handler("channel_runtime.runtime:echo_handler") is echo_handler
    for bad in ("nomodule_xyz:fn", "channel_runtime.runtime:missing", "justtext"):
        with pytest.raises(CliError):
            load_handler(bad)
