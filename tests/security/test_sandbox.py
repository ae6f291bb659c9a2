"""Least privilege for plugins (issue 14, finding 2; SPEC 5.3 "Sandboxed").

A probe plugin (tests/plugins/sandbox_probe) tries every escape of docs/SECURITY.md
from inside a real host and reports what it reached: nothing may be reached.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from plugin_host.sandbox import ResourceLimits, Sandbox
from tests.fault_plugins import default_host_env
from tests.support import REPO, ServeProcess, wait_for
from tests.support.admin import plugin_zip

PROBE_DIR = REPO / "tests" / "plugins" / "sandbox_probe"
ADMIN = "adm1n-" + "s" * 40
MiB = 2**20

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed (scripts/install)"),
]


def probe_zip(tmp_path: Path, plugin_id: str = "sandbox_probe", **manifest: Any) -> Path:
    src = tmp_path / f"src-{plugin_id}-{len(list(tmp_path.iterdir()))}"
    shutil.copytree(PROBE_DIR, src, ignore=shutil.ignore_patterns("__pycache__"))
    document = json.loads((src / "plugin.json").read_text())
    document.update(id=plugin_id, **manifest)
    document["connectors"][0]["kind"] = plugin_id
    (src / "plugin.json").write_text(json.dumps(document))
    return pack_directory(src, tmp_path / f"{src.name}.zip")


def _report(lines: list[str]) -> dict[str, Any] | None:
    for line in reversed(lines):
        if line.startswith("PROBE-REPORT "):
            return json.loads(line.removeprefix("PROBE-REPORT "))
    return None


@pytest.mark.slow
def test_the_probe_reaches_nothing_from_inside_a_real_serve(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ServeProcess(home, cwd=tmp_path, env={"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        server.wait_ready()
        installed = httpx.post(
            server.base + "/api/plugins",
            content=probe_zip(tmp_path).read_bytes(),
            headers={**auth, "Content-Type": "application/zip"},
            timeout=30,
        )
        assert installed.status_code == 201, installed.text
        # what the admin sees before enabling it
        view = httpx.get(server.base + "/api/plugins/sandbox_probe", headers=auth, timeout=10).json()
        assert view["enabled"] is False
        assert view["permissions"] == {"network": False, "readPaths": [], "env": []}
        assert view["sandbox"]["isolated"] is True and view["sandbox"]["warning"] is None
        config = {"hostPid": server.proc.pid, "hostPort": server.port, "otherPlugin": "echo"}
        put = httpx.put(server.base + "/api/plugins/sandbox_probe/config", json=config, headers=auth, timeout=10)
        assert put.status_code == 200, put.text
        assert (
            httpx.post(server.base + "/api/plugins/sandbox_probe/enable", headers=auth, timeout=30).status_code == 200
        )

        def report() -> dict[str, Any] | None:
            logs = httpx.get(server.base + "/api/plugins/sandbox_probe/logs", headers=auth, timeout=10).json()
            return _report(logs)

        found = wait_for(report, 30, "the probe's report")
        assert found["reached"] == [], found
        assert len(found["tried"]) >= 20
        assert found["ownDataWritable"] is True  # its own data folder is the one writable place
        assert found["uid"] != 0
        limits = found["limits"]
        assert limits["memoryBytes"] > 0 and limits["openFiles"] > 0 and limits["processes"] > 0
        assert limits["memoryBytes"] != -1  # RLIM_INFINITY reads as -1
        # nothing the probe tried to plant exists on the host
        assert not list(home.rglob("planted*"))
        assert (home / "plugin-data" / "sandbox_probe" / "mine.txt").read_bytes() == b"escaped"
        ready = httpx.get(server.base + "/readyz", timeout=10).json()
        assert ready["sandbox"]["mechanism"] == "bubblewrap" and ready["sandbox"]["isolated"] is True
    finally:
        server.stop()


def test_the_probe_reaches_what_an_unsandboxed_plugin_reaches(tmp_path: Path) -> None:
    """The probe is honest: with the sandbox off it reaches the host's secrets."""
    import anyio

    async def run() -> dict[str, Any]:
        home = tmp_path / "home"
        (home).mkdir()
        (home / "secret-key").write_text("k" * 44)
        host = PluginHost(home, host_env=default_host_env(), sandbox=Sandbox(hidden=[home], mode="off"))
        async with host:
            await host.install(probe_zip(tmp_path))
            await host.enable("sandbox_probe")
            supervisor = host.supervisor("sandbox_probe")
            assert supervisor is not None
            return await supervisor.call("probe", {})

    report = anyio.run(run)
    assert {"read_state_db", "read_secret_key", "write_own_code", "see_other_processes"} <= set(report["reached"])


async def test_network_false_is_an_empty_network_namespace(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    home = tmp_path / "home"
    try:
        async with PluginHost(home, host_env=default_host_env()) as host:
            await host.install(probe_zip(tmp_path, "probe_offline"))
            await host.install(probe_zip(tmp_path, "probe_online", permissions={"network": True}))
            for plugin_id in ("probe_offline", "probe_online"):
                await host.set_config(plugin_id, {"hostPort": port, "hostPid": os.getpid()})
                await host.enable(plugin_id)
            offline = await host.supervisor("probe_offline").call("probe", {})  # type: ignore[union-attr]
            online = await host.supervisor("probe_online").call("probe", {})  # type: ignore[union-attr]
    finally:
        listener.close()
    assert "network_to_host" not in offline["reached"]
    assert online["reached"] == ["network_to_host"]  # the only thing a plugin with network may reach


async def test_process_file_and_memory_limits_hold(tmp_path: Path) -> None:
    home = tmp_path / "home"
    limits = ResourceLimits(memory_bytes=512 * MiB, processes=24, open_files=64)
    sandbox = Sandbox(hidden=[home], limits=limits, search_path=default_host_env()["PATH"])
    async with PluginHost(home, host_env=default_host_env(), sandbox=sandbox) as host:
        await host.install(probe_zip(tmp_path))
        await host.enable("sandbox_probe")
        supervisor = host.supervisor("sandbox_probe")
        assert supervisor is not None
        assert sandbox.status.dedicated_uid  # the host runs as root here: the process limit is the plugin's own
        result = await supervisor.call(
            "exhaust", {"processes": 100, "files": 200, "memoryBytes": 1024 * MiB}, timeout=60
        )
        assert supervisor.state == "running"
    assert 0 < result["processesStarted"] < 24
    assert 0 < result["filesOpened"] < 64
    assert result["memoryAllocated"] is False


@pytest.mark.slow
def test_without_bubblewrap_the_host_says_so_loudly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    server = ServeProcess(home, cwd=tmp_path, env={"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN, "PATH": str(empty_bin)})
    auth = {"Authorization": f"Bearer {ADMIN}"}
    try:
        server.wait_ready()
        ready = httpx.get(server.base + "/readyz", timeout=10).json()
        assert ready["sandbox"]["isolated"] is False
        assert "WITHOUT a sandbox" in ready["sandbox"]["warning"]
        echo = wait_for(
            lambda: (
                (p := httpx.get(server.base + "/api/plugins/echo", headers=auth, timeout=10).json())["state"]
                == "running"
                and p
            ),
            30,
            "echo to run",
        )
        assert echo["sandbox"]["isolated"] is False and "bubblewrap" in echo["sandbox"]["warning"]
        listed = httpx.get(server.base + "/api/plugins", headers=auth, timeout=10).json()
        assert all(p["sandbox"]["warning"] for p in listed)
    finally:
        _, _, err = server.stop()
    assert "SANDBOX: bubblewrap (bwrap) is not installed" in err


async def test_permissions_are_shown_before_enabling_and_when_an_upgrade_changes_them(tmp_path: Path) -> None:
    from tests.support.admin import running

    async with running(tmp_path / "home") as (_, http):
        first = plugin_zip(tmp_path, "1.0.0", plugin_id="perm_demo")
        assert (
            await http.post("/api/plugins", content=first, headers={"Content-Type": "application/zip"})
        ).status_code == 201
        second = plugin_zip(
            tmp_path, "2.0.0", plugin_id="perm_demo", permissions={"network": False, "readPaths": ["/opt/vendor"]}
        )
        assert (
            await http.post("/api/plugins", content=second, headers={"Content-Type": "application/zip"})
        ).status_code == 201
        listed = {p["id"]: p for p in (await http.get("/api/plugins")).json()}
        view = (await http.get("/api/plugins/perm_demo")).json()
    for shown in (listed["perm_demo"], view):
        assert shown["activeVersion"] == "1.0.0" and shown["enabled"] is False
        assert shown["permissions"] == {"network": True, "readPaths": [], "env": []}
        versions = {v["version"]: v for v in shown["versions"]}
        assert versions["1.0.0"]["permissionsChanged"] is False
        assert versions["2.0.0"]["permissions"] == {"network": False, "readPaths": ["/opt/vendor"], "env": []}
        assert versions["2.0.0"]["permissionsChanged"] is True


@pytest.mark.slow
def test_the_homes_state_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ServeProcess(home, cwd=tmp_path)
    try:
        server.wait_ready()
    finally:
        server.stop()
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("state.db", "secret-key", "admin-token"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    for companion in home.glob("state.db-*"):
        assert stat.S_IMODE(companion.stat().st_mode) == 0o600, companion.name
    assert os.stat(home / "state.db").st_uid == os.geteuid()
