"""`open_store`: URL schemes, SQLite file setup, schema migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from channel_runtime.store import Store, StoreError, UnsupportedStoreError, open_store
from channel_runtime.store.sqlite import SCHEMA_VERSION
from plugin_host.clock import FakeClock

pytestmark = pytest.mark.anyio


async def test_memory_store() -> None:
    store = await open_store("memory://", clock=FakeClock())
    assert isinstance(store, Store) and repr(store) == "Store('memory://')"
    await store.aclose()
    await store.aclose()  # idempotent


async def test_sqlite_store_creates_its_folder_and_sets_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "state.db"
    async with await open_store(f"sqlite:///{path}", clock=FakeClock()):
        assert path.exists()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {
            "bridge_dedupe",
            "message_dedupe",
            "inbox",
            "outbox",
            "connections",
            "connector_sessions",
            "kv",
            "schema_version",
        } <= tables
    finally:
        db.close()


async def test_sqlite_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with await open_store("sqlite:///state/state.db", clock=FakeClock()):
        pass
    assert (tmp_path / "state" / "state.db").exists()


async def test_reopening_does_not_migrate_twice(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    for _ in range(2):
        async with await open_store(url, clock=FakeClock()) as store:
            await store.kv.set("k", 1)
    db = sqlite3.connect(tmp_path / "state.db")
    try:
        assert db.execute("SELECT COUNT(*) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        db.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with await open_store(url, clock=FakeClock()):
        pass
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this channel-runtime"):
        await open_store(url, clock=FakeClock())


@pytest.mark.parametrize(
    "url", ["postgresql://user:hunter2@db/app", "postgres://db/app", "postgresql+asyncpg://db/app"]
)
async def test_postgresql_is_not_yet_supported(url: str) -> None:
    with pytest.raises(UnsupportedStoreError, match="not yet supported") as info:
        await open_store(url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("url", ["redis://localhost", "state.db", ""])
async def test_unknown_scheme(url: str) -> None:
    with pytest.raises(UnsupportedStoreError, match="unknown store URL"):
        await open_store(url)


@pytest.mark.parametrize("url", ["sqlite://state.db", "sqlite:///"])
async def test_malformed_sqlite_url(url: str) -> None:
    with pytest.raises(StoreError, match="sqlite:///"):
        await open_store(url)


async def test_an_application_store_keeps_its_key_so_credentials_survive_a_restart(tmp_path: Path) -> None:
    """Runtime and sidecar open their store the same way: a SQLite file without a home keeps its
    key beside it (a throwaway key made the credentials unreadable after a restart)."""
    from channel_runtime.store import open_application_store

    url = f"sqlite:///{tmp_path / 'side' / 'state.db'}"
    async with await open_application_store(url, clock=FakeClock()) as store:
        record = await store.connections.create(kind="echo", plugin_id="echo")
        await store.connections.set_credentials(record.connection_id, {"token": "t-1"})
    assert (tmp_path / "side" / "secret-key").is_file()
    async with await open_application_store(url, clock=FakeClock()) as store:
        assert await store.connections.get_credentials(record.connection_id) == {"token": "t-1"}
    # an explicit key wins over the file; a wrong one cannot read what another key wrote
    async with await open_application_store(url, clock=FakeClock(), secret_key="another-key-0123456789") as store:
        with pytest.raises(Exception, match="(?i)decrypt|key"):
            await store.connections.get_credentials(record.connection_id)
