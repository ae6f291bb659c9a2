"""`channel-runtime serve` on a fresh home installs and enables the Weixin plugin, like echo."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, ServeProcess

pytestmark = pytest.mark.slow

VERSION = json.loads((REPO / "plugins" / "weixin_vendorcli" / "plugin.json").read_text())["version"]


def test_serve_on_a_fresh_home_runs_the_weixin_plugin(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ServeProcess(home, cwd=tmp_path)
    try:
        server.wait_ready()
        auth = {"Authorization": f"Bearer {(home / 'admin-token').read_text().strip()}"}
        plugin = httpx.get(server.base + "/api/plugins/weixin_vendorcli", headers=auth, timeout=10).json()
        assert plugin["enabled"] and plugin["activeVersion"] == VERSION
        connectors = httpx.get(server.base + "/api/connectors", headers=auth, timeout=10).json()
        weixin = next(c for c in connectors if c["kind"] == "weixin")
        assert weixin["authType"] == "qr" and weixin["available"]
        assert {"receive_text", "send_text"} <= set(weixin["capabilities"])
        plugin = httpx.get(server.base + "/api/plugins/weixin_vendorcli", headers=auth, timeout=10).json()
        assert plugin["state"] == "running"
    finally:
        code, _, err = server.stop()
    assert code == 0, err
