"""`open_store`: URL schemes, SQLite file setup, schema migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

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


async def test_unreachable_postgresql_fails_at_once_without_the_password() -> None:
    from tests.support import free_port

    url = f"postgresql://user:hunter2@127.0.0.1:{free_port()}/app"  # nothing listens there
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL") as info:
        await open_store(url)
    assert "hunter2" not in str(info.value) and "user:***@127.0.0.1" in str(info.value)


@pytest.mark.parametrize("url", ["postgresql+asyncpg://db/app", "postgres+psycopg://db/app"])
async def test_postgresql_driver_suffixes_are_refused(url: str) -> None:
    with pytest.raises(UnsupportedStoreError, match="postgresql://"):
        await open_store(url)


async def test_postgresql_store_migrates_once_and_refuses_a_newer_schema(postgres: Any) -> None:
    import psycopg

    from channel_runtime.store.postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION

    url = postgres.url()
    for _ in range(2):
        async with await open_store(url, clock=FakeClock()) as store:
            assert store.shared
            await store.kv.set("k", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (PG_SCHEMA_VERSION,)
        conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (PG_SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer than this channel-runtime"):
        await open_store(url, clock=FakeClock())


async def test_hosts_starting_together_migrate_once(postgres: Any) -> None:
    import anyio

    url = postgres.url()
    stores: list[Store] = []

    async def open_one() -> None:
        stores.append(await open_store(url, clock=FakeClock()))

    async with anyio.create_task_group() as tg:
        for _ in range(4):
            tg.start_soon(open_one)
    for store in stores:
        await store.aclose()
    assert len(stores) == 4


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
