"""PluginHost and its registry, below the admin API."""

from __future__ import annotations

from pathlib import Path

import pytest

from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from plugin_host.registry import PluginRegistry, _semver_key
from tests.fault_plugins import raw_plugin_zip
from tests.support import REPO

pytestmark = pytest.mark.anyio


async def test_start_sweeps_leftovers_of_an_interrupted_install(tmp_path: Path) -> None:
    plugins = tmp_path / "plugins"
    (plugins / ".tmp-install-1" / "half").mkdir(parents=True)
    (plugins / ".tmp-upload-2").write_bytes(b"partial zip")
    async with PluginHost(tmp_path) as host:
        assert sorted(p.name for p in plugins.iterdir()) == []
        outcome = await host.install(pack_directory(REPO / "plugins" / "echo", tmp_path / "echo.zip"))
        assert outcome.created and (plugins / "echo" / "1.0.0" / "plugin.json").is_file()


def test_versions_sort_by_semver_with_prereleases_first() -> None:
    versions = ["1.10.0", "1.2.0", "1.2.0-beta.10", "1.2.0-beta.2", "1.2.0-alpha", "0.9.9", "2.0.0-rc.1"]
    assert sorted(versions, key=_semver_key) == [
        "0.9.9",
        "1.2.0-alpha",
        "1.2.0-beta.2",
        "1.2.0-beta.10",
        "1.2.0",
        "1.10.0",
        "2.0.0-rc.1",
    ]


async def test_registry_survives_reopening(tmp_path: Path) -> None:
    async with PluginHost(tmp_path) as host:
        await host.install(pack_directory(REPO / "plugins" / "echo", tmp_path / "echo.zip"))
        await host.set_config("echo", {})
    registry = PluginRegistry(tmp_path / "state.db")
    await registry.open()
    try:
        [record] = registry.list()
        assert record.id == "echo" and record.active_version == "1.0.0" and not record.enabled
        assert [v.version for v in registry.all_versions()["echo"]] == ["1.0.0"]
        assert registry.version("echo", "1.0.0").manifest.connectors[0].kind == "echo"
    finally:
        await registry.aclose()


async def test_credentials_and_secret_config_values_are_masked_in_plugin_logs(tmp_path: Path) -> None:
    from plugin_host.protocol import ConnectionInfo
    from plugin_host.redact import MASK
    from plugin_host.services import HostServices
    from tests.fault_plugins import default_host_env
    from tests.support import eventually

    class Services(HostServices):
        async def resumable_connections(self, plugin_id: str) -> list[ConnectionInfo]:
            return [
                ConnectionInfo(
                    connection_id="c1",
                    channel_id="ch1",
                    kind="raw",
                    account_id="acc",
                    display_name="Raw",
                    options={},
                    credentials={
                        "nested": {"value": "swordfish-77"},
                        "list": ["opensesame-42"],
                        "domain": "feishu",  # a plain word: masking it would mask every answer naming it
                    },
                )
            ]

    async with PluginHost(tmp_path / "home", host_env=default_host_env(), services=Services()) as host:
        await host.install(raw_plugin_zip(tmp_path, "raw"))
        await host.set_config("raw", {"appSecret": "hunter-two-x", "region": "eu-west"})
        await host.enable("raw")
        await host.supervisor("raw").call(
            "stderr", {"text": "saw swordfish-77 opensesame-42 hunter-two-x eu-west on feishu"}
        )

        def masked() -> bool:
            return any("saw" in line for line in host.logs("raw"))

        await eventually(masked)
        [line] = [line for line in host.logs("raw") if "saw" in line]
        assert "swordfish-77" not in line and "opensesame-42" not in line and "hunter-two-x" not in line
        assert line.count(MASK) == 3 and "eu-west" in line and "on feishu" in line
        # a new secret config value is known at once, before the restart it causes
        await host.set_config("raw", {"appSecret": "second-pass-y"})
        await host.supervisor("raw").call("stderr", {"text": "now second-pass-y"})
        await eventually(lambda: any("now" in line for line in host.logs("raw")))
        assert not any("second-pass-y" in line for line in host.logs("raw"))


async def test_cancelled_activation_closes_the_new_supervisor(tmp_path: Path) -> None:
    import anyio

    from plugin_host.supervisor import PluginSupervisor
    from tests.fault_plugins import default_host_env, proc_alive

    async with PluginHost(tmp_path / "home", host_env=default_host_env()) as host:
        await host.install(raw_plugin_zip(tmp_path, "raw"))
        await host.enable("raw")
        old = host.supervisor("raw")
        await host.install(raw_plugin_zip(tmp_path, "raw", "silent_initialize", version="2.0.0"))
        created: list[PluginSupervisor] = []
        supervise = host._supervise

        async def recording(*args: object) -> PluginSupervisor:
            sup = await supervise(*args)  # type: ignore[arg-type]
            created.append(sup)
            return sup

        host._supervise = recording  # type: ignore[method-assign]
        with anyio.move_on_after(1) as scope:
            await host.activate("raw", "2.0.0")  # never answers initialize (handshake 5 s)
        assert scope.cancelled_caught
        [new] = created
        assert new._closing.is_set() and new.state == "stopped" and new.pid is None
        assert host.supervisor("raw") is old and old is not None and old.state == "running"
        assert proc_alive(old.pid)  # type: ignore[arg-type]


async def test_start_does_not_wait_for_one_plugin_before_starting_the_next(tmp_path: Path) -> None:
    import anyio

    from tests.fault_plugins import default_host_env
    from tests.support import eventually

    home = tmp_path / "home"
    async with PluginHost(home, host_env=default_host_env()) as host:
        # "a_silent" comes first in the registry and never answers initialize
        await host.install(raw_plugin_zip(tmp_path, "a_silent", "silent_initialize", timeouts={"handshakeMs": 5000}))
        await host.install(raw_plugin_zip(tmp_path, "b_good"))
    registry = PluginRegistry(home / "state.db")
    await registry.open()
    await registry.set_enabled("a_silent", True)
    await registry.set_enabled("b_good", True)
    await registry.aclose()

    host = PluginHost(home, host_env=default_host_env())
    start_returned = False
    good_running_before_start_returned: list[bool] = []

    async def watch() -> None:
        def good_running() -> bool:
            sup = host.supervisor("b_good")
            return sup is not None and sup.state == "running"

        await eventually(good_running)
        good_running_before_start_returned.append(not start_returned)

    async with anyio.create_task_group() as tg:
        tg.start_soon(watch)
        try:
            await host.start()
            start_returned = True
            await eventually(lambda: good_running_before_start_returned)
        finally:
            await host.stop()
    assert good_running_before_start_returned == [True]
