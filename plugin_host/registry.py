"""The plugin registry: installed versions, active version, enabled flag, admin config.

Persisted in SQLite in the home folder (`<home>/state.db`). The registry is
host-local on purpose: it describes plugin files on this machine's disk, so it
lives beside them whatever store the channel runtime uses.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
from pathlib import Path
from typing import Any

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


def _semver_key(version: str) -> tuple:
    """Semantic-version precedence: numeric identifiers numerically, a release after its pre-releases."""
    core, _, pre = version.split("+", 1)[0].partition("-")
    nums = tuple(int(p) if p.isdigit() else 0 for p in core.split("."))
    identifiers = tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split(".")) if pre else ()
    return (nums, 1 if not pre else 0, identifiers)


class PluginRegistry:
    def __init__(self, path: Path, *, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._db = sqlite3.connect(private_database(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        # decoded manifests by (id, version, sha256): immutable, and decoding dominates listing
        self._manifests: dict[tuple[str, str, str], Manifest] = {}

    def close(self) -> None:
        self._db.close()

    # ---------------------------------------------------------------- reads

    def get(self, plugin_id: str) -> PluginRecord | None:
        row = self._db.execute(
            "SELECT id, enabled, active_version, config, created_at, updated_at FROM plugin WHERE id = ?",
            (plugin_id,),
        ).fetchone()
        return _plugin(row) if row else None

    def list(self) -> list[PluginRecord]:
        rows = self._db.execute(
            "SELECT id, enabled, active_version, config, created_at, updated_at FROM plugin ORDER BY id"
        ).fetchall()
        return [_plugin(r) for r in rows]

    def versions(self, plugin_id: str) -> builtins.list[VersionRecord]:
        rows = self._db.execute(
            "SELECT plugin_id, version, sha256, source, installed_at, manifest FROM plugin_version WHERE plugin_id = ?",
            (plugin_id,),
        ).fetchall()
        return sorted((self._version(r) for r in rows), key=lambda v: _semver_key(v.version))

    def all_versions(self) -> dict[str, builtins.list[VersionRecord]]:
        """Every plugin's versions (sorted) in one query."""
        rows = self._db.execute(
            "SELECT plugin_id, version, sha256, source, installed_at, manifest FROM plugin_version"
        ).fetchall()
        out: dict[str, builtins.list[VersionRecord]] = {}
        for row in rows:
            out.setdefault(row[0], []).append(self._version(row))
        for versions in out.values():
            versions.sort(key=lambda v: _semver_key(v.version))
        return out

    def version(self, plugin_id: str, version: str) -> VersionRecord | None:
        row = self._db.execute(
            "SELECT plugin_id, version, sha256, source, installed_at, manifest FROM plugin_version "
            "WHERE plugin_id = ? AND version = ?",
            (plugin_id, version),
        ).fetchone()
        return self._version(row) if row else None

    # ---------------------------------------------------------------- writes

    def add_version(self, manifest: Manifest, sha256: str, source: str) -> bool:
        """Record an installed version; the first version of a plugin becomes active. True if new."""
        now = self._clock.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR IGNORE INTO plugin (id, enabled, active_version, config, created_at, updated_at) "
                "VALUES (?, 0, ?, '{}', ?, ?)",
                (manifest.id, manifest.version, now, now),
            )
            cur = self._db.execute(
                "INSERT OR IGNORE INTO plugin_version (plugin_id, version, sha256, source, installed_at, manifest) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (manifest.id, manifest.version, sha256, source, now, msgspec.json.encode(manifest).decode()),
            )
            self._db.execute(
                "UPDATE plugin SET active_version = COALESCE(active_version, ?), updated_at = ? WHERE id = ?",
                (manifest.version, now, manifest.id),
            )
            return cur.rowcount == 1

    def set_enabled(self, plugin_id: str, enabled: bool) -> None:
        self._update(plugin_id, "enabled = ?", int(enabled))

    def set_active(self, plugin_id: str, version: str | None) -> None:
        self._update(plugin_id, "active_version = ?", version)

    def set_config(self, plugin_id: str, config: dict[str, Any]) -> None:
        self._update(plugin_id, "config = ?", json.dumps(config))

    def remove_version(self, plugin_id: str, version: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM plugin_version WHERE plugin_id = ? AND version = ?", (plugin_id, version))

    def remove(self, plugin_id: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM plugin WHERE id = ?", (plugin_id,))

    def _version(self, row: tuple) -> VersionRecord:
        key = (row[0], row[1], row[2])
        manifest = self._manifests.get(key)
        if manifest is None:
            manifest = self._manifests[key] = msgspec.json.decode(row[5], type=Manifest)
        return VersionRecord(row[0], row[1], row[2], row[3], row[4], manifest)

    def _update(self, plugin_id: str, assignment: str, value: Any) -> None:
        with self._db:
            self._db.execute(
                f"UPDATE plugin SET {assignment}, updated_at = ? WHERE id = ?",
                (value, self._clock.time(), plugin_id),
            )


def _plugin(row: tuple) -> PluginRecord:
    return PluginRecord(row[0], bool(row[1]), row[2], json.loads(row[3]), row[4], row[5])
