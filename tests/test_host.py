"""PluginHost and its registry, below the admin API."""
from __future__ import annotations

from pathlib import Path

import pytest

from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from plugin_host.registry import PluginRegistry, _semver_key
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
        "0.9.9", "1.2.0-alpha", "1.2.0-beta.2", "1.2.0-beta.10", "1.2.0", "1.10.0", "2.0.0-rc.1"]


async def test_registry_survives_reopening(tmp_path: Path) -> None:
    async with PluginHost(tmp_path) as host:
        await host.install(pack_directory(REPO / "plugins" / "echo", tmp_path / "echo.zip"))
        await host.set_config("echo", {})
    registry = PluginRegistry(tmp_path / "state.db")
    try:
        [record] = registry.list()
        assert record.id == "echo" and record.active_version == "1.0.0" and not record.enabled
        assert [v.version for v in registry.all_versions()["echo"]] == ["1.0.0"]
        assert registry.version("echo", "1.0.0").manifest.connectors[0].kind == "echo"
    finally:
        registry.close()
