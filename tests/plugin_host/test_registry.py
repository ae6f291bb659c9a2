"""The registry's view of its backend: overlapping reloads never leave it older than its own last write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from plugin_host.manifest import Manifest
from plugin_host.registry import PluginRecord, PluginRegistry, SqliteRegistryBackend, VersionRow
from tests.support.zips import manifest

pytestmark = pytest.mark.anyio


class PausingBackend(SqliteRegistryBackend):
    """Holds one load, after it has read its rows, until told to go on (a slow reload by the watcher)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold_next = False
        self.read = anyio.Event()
        self.go_on = anyio.Event()

    async def load(self) -> tuple[list[PluginRecord], list[VersionRow]]:
        rows = await super().load()
        if self.hold_next:
            self.hold_next = False
            self.read.set()
            await self.go_on.wait()
        return rows


async def test_a_slow_reload_that_read_before_a_write_does_not_undo_it(tmp_path: Path) -> None:
    backend = PausingBackend(tmp_path / "state.db")
    registry = PluginRegistry(backend)
    await registry.open()
    await registry.add_version(msgspec.convert(manifest(), Manifest), "0" * 64, "test")
    assert registry.get("demo_plugin") is not None and not registry.get("demo_plugin").enabled  # type: ignore[union-attr]

    backend.hold_next = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(registry._load)  # the watcher's reload, reading the rows before the write below
        await backend.read.wait()
        await registry.set_enabled("demo_plugin", True)  # commits, then reloads (and applies) itself
        assert registry.get("demo_plugin").enabled  # type: ignore[union-attr]
        backend.go_on.set()  # the stale reload finishes last
    record: Any = registry.get("demo_plugin")
    assert record.enabled
    await registry.aclose()
