"""The plugin registry: installed versions, active version, enabled flag, admin config (SPEC 5.2).

    registry = PluginRegistry(home / "state.db")       # or PluginRegistry(backend)
    await registry.open()
    registry.list(); registry.version("echo", "1.0.0")  # reads: from memory, no I/O
    await registry.set_enabled("echo", True)           # writes: through the backend, then re-read

Where the rows live is a `RegistryBackend`. `SqliteRegistryBackend` is the
single-host default, `<home>/state.db` beside the plugin files. Several hosts on
one database (SPEC 10) pass a shared backend (the channel runtime's PostgreSQL
one): it also keeps each version's archive, so that every host can materialise
the package from it, and `wait_for_change` wakes the host when another host
changed something; `refresh()` then reloads and the host converges on it.
"""

from __future__ import annotations

import abc
import builtins
import json
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import msgspec

from .clock import Clock, SystemClock
from .files import private_database
from .manifest import Manifest

_SCHEMA = """
CREATE TABLE IF NOT EXISTS plugin (
    id TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL DEFAULT 0,
    active_version TEXT,
    config TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS plugin_version (
    plugin_id TEXT NOT NULL REFERENCES plugin(id) ON DELETE CASCADE,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    source TEXT NOT NULL,
    installed_at REAL NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (plugin_id, version)
);
"""


class VersionRecord(msgspec.Struct, frozen=True):
    plugin_id: str
    version: str
    sha256: str
    source: str
    installed_at: float
    manifest: Manifest


class PluginRecord(msgspec.Struct, frozen=True):
    id: str
    enabled: bool
    active_version: str | None
    config: dict[str, Any]
    created_at: float
    updated_at: float


class VersionRow(msgspec.Struct, frozen=True):
    """A version as a backend stores it: the manifest as its JSON text."""

    plugin_id: str
    version: str
    sha256: str
    source: str
    installed_at: float
    manifest: str


def _semver_key(version: str) -> tuple:
    """Semantic-version precedence: numeric identifiers numerically, a release after its pre-releases."""
    core, _, pre = version.split("+", 1)[0].partition("-")
    nums = tuple(int(p) if p.isdigit() else 0 for p in core.split("."))
    identifiers = tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split(".")) if pre else ()
    return (nums, 1 if not pre else 0, identifiers)


# ---------------------------------------------------------------- backends


class RegistryBackend(abc.ABC):
    """Where the registry's rows live. Writes are atomic; `revision()` changes with every commit."""

    #: several hosts write it: archives are kept, and hosts converge on its changes
    shared: bool = False

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    @abc.abstractmethod
    async def revision(self) -> Any:
        """A value that differs after any commit to the registry (by anyone)."""

    @abc.abstractmethod
    async def load(self) -> tuple[list[PluginRecord], list[VersionRow]]:
        """Every plugin and every version."""

    @abc.abstractmethod
    async def add_version(self, row: VersionRow, *, now: float, archive: bytes | None) -> bool:
        """Record a version (the plugin too, its first version active); False when it was known."""

    @abc.abstractmethod
    async def set_enabled(self, plugin_id: str, enabled: bool, *, now: float) -> None: ...

    @abc.abstractmethod
    async def set_active(self, plugin_id: str, version: str | None, *, now: float) -> None: ...

    @abc.abstractmethod
    async def set_config(self, plugin_id: str, config: dict[str, Any], *, now: float) -> None: ...

    @abc.abstractmethod
    async def remove_version(self, plugin_id: str, version: str) -> None: ...

    @abc.abstractmethod
    async def remove(self, plugin_id: str) -> None: ...

    async def archive(self, plugin_id: str, version: str) -> bytes | None:
        """The zip a version was installed from (shared backends keep it; the local one does not)."""
        return None

    async def wait_for_change(self, timeout: float) -> None:
        """Return when another writer may have changed the registry, or after `timeout` (polling)."""
        await anyio.sleep(timeout)


class SqliteRegistryBackend(RegistryBackend):
    """`<home>/state.db`: the single-host registry, beside this machine's plugin files.

    Statements run inline (well under a millisecond, as the SQLite store does);
    `PRAGMA data_version` tells a commit by another connection (a CLI install).
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(private_database(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    async def aclose(self) -> None:
        self._db.close()

    async def revision(self) -> Any:
        return self._db.execute("PRAGMA data_version").fetchone()[0]

    async def load(self) -> tuple[list[PluginRecord], list[VersionRow]]:
        plugins = [
            PluginRecord(r[0], bool(r[1]), r[2], json.loads(r[3]), r[4], r[5])
            for r in self._db.execute(
                "SELECT id, enabled, active_version, config, created_at, updated_at FROM plugin ORDER BY id"
            )
        ]
        versions = [
            VersionRow(*r)
            for r in self._db.execute(
                "SELECT plugin_id, version, sha256, source, installed_at, manifest FROM plugin_version"
            )
        ]
        return plugins, versions

    async def add_version(self, row: VersionRow, *, now: float, archive: bytes | None) -> bool:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR IGNORE INTO plugin (id, enabled, active_version, config, created_at, updated_at) "
                "VALUES (?, 0, ?, '{}', ?, ?)",
                (row.plugin_id, row.version, now, now),
            )
            cur = self._db.execute(
                "INSERT OR IGNORE INTO plugin_version (plugin_id, version, sha256, source, installed_at, manifest) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (row.plugin_id, row.version, row.sha256, row.source, now, row.manifest),
            )
            self._db.execute(
                "UPDATE plugin SET active_version = COALESCE(active_version, ?), updated_at = ? WHERE id = ?",
                (row.version, now, row.plugin_id),
            )
            return cur.rowcount == 1

    async def set_enabled(self, plugin_id: str, enabled: bool, *, now: float) -> None:
        self._update(plugin_id, "enabled = ?", int(enabled), now)

    async def set_active(self, plugin_id: str, version: str | None, *, now: float) -> None:
        self._update(plugin_id, "active_version = ?", version, now)

    async def set_config(self, plugin_id: str, config: dict[str, Any], *, now: float) -> None:
        self._update(plugin_id, "config = ?", json.dumps(config), now)

    async def remove_version(self, plugin_id: str, version: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM plugin_version WHERE plugin_id = ? AND version = ?", (plugin_id, version))

    async def remove(self, plugin_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM plugin WHERE id = ?", (plugin_id,))

    def _update(self, plugin_id: str, assignment: str, value: Any, now: float) -> None:
        with self._db:
            self._db.execute(f"UPDATE plugin SET {assignment}, updated_at = ? WHERE id = ?", (value, now, plugin_id))


# ---------------------------------------------------------------- the registry


class PluginRegistry:
    """The registry as this host sees it: reads from the last load, writes through the backend."""

    def __init__(self, backend: RegistryBackend | Path, *, clock: Clock | None = None) -> None:
        self.backend = backend if isinstance(backend, RegistryBackend) else SqliteRegistryBackend(Path(backend))
        self._clock = clock or SystemClock()
        self._opened = False
        self._revision: Any = None
        self._plugins: dict[str, PluginRecord] = {}
        self._versions: dict[str, list[VersionRecord]] = {}
        # decoded manifests by (id, version, sha256): immutable, and decoding dominates listing
        self._manifests: dict[tuple[str, str, str], Manifest] = {}
        # loads overlap (a refresh racing a write's own reload): only the latest started one applies
        self._loads_started = 0
        self._load_applied = 0

    @property
    def shared(self) -> bool:
        return self.backend.shared

    async def open(self) -> None:
        """Open the backend and load (once; later calls do nothing)."""
        if not self._opened:
            await self.backend.open()
            self._opened = True
            await self._load()

    async def aclose(self) -> None:
        if self._opened:
            self._opened = False
            await self.backend.aclose()

    async def refresh(self) -> bool:
        """Reload when someone else committed a change; True when it did."""
        if await self.backend.revision() == self._revision:
            return False
        await self._load()
        return True

    async def wait_for_change(self, timeout: float) -> None:
        await self.backend.wait_for_change(timeout)

    async def archive(self, plugin_id: str, version: str) -> bytes | None:
        return await self.backend.archive(plugin_id, version)

    async def _load(self) -> None:
        self._loads_started += 1
        started = self._loads_started
        revision = await self.backend.revision()  # read first: a change during the load shows at the next refresh
        plugins, versions = await self.backend.load()
        if started < self._load_applied:
            return  # a later load applied: it saw every change committed before this one began
        self._load_applied = started
        by_plugin: dict[str, list[VersionRecord]] = {}
        for row in versions:
            by_plugin.setdefault(row.plugin_id, []).append(self._version(row))
        for found in by_plugin.values():
            found.sort(key=lambda v: _semver_key(v.version))
        self._plugins = {p.id: p for p in plugins}
        self._versions = by_plugin
        self._revision = revision

    def _version(self, row: VersionRow) -> VersionRecord:
        key = (row.plugin_id, row.version, row.sha256)
        manifest = self._manifests.get(key)
        if manifest is None:
            manifest = self._manifests[key] = msgspec.json.decode(row.manifest, type=Manifest)
        return VersionRecord(row.plugin_id, row.version, row.sha256, row.source, row.installed_at, manifest)

    def _require_open(self) -> None:
        if not self._opened:
            raise RuntimeError("the plugin registry is not open (await registry.open())")

    # ---------------------------------------------------------------- reads

    def get(self, plugin_id: str) -> PluginRecord | None:
        self._require_open()
        return self._plugins.get(plugin_id)

    def list(self) -> list[PluginRecord]:
        self._require_open()
        return [self._plugins[k] for k in sorted(self._plugins)]

    def versions(self, plugin_id: str) -> builtins.list[VersionRecord]:
        self._require_open()
        return list(self._versions.get(plugin_id, []))

    def all_versions(self) -> dict[str, builtins.list[VersionRecord]]:
        """Every plugin's versions (sorted)."""
        self._require_open()
        return {k: list(v) for k, v in self._versions.items()}

    def version(self, plugin_id: str, version: str) -> VersionRecord | None:
        self._require_open()
        return next((v for v in self._versions.get(plugin_id, []) if v.version == version), None)

    # ---------------------------------------------------------------- writes

    async def add_version(self, manifest: Manifest, sha256: str, source: str, *, archive: bytes | None = None) -> bool:
        """Record an installed version; the first version of a plugin becomes active. True if new."""
        self._require_open()
        row = VersionRow(
            manifest.id, manifest.version, sha256, source, 0.0, msgspec.json.encode(manifest).decode("utf-8")
        )
        created = await self.backend.add_version(row, now=self._clock.time(), archive=archive)
        await self._load()
        return created

    async def set_enabled(self, plugin_id: str, enabled: bool) -> None:
        self._require_open()
        await self.backend.set_enabled(plugin_id, enabled, now=self._clock.time())
        await self._load()

    async def set_active(self, plugin_id: str, version: str | None) -> None:
        self._require_open()
        await self.backend.set_active(plugin_id, version, now=self._clock.time())
        await self._load()

    async def set_config(self, plugin_id: str, config: dict[str, Any]) -> None:
        self._require_open()
        await self.backend.set_config(plugin_id, config, now=self._clock.time())
        await self._load()

    async def remove_version(self, plugin_id: str, version: str) -> None:
        self._require_open()
        await self.backend.remove_version(plugin_id, version)
        await self._load()

    async def remove(self, plugin_id: str) -> None:
        self._require_open()
        await self.backend.remove(plugin_id)
        await self._load()
