"""`limits.outbound` (SPEC 4): the Weixin manifest's budget, and a plain Node.js plugin declaring one.

The Node plugin (`node_budget/`, no SDK) passes `plugin check`, whose every
message is validated against `schemas/`; a budget with a misspelt field is
refused at validation with the field named.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from plugin_host.manifest import load_manifest
from tests.support import REPO, serve_command
from tests.weixin_vendorcli.stack import PLUGIN_DIR

NODE_PLUGIN = Path(__file__).parent / "node_budget"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*serve_command(), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_the_weixin_manifest_declares_the_platform_budget() -> None:
    manifest = json.loads((PLUGIN_DIR / "plugin.json").read_text())
    load_manifest((PLUGIN_DIR / "plugin.json").read_bytes())  # valid against the schema
    assert manifest["limits"]["outbound"] == {
        "perPeerPerMinute": 6,
        "minIntervalMs": 1000,
        "replyWindowSeconds": 86400,
        "maxRepliesPerInbound": 10,
    }


def test_a_node_plugin_with_a_budget_passes_plugin_check() -> None:
    result = cli("plugin", "check", str(NODE_PLUGIN))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: the plugin conforms to protocol v1" in result.stdout


def test_a_misspelt_budget_field_is_refused(tmp_path: Path) -> None:
    broken = tmp_path / "node_budget"
    shutil.copytree(NODE_PLUGIN, broken)
    manifest = json.loads((broken / "plugin.json").read_text())
    manifest["limits"]["outbound"] = {"perPeerPerMinut": 6}
    (broken / "plugin.json").write_text(json.dumps(manifest))
    result = cli("plugin", "validate", str(broken))
    assert result.returncode != 0
    assert "perPeerPerMinut" in result.stdout + result.stderr
