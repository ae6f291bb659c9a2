"""The plugin registry of several hosts (SPEC 10): `plugin_host.registry.RegistryBackend` on PostgreSQL.

The rows (`plugins`, `plugin_versions`) and each version's archive live in the
store's database, created by the store's migrations. Every write bumps
`registry_revision` and sends `NOTIFY channel_runtime_registry` in its
transaction, so the other hosts reload at once (or at their next poll).
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import psycopg

from plugin_host.registry import PluginRecord, RegistryBackend, VersionRow

from .postgres import Conn, Database, _conninfo, notify_sql

_BUMP = "UPDATE registry_revision SET revision = revision + 1 WHERE id = 1"


class PostgresRegistry(RegistryBackend):
    shared = True

    def __init__(self, url: str) -> None:
        self._db = Database(url, max_size=2)
        self._listener: psycopg.AsyncConnection[Any] | None = None

    async def open(self) -> None:
        await self._db.open()
        try:
            self._listener = await psycopg.AsyncConnection.connect(_conninfo(self._db.url), autocommit=True)
            await self._listener.execute("LISTEN channel_runtime_registry")
        except psycopg.Error:
            self._listener = None  # poll only

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._listener is not None:
                await self._listener.close()
                self._listener = None
            await self._db.close()

    async def wait_for_change(self, timeout: float) -> None:
        listener = self._listener
        if listener is None or listener.closed:
            await anyio.sleep(timeout)
            return
        try:
            async for _ in listener.notifies(timeout=timeout, stop_after=1):
                pass
        except psycopg.Error:
            await listener.close()  # polling from now on

    async def revision(self) -> Any:
        row = await self._db.one("SELECT revision FROM registry_revision WHERE id = 1")
        return None if row is None else int(row["revision"])

    async def load(self) -> tuple[list[PluginRecord], list[VersionRow]]:
        plugins = [
            PluginRecord(
                r["id"],
                bool(r["enabled"]),
                r["active_version"],
                json.loads(r["config"]),
                r["created_at"],
                r["updated_at"],
            )
            for r in await self._db.all(
                "SELECT id, enabled, active_version, config, created_at, updated_at FROM plugins ORDER BY id"
            )
        ]
        versions = [
            VersionRow(r["plugin_id"], r["version"], r["sha256"], r["source"], r["installed_at"], r["manifest"])
            for r in await self._db.all(
                "SELECT plugin_id, version, sha256, source, installed_at, manifest FROM plugin_versions"
            )
        ]
        return plugins, versions

    async def _write(self, *statements: tuple[str, tuple[Any, ...]]) -> list[int]:
        """Statements in one transaction with the revision bump and the notice; the rows each changed."""

        async def write(conn: Conn) -> list[int]:
            changed = []
            for sql, params in statements:
                cur = await conn.execute(sql, params)  # our literals, values as parameters
                changed.append(cur.rowcount)
            await conn.execute(_BUMP)
            await conn.execute(notify_sql("registry"))
            return changed

        return await self._db.run(write)

    async def add_version(self, row: VersionRow, *, now: float, archive: bytes | None) -> bool:
        _, inserted, _ = await self._write(
            (
                "INSERT INTO plugins (id, enabled, active_version, config, created_at, updated_at)"
                " VALUES (%s, false, %s, '{}', %s, %s) ON CONFLICT (id) DO NOTHING",
                (row.plugin_id, row.version, now, now),
            ),
            (
                "INSERT INTO plugin_versions (plugin_id, version, sha256, source, installed_at, manifest, archive)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (plugin_id, version) DO NOTHING",
                (row.plugin_id, row.version, row.sha256, row.source, now, row.manifest, archive),
            ),
            (
                "UPDATE plugins SET active_version = COALESCE(active_version, %s), updated_at = %s WHERE id = %s",
                (row.version, now, row.plugin_id),
            ),
        )
        return inserted == 1

    async def set_enabled(self, plugin_id: str, enabled: bool, *, now: float) -> None:
        await self._write(("UPDATE plugins SET enabled = %s, updated_at = %s WHERE id = %s", (enabled, now, plugin_id)))

    async def set_active(self, plugin_id: str, version: str | None, *, now: float) -> None:
        await self._write(
            ("UPDATE plugins SET active_version = %s, updated_at = %s WHERE id = %s", (version, now, plugin_id))
        )

    async def set_config(self, plugin_id: str, config: dict[str, Any], *, now: float) -> None:
        await self._write(
            ("UPDATE plugins SET config = %s, updated_at = %s WHERE id = %s", (json.dumps(config), now, plugin_id))
        )

    async def remove_version(self, plugin_id: str, version: str) -> None:
        await self._write(("DELETE FROM plugin_versions WHERE plugin_id = %s AND version = %s", (plugin_id, version)))

    async def remove(self, plugin_id: str) -> None:
        await self._write(("DELETE FROM plugins WHERE id = %s", (plugin_id,)))

    async def archive(self, plugin_id: str, version: str) -> bytes | None:
        row = await self._db.one(
            "SELECT archive FROM plugin_versions WHERE plugin_id = %s AND version = %s", (plugin_id, version)
        )
        return None if row is None or row["archive"] is None else bytes(row["archive"])
