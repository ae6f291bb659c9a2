"""PluginHarness.subprocess launches a plugin as the host does (plugin_host.launch): real child processes."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from plugin_host.launch import LaunchError
from plugin_host.sdk.testing import PluginHarness
from tests.fault_plugins import FAULT_DIR, proc_alive

pytestmark = pytest.mark.anyio

ENV_PLUGIN = textwrap.dedent(
    """
    import os
    import subprocess

    from plugin_host.sdk import Plugin

    plugin = Plugin(name="envy", version="1.0.0")

    @plugin.method("env")
    async def env(ctx, params):
        return {"env": dict(os.environ), "cwd": os.getcwd()}

    @plugin.method("spawn_background")
    async def spawn_background(ctx, params):
        # inherits our stdout/stderr: it holds the pipes after we exit
        child = subprocess.Popen(["sleep", "300"])
        return {"pid": child.pid}

    if __name__ == "__main__":
        plugin.run()
    """
)


def manifest(**fields: object) -> str:
    document = {
        "manifestVersion": 1,
        "id": "envy",
        "name": "Envy",
        "version": "1.0.0",
        "protocolVersion": 1,
        "runtime": {"type": "python", "module": "envy"},
        "connectors": [{"kind": "envy", "displayName": "Envy", "authType": "credentials"}],
        "env": ["LISTED_VAR", "CHANNEL_RUNTIME_ADMIN_TOKEN", "HOME"],
        **fields,
    }
    return json.dumps(document)


@pytest.fixture
def plugin_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "envy"
    (folder / "envy").mkdir(parents=True)
    (folder / "envy" / "__main__.py").write_text(ENV_PLUGIN)
    (folder / "plugin.json").write_text(manifest())
    return folder


@pytest.fixture
def host_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHANNEL_RUNTIME_ADMIN_TOKEN", "host-secret-token")
    monkeypatch.setenv("CHANNEL_RUNTIME_SECRET_KEY", "k" * 32)
    monkeypatch.setenv("LISTED_VAR", "listed")
    monkeypatch.setenv("UNLISTED_VAR", "unlisted")
    monkeypatch.setenv("HOME", "/the/runners/home")
    monkeypatch.setenv("TMPDIR", "/the/runners/tmp")


@pytest.mark.usefixtures("host_environ")
async def test_a_plugin_folder_gets_the_environment_rules_of_the_host(plugin_folder: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with PluginHarness.subprocess(plugin_folder, state_dir=state, env={"MINE": "1"}) as h:
        answer = await h.call("env")
    env, cwd = answer["env"], answer["cwd"]
    assert env["HOME"] == str(state) and cwd == str(state)
    assert env["TMPDIR"] == str(state / "tmp") and (state / "tmp").is_dir()
    assert env["PLUGIN_DIR"] == str(plugin_folder)
    assert env["PYTHONPATH"].split(os.pathsep)[:2] == [str(plugin_folder), str(plugin_folder / "lib")]
    assert env["LISTED_VAR"] == "listed" and env["MINE"] == "1"
    assert "UNLISTED_VAR" not in env
    assert not any(name.startswith("CHANNEL_RUNTIME_") for name in env)
    passthrough = {name for name in ("PATH", "LANG", "LC_ALL", "TZ") if name in os.environ}
    # LC_CTYPE: Python's own C-locale coercion in the child, when the runner has no LANG
    fixed = {"HOME", "TMPDIR", "PLUGIN_DIR", "PYTHONPATH", "LISTED_VAR", "MINE"}
    assert set(env) - {"LC_CTYPE"} == passthrough | fixed


@pytest.mark.usefixtures("host_environ")
async def test_a_python_file_and_an_argv_get_home_and_tmpdir_too(plugin_folder: Path, tmp_path: Path) -> None:
    script = plugin_folder / "envy" / "__main__.py"
    async with PluginHarness.subprocess(script, state_dir=tmp_path / "a") as h:
        env = (await h.call("env"))["env"]
    assert env["HOME"] == str(tmp_path / "a") and env["TMPDIR"] == str(tmp_path / "a" / "tmp")
    assert env["PLUGIN_DIR"] == str(script.parent)
    assert "LISTED_VAR" not in env and not any(name.startswith("CHANNEL_RUNTIME_") for name in env)
    async with PluginHarness.subprocess([sys.executable, str(script)], state_dir=tmp_path / "b") as h:
        env = (await h.call("env"))["env"]
    assert env["HOME"] == str(tmp_path / "b") and "PLUGIN_DIR" not in env
    assert not any(name.startswith("CHANNEL_RUNTIME_") for name in env)


async def test_a_command_runtime_starts_through_bin_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLUGIN_PY", sys.executable)
    folder = tmp_path / "raw"
    (folder / "bin").mkdir(parents=True)
    shutil.copy(FAULT_DIR / "well_behaved.py", folder / "well_behaved.py")
    shutil.copy(FAULT_DIR / "_wire.py", folder / "_wire.py")
    run = folder / "bin" / "run"
    run.write_text('#!/bin/sh\nexec "$PLUGIN_PY" "$PLUGIN_DIR/well_behaved.py"\n')
    run.chmod(0o755)
    (folder / "plugin.json").write_text(
        manifest(id="raw", runtime={"type": "command", "command": ["bin/run"]}, env=["PLUGIN_PY"])
    )
    async with PluginHarness.subprocess(folder, state_dir=tmp_path / "state") as h:
        assert await h.call("health") == {"status": "ok"}
        env = await h.call("env")
    assert env["PLUGIN_DIR"] == str(folder) and "PYTHONPATH" not in env  # as the host: python runtimes only

    run.chmod(0o644)
    with pytest.raises(LaunchError, match=r"runtime.command\[0\]: 'bin/run' is not executable"):
        async with PluginHarness.subprocess(folder, state_dir=tmp_path / "state"):
            pass


async def test_leaving_the_harness_stops_the_whole_group(plugin_folder: Path, tmp_path: Path) -> None:
    """A background child holding the plugin's pipes neither hangs the harness nor outlives it."""
    async with PluginHarness.subprocess(plugin_folder, state_dir=tmp_path / "state") as h:
        background = (await h.call("spawn_background"))["pid"]
        assert proc_alive(background)
        plugin_pid = h.process.pid if h.process else None
    assert plugin_pid is not None and h.process is not None and h.process.returncode == 0
    with anyio.fail_after(20):  # a hang guard, not a measurement
        while proc_alive(background):
            await anyio.sleep(0.02)
