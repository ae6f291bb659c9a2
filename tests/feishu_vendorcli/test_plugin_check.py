"""The bundled plugin passes the protocol conformance run and the package rules, as shipped."""

from __future__ import annotations

import subprocess

from tests.support import REPO, serve_command

PLUGIN = REPO / "plugins" / "feishu_vendorcli"


def test_plugin_check_passes() -> None:
    result = subprocess.run(
        [*serve_command(), "plugin", "check", str(PLUGIN)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: the plugin conforms" in result.stdout


def test_plugin_validate_passes() -> None:
    result = subprocess.run(
        [*serve_command(), "plugin", "validate", str(PLUGIN)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "connector feishu" in result.stdout
