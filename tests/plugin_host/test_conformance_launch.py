"""`plugin check` launches the plugin as the host does: SPEC 4 command paths, SPEC 5.3 environment.

The plugin under test is plain Node.js (no SDK) behind `bin/run`; it refuses to
initialize unless its environment follows SPEC 5.3, so a passing run proves the rules.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from plugin_host.conformance import run_checks

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
]

NODE_PLUGIN = r"""#!/usr/bin/env node
// A raw protocol v1 plugin that checks the environment the host gave it (SPEC 5.3).
const fs = require("fs");
const path = require("path");
const readline = require("readline");

function problems() {
  const env = process.env, found = [];
  if (env.HOME !== process.cwd()) found.push(`HOME ${env.HOME} is not the working directory ${process.cwd()}`);
  if (env.TMPDIR !== path.join(env.HOME || "", "tmp") || !fs.existsSync(env.TMPDIR)) found.push(`bad TMPDIR ${env.TMPDIR}`);
  if (!env.PLUGIN_DIR || !fs.existsSync(path.join(env.PLUGIN_DIR, "plugin.json"))) found.push("PLUGIN_DIR has no plugin.json");
  if (env.PYTHONPATH !== undefined) found.push("PYTHONPATH is set for a command runtime");
  if (env.LISTED_VAR !== "listed") found.push("LISTED_VAR is missing");
  if (env.UNLISTED_VAR !== undefined) found.push("UNLISTED_VAR leaked");
  for (const name of Object.keys(env)) if (name.startsWith("CHANNEL_RUNTIME_")) found.push(`${name} leaked`);
  return found;
}

const send = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");
const fail = (id, code, message) => send({ jsonrpc: "2.0", id, error: { code, message } });

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  let msg;
  try { msg = JSON.parse(line); } catch { return fail(null, -32700, "parse error"); }
  if (typeof msg !== "object" || msg === null || Array.isArray(msg) || typeof msg.method !== "string") {
    return fail(msg && msg.id !== undefined ? msg.id : null, -32600, "invalid request");
  }
  if (msg.id === undefined) return;  // notifications
  const params = msg.params;
  if (params !== undefined && (typeof params !== "object" || params === null || Array.isArray(params))) {
    return fail(msg.id, -32602, "params must be an object");
  }
  switch (msg.method) {
    case "initialize": {
      const found = problems();
      if (found.length) { process.stderr.write(found.join("\n") + "\n"); return fail(msg.id, -32603, found.join("; ")); }
      return send({ jsonrpc: "2.0", id: msg.id, result: { protocolVersion: 1,
        plugin: { name: "node-env", version: "1.0.0" }, connectors: [], capabilities: {} } });
    }
    case "health": return send({ jsonrpc: "2.0", id: msg.id, result: { status: "ok", detail: null, connections: null } });
    case "shutdown": return send({ jsonrpc: "2.0", id: msg.id, result: {} });
    default: return fail(msg.id, -32601, "method not found");
  }
});
"""


def node_plugin(tmp_path: Path, *, command: list[str] | None = None, executable: bool = True) -> Path:
    folder = tmp_path / "node_env"
    (folder / "bin").mkdir(parents=True)
    run = folder / "bin" / "run"
    run.write_text(NODE_PLUGIN)
    run.chmod(0o755 if executable else 0o644)
    manifest = {
        "manifestVersion": 1,
        "id": "node_env",
        "name": "Node env",
        "version": "1.0.0",
        "protocolVersion": 1,
        "runtime": {"type": "command", "command": command or ["bin/run"]},
        "connectors": [{"kind": "node_env", "displayName": "Node env", "authType": "credentials"}],
        "env": ["LISTED_VAR"],
        "timeouts": {"handshakeMs": 5000, "healthMs": 2000},
    }
    (folder / "plugin.json").write_text(json.dumps(manifest))
    return folder


def host_env(**extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "LANG": "C.UTF-8",
        "LISTED_VAR": "listed",
        "UNLISTED_VAR": "unlisted",
        "CHANNEL_RUNTIME_ADMIN_TOKEN": "host-secret-token",
        "HOME": "/the/hosts/home",
        **extra,
    }


@pytest.mark.parametrize("program", ["bin/run", "./bin/run"])
async def test_a_node_plugin_behind_bin_run_passes_with_the_host_environment(tmp_path: Path, program: str) -> None:
    report = await run_checks(node_plugin(tmp_path, command=[program]), host_env=host_env())
    assert report.passed, report.render()
    spawn = next(c for c in report.checks if c.name == "spawn")
    assert spawn.reason.endswith("/plugins/node_env/1.0.0/bin/run")


async def test_the_environment_check_of_the_plugin_is_real(tmp_path: Path) -> None:
    """Control: without the listed variable the same plugin refuses to initialize, and the report says why."""
    env = host_env()
    del env["LISTED_VAR"]
    report = await run_checks(node_plugin(tmp_path), host_env=env)
    assert not report.passed
    initialize = next(c for c in report.checks if c.name == "initialize")
    assert initialize.ok is False and "LISTED_VAR is missing" in initialize.reason


async def test_a_runtime_that_cannot_start_fails_the_package_check(tmp_path: Path) -> None:
    report = await run_checks(node_plugin(tmp_path, executable=False), host_env=host_env())
    package = next(c for c in report.checks if c.name == "package")
    assert package.ok is False
    assert package.reason == "runtime_not_executable: runtime.command[0]: 'bin/run' is not executable " + (
        "(chmod +x it before packing; packages keep the executable bit)"
    )
    assert next(c for c in report.checks if c.name == "spawn").ok is None
