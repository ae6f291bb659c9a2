"""`channel-runtime serve` on a fresh home installs, enables and runs the Feishu plugin."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, ServeProcess, wait_for

pytestmark = pytest.mark.slow

VERSION = json.loads((REPO / "plugins" / "feishu_vendorcli" / "plugin.json").read_text())["version"]


def test_first_start_installs_and_runs_the_feishu_plugin(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ServeProcess(home, cwd=tmp_path)
    try:
        server.wait_ready()
        auth = {"Authorization": f"Bearer {(home / 'admin-token').read_text().strip()}"}

        def running() -> dict | None:
            plugin = httpx.get(server.base + "/api/plugins/feishu_vendorcli", headers=auth, timeout=10).json()
            return plugin if plugin.get("state") == "running" else None

        plugin = wait_for(running, 60, "the feishu plugin to run")
        assert plugin["enabled"] and plugin["activeVersion"] == VERSION
        connectors = httpx.get(server.base + "/api/connectors", headers=auth, timeout=10).json()
        feishu = next(c for c in connectors if c["kind"] == "feishu")
        assert feishu["available"] and feishu["authType"] == "plugin_install"
    finally:
        code, _, err = server.stop()
    assert code == 0, err
