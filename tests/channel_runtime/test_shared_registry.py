"""The plugin registry of several hosts (SPEC 10): PostgreSQL rows and archives, hosts converging on them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import psycopg
import pytest

from channel_runtime.store.postgres_registry import PostgresRegistry
from plugin_host.host import PluginHost
from plugin_host.package import PackageError, pack_directory
from tests.fault_plugins import default_host_env, raw_plugin_zip
from tests.support import REPO, eventually

pytestmark = pytest.mark.anyio


def host(home: Path, url: str) -> PluginHost:
    return PluginHost(home, registry_backend=PostgresRegistry(url), registry_poll=0.2, host_env=default_host_env())


async def test_an_upload_on_one_host_runs_on_every_host(tmp_path: Path, postgres: Any) -> None:
    url = postgres.url()
    archive = pack_directory(REPO / "plugins" / "echo", tmp_path / "echo.zip")
    async with host(tmp_path / "a", url) as a, host(tmp_path / "b", url) as b:
        outcome = await a.install(archive)
        assert outcome.created
        await a.enable("echo")
        # b materialises the package from the stored archive and starts it
        await eventually(lambda: (s := b.supervisor("echo")) is not None and s.state == "running")
        local = tmp_path / "b" / "plugins" / "echo" / "1.0.0"
        assert (local / "plugin.json").is_file()
        assert b.registry.version("echo", "1.0.0").sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
        assert (await b.client("echo").health()).status == "ok"

        await b.disable("echo")  # a lifecycle action on b applies on a
        await eventually(lambda: a.supervisor("echo") is None)
        await a.set_config("echo", {"greeting": "hi"})
        await a.enable("echo")
        await eventually(lambda: (s := b.supervisor("echo")) is not None and s.config == {"greeting": "hi"})
        await eventually(lambda: (s := b.supervisor("echo")) is not None and s.state == "running")

        await a.uninstall("echo", force=True)  # gone everywhere, files too
        await eventually(lambda: b.supervisor("echo") is None and not local.exists())
        assert b.registry.get("echo") is None


async def test_same_version_with_other_bytes_is_a_conflict_on_every_host(tmp_path: Path, postgres: Any) -> None:
    url = postgres.url()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = raw_plugin_zip(tmp_path / "one", "raw")
    other = raw_plugin_zip(tmp_path / "two", "raw", description="different bytes, same id and version")
    async with host(tmp_path / "a", url) as a, host(tmp_path / "b", url) as b:
        await a.install(first)
        again = await b.install(first)  # b has no copy yet: the same bytes are still idempotent
        assert not again.created
        with pytest.raises(PackageError) as info:
            await b.install(other)  # b never saw those files, the registry did
        assert info.value.code == "version_conflict" and info.value.status == 409


async def test_a_tampered_archive_is_not_run(tmp_path: Path, postgres: Any) -> None:
    url = postgres.url()
    async with host(tmp_path / "a", url) as a:
        (tmp_path / "zip").mkdir()
        await a.install(raw_plugin_zip(tmp_path / "zip", "raw"))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE plugin_versions SET archive = archive || '\\x00'::bytea")
        conn.execute("UPDATE plugins SET enabled = true")
    async with host(tmp_path / "b", url) as b:
        assert b.supervisor("raw") is None  # the sha256 did not match: nothing extracted, nothing started
        assert not (tmp_path / "b" / "plugins" / "raw" / "1.0.0").exists()
