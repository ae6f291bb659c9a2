"""Bridge dedupe (SPEC 6.3) against a pure reference model, on every store backend."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from channel_runtime.store import Store, open_store
from plugin_host.clock import FakeClock
from tests.support.postgres import session_database

T = TypeVar("T")
TTL = 60.0
RETENTION = 7 * 24 * 3600.0
CONNECTIONS = ["conn_a", "conn_b"]
EVENTS = ["e1", "e2"]
# time steps that land before, on and after the 60 s window and the 7-day retention
STEPS = [0.5, 1.0, 5.0, 30.0, 59.0, 60.0, 61.0, 3600.0, RETENTION - 1, RETENTION, RETENTION + 1]


@dataclass(frozen=True)
class ModelRecord:
    status: str
    first_seen_at: float
    updated_at: float
    attempts: int
    message_id: str
    last_error: str | None


class Model:
    """SPEC 6.3, written out again independently of the store code."""

    def __init__(self) -> None:
        self.records: dict[str, ModelRecord] = {}

    def begin(self, key: str, message_id: str, now: float) -> str:
        record = self.records.get(key)
        if record is None:
            self.records[key] = ModelRecord("processing", now, now, 1, message_id, None)
            return "new"
        if record.status == "completed":
            return "duplicate"
        if record.status == "processing":
            if now - record.updated_at < TTL:
                return "in_progress"
            outcome = "stale"
        else:
            outcome = "retry"
        self.records[key] = replace(
            record,
            status="processing",
            updated_at=now,
            attempts=record.attempts + 1,
            message_id=message_id or record.message_id,
            last_error=None,
        )
        return outcome

    def finish(self, key: str, status: str, error: str | None, now: float) -> bool:
        if key not in self.records:
            return False
        self.records[key] = replace(self.records[key], status=status, last_error=error, updated_at=now)
        return True

    def prune(self, now: float) -> int:
        old = [k for k, r in self.records.items() if r.status == "completed" and now - r.updated_at >= RETENTION]
        for key in old:
            del self.records[key]
        return len(old)


class DedupeMachine(RuleBasedStateMachine):
    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model = Model()
        self.processed_after_complete: list[str] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="dedupe-model-"))
        self.portal_cm = anyio.from_thread.start_blocking_portal("asyncio")
        self.portal = self.portal_cm.__enter__()
        self.store = self.run(self.open)
        self.empty()

    def url(self) -> str:
        if self.backend == "postgresql":
            return _postgres_url()
        return "memory://" if self.backend == "memory" else f"sqlite:///{self.tmp / 'state.db'}"

    async def open(self) -> Store:
        return await open_store(self.url(), clock=self.clock, dedupe_ttl=TTL, retention=RETENTION)

    def empty(self) -> None:
        """Every example starts from an empty store (PostgreSQL: one schema for the run, emptied)."""
        if self.backend == "postgresql":
            import psycopg

            with psycopg.connect(self.url(), autocommit=True) as conn:
                conn.execute("TRUNCATE bridge_dedupe")

    def run(self, fn: Callable[[], Awaitable[T]]) -> T:
        return self.portal.call(fn)

    def area(self) -> Any:
        """The dedupe table this machine drives (the sidecar's machine drives `send_dedupe`)."""
        return self.store.bridge_dedupe

    def teardown(self) -> None:
        try:
            self.run(self.store.aclose)
        finally:
            self.portal_cm.__exit__(None, None, None)
            shutil.rmtree(self.tmp, ignore_errors=True)

    @rule(
        conn=st.sampled_from(CONNECTIONS), event=st.sampled_from(EVENTS), message_id=st.sampled_from(["", "m1", "m2"])
    )
    def begin(self, conn: str, event: str, message_id: str) -> None:
        key = f"{conn}:{event}"
        expected = self.model.begin(key, message_id, self.clock.time())

        async def call() -> Any:
            before = await self.store.bridge_dedupe.get(key)
            return before, await self.store.bridge_dedupe.begin(conn, event, message_id)

        before, result = self.run(call)
        assert result.outcome == expected
        assert result.dedupe_key == key
        assert result.should_process == (expected in ("new", "stale", "retry"))
        if before is not None and before.status == "completed" and result.should_process:
            self.processed_after_complete.append(key)
        if expected == "retry":
            assert result.record.last_error is None

    @rule(conn=st.sampled_from(CONNECTIONS), event=st.sampled_from(EVENTS))
    def complete(self, conn: str, event: str) -> None:
        key = f"{conn}:{event}"
        expected = self.model.finish(key, "completed", None, self.clock.time())

        async def call() -> bool:
            return await self.store.bridge_dedupe.complete(key)

        assert self.run(call) == expected

    @rule(conn=st.sampled_from(CONNECTIONS), event=st.sampled_from(EVENTS), error=st.sampled_from(["boom", "503"]))
    def fail(self, conn: str, event: str, error: str) -> None:
        key = f"{conn}:{event}"
        expected = self.model.finish(key, "failed", error, self.clock.time())

        async def call() -> bool:
            return bool(await self.area().fail(key, error))

        assert self.run(call) == expected

    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def prune(self) -> None:
        expected = self.model.prune(self.clock.time())

        async def call() -> int:
            return int(await self.area().prune())

        assert self.run(call) == expected

    @rule()
    def restart(self) -> None:
        """Close and reopen from disk (memory: the same store lives on, there is no disk)."""
        if self.backend == "memory":
            return
        self.run(self.store.aclose)
        self.store = self.run(self.open)

    @invariant()
    def records_match_model(self) -> None:
        async def snapshot() -> dict[str, Any]:
            keys = [f"{c}:{e}" for c in CONNECTIONS for e in EVENTS]
            return {k: await self.store.bridge_dedupe.get(k) for k in keys}

        for key, record in self.run(snapshot).items():
            expected = self.model.records.get(key)
            if expected is None:
                assert record is None, key
                continue
            assert record is not None, key
            assert (
                record.status,
                record.first_seen_at,
                record.updated_at,
                record.delivery_attempts,
                record.message_id,
                record.last_error,
            ) == (
                expected.status,
                expected.first_seen_at,
                expected.updated_at,
                expected.attempts,
                expected.message_id,
                expected.last_error,
            )
            assert (record.connection_id, record.event_id) == tuple(key.split(":"))

    @invariant()
    def completed_never_reprocessed(self) -> None:
        assert self.processed_after_complete == []


class MemoryDedupeMachine(DedupeMachine):
    backend = "memory"


class SqliteDedupeMachine(DedupeMachine):
    backend = "sqlite"


class PostgresDedupeMachine(DedupeMachine):
    backend = "postgresql"


_POSTGRES_URL: list[str] = []


def _postgres_url() -> str:
    if not _POSTGRES_URL:
        _POSTGRES_URL.append(session_database().url())
    return _POSTGRES_URL[0]


_SETTINGS = settings(max_examples=100, stateful_step_count=40, deadline=None)
TestMemoryDedupe = MemoryDedupeMachine.TestCase
TestMemoryDedupe.settings = _SETTINGS
TestSqliteDedupe = SqliteDedupeMachine.TestCase
TestSqliteDedupe.settings = _SETTINGS
# the session's database (dropped at the end) through the `postgres` fixture
TestPostgresDedupe = pytest.mark.usefixtures("postgres")(PostgresDedupeMachine.TestCase)
# every step is several round trips to a server: fewer examples keep it within seconds
TestPostgresDedupe.settings = settings(max_examples=50, stateful_step_count=40, deadline=None)


# ---------------------------------------------------------------- concurrency

N = 50


async def _race(stores: list[Store], key: tuple[str, str]) -> list[str]:
    outcomes: list[str] = []

    async def one(i: int) -> None:
        await anyio.sleep(0)  # let every task start before the first begin
        result = await stores[i % len(stores)].bridge_dedupe.begin(*key, "m1")
        outcomes.append(result.outcome)

    async with anyio.create_task_group() as tg:
        for i in range(N):
            tg.start_soon(one, i)
    return outcomes


@pytest.fixture(params=["memory", "sqlite", "sqlite-two-stores", "postgresql", "postgresql-two-stores"])
def store_urls(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    if request.param == "memory":
        return ["memory://"]
    if request.param.startswith("postgresql"):
        url = request.getfixturevalue("postgres").url()
        return [url] if request.param == "postgresql" else [url, url]
    url = f"sqlite:///{tmp_path / 'state.db'}"
    return [url] if request.param == "sqlite" else [url, url]


@pytest.mark.anyio
async def test_concurrent_begins_yield_exactly_one_processor(store_urls: list[str]) -> None:
    clock = FakeClock()
    stores = [await open_store(url, clock=clock) for url in store_urls]
    try:
        key = ("conn_a", "evt_1")
        outcomes = await _race(stores, key)
        assert sorted(outcomes) == ["in_progress"] * (N - 1) + ["new"]

        clock.advance(TTL - 1)  # still fresh: nobody processes
        assert set(await _race(stores, key)) == {"in_progress"}

        clock.advance(1)  # now stale: exactly one takes it over
        outcomes = await _race(stores, key)
        assert sorted(outcomes) == ["in_progress"] * (N - 1) + ["stale"]
        record = await stores[0].bridge_dedupe.get("conn_a:evt_1")
        assert record is not None and record.delivery_attempts == 2

        await stores[-1].bridge_dedupe.fail("conn_a:evt_1", "boom")
        outcomes = await _race(stores, key)
        assert sorted(outcomes) == ["in_progress"] * (N - 1) + ["retry"]

        await stores[0].bridge_dedupe.complete("conn_a:evt_1")
        assert set(await _race(stores, key)) == {"duplicate"}
    finally:
        for store in stores:
            await store.aclose()
