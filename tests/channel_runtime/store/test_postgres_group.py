"""PostgreSQL group commit (`Database.grouped`): calls share a transaction, none is acked before its commit,
and a group that fails (at a statement or at its commit) fails only the calls that fail alone."""

from __future__ import annotations

from typing import Any

import anyio
import psycopg
import pytest

from channel_runtime.store.postgres import Conn, Database, Group, Locks, lock_name

pytestmark = pytest.mark.anyio
CALLS = 12


@pytest.fixture
async def db(postgres: Any) -> Any:
    url = str(postgres.url())
    database = Database(url)
    await database.open()
    # committed rows; the deferred unique key fails only at COMMIT
    async with database.connection() as conn:
        await conn.execute(
            "CREATE TABLE grouped_rows (k text, CONSTRAINT grouped_rows_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"
        )
    try:
        yield database
    finally:
        await database.close()


async def committed(db: Database) -> list[str]:
    """The rows as another session sees them: only what was committed."""
    with psycopg.connect(db.url, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT k FROM grouped_rows ORDER BY k").fetchall()]


def insert(key: str, *, fail: bool = False) -> Any:
    async def work(conn: Conn) -> str:
        await conn.execute("INSERT INTO grouped_rows (k) VALUES (%s)", (key,))
        if fail:
            raise ValueError(f"{key} fails")
        return key

    return work


async def run_together(db: Database, group: Group, works: dict[str, Any]) -> dict[str, Any]:
    """Every call at once; each caller checks, the moment it is answered, that its row is committed."""
    outcomes: dict[str, Any] = {}

    async def call(name: str, work: Any) -> None:
        locks = Locks(names=(lock_name("inbox", "ch", f"conv-{name}"),))
        try:
            result = await db.grouped(group, work, locks)
        except Exception as exc:
            outcomes[name] = exc
            return
        outcomes[name] = result
        assert result in await committed(db), f"{name} answered before its commit"

    async with anyio.create_task_group() as tg:
        for name, work in works.items():
            tg.start_soon(call, name, work)
    return outcomes


async def test_concurrent_calls_share_transactions_and_each_is_answered_after_its_commit(db: Database) -> None:
    group = Group()
    outcomes = await run_together(db, group, {f"r{i:02}": insert(f"r{i:02}") for i in range(CALLS)})
    assert outcomes == {f"r{i:02}": f"r{i:02}" for i in range(CALLS)}
    assert sorted(await committed(db)) == sorted(outcomes)
    assert sum(group.sizes) == CALLS and max(group.sizes) > 1  # some calls did share a commit
    assert not group.busy and not group.waiting


async def test_a_call_failing_in_a_group_fails_alone_and_the_others_commit(db: Database) -> None:
    group = Group()
    works = {f"r{i:02}": insert(f"r{i:02}", fail=i == 5) for i in range(CALLS)}
    outcomes = await run_together(db, group, works)
    assert max(group.sizes) > 1
    assert isinstance(outcomes["r05"], ValueError)
    assert {k: v for k, v in outcomes.items() if k != "r05"} == {k: k for k in works if k != "r05"}
    assert "r05" not in await committed(db)  # its insert was rolled back with it
    assert sorted(await committed(db)) == sorted(k for k in works if k != "r05")


async def test_a_group_whose_commit_fails_acks_nobody_and_each_call_runs_again_alone(db: Database) -> None:
    group = Group()
    # two calls write the same deferred-unique key: any group holding both fails at COMMIT
    works = {f"c{i:02}": insert("same" if i in (3, 7) else f"c{i:02}") for i in range(CALLS)}
    outcomes = await run_together(db, group, works)
    assert max(group.sizes) > 1
    rows = await committed(db)
    # whichever ran alone first committed "same"; the other failed at its own commit
    failures = [k for k, v in outcomes.items() if isinstance(v, psycopg.errors.UniqueViolation)]
    assert len(failures) == 1 and failures[0] in ("c03", "c07")
    assert rows.count("same") == 1
    assert sorted(rows) == sorted({*(k for k in works if k not in ("c03", "c07")), "same"})


async def test_a_group_that_cannot_commit_fails_every_caller(db: Database) -> None:
    """Nothing to run again alone can succeed (every call is broken): every caller gets its error."""
    group = Group()

    async def broken(conn: Conn) -> None:
        await conn.execute("INSERT INTO no_such_table VALUES (1)")

    outcomes = await run_together(db, group, {f"b{i:02}": broken for i in range(CALLS)})
    assert all(isinstance(v, psycopg.errors.UndefinedTable) for v in outcomes.values()), outcomes
    assert len(outcomes) == CALLS and max(group.sizes) > 1
    assert not group.busy and not group.waiting


async def test_groups_of_accepts_and_sends_crossing_peers_never_deadlock(postgres: Any) -> None:
    """Accepts (reply windows open) and sends (replies counted) write `peers` rows; their groups run on two
    connections at once, taking peers in opposite orders. The groups lock each peer first, in one order:
    no group fails on a deadlock (each would cost a second, and the group's work done again alone)."""
    from channel_runtime.messages import InboundMessage
    from channel_runtime.store import open_store
    from plugin_host.clock import FakeClock

    peers = [f"p{i}" for i in range(8)]

    def message(peer: str, n: int) -> InboundMessage:
        return InboundMessage(
            message_id=f"m-{peer}-{n}", channel_id="ch", kind="echo", peer_id=peer, peer_type="dm", content="hi"
        )

    async with await open_store(str(postgres.url()), clock=FakeClock()) as store:
        accepts, sends = store.pipeline._accepts, store.outbox._sent  # type: ignore[attr-defined]
        for peer in peers:  # their reply windows exist
            await store.pipeline.accept_event("conn", f"e-{peer}-0", message(peer, 0))
        sent: list[bool] = []
        for n in range(1, 9):
            ids = [await store.outbox.enqueue("ch", f"out-{peer}-{n}", {"n": n}, peer_id=peer) for peer in peers]
            assert len(await store.outbox.claim_ready(100)) == len(peers)

            async def send(entry_id: int) -> None:
                sent.append(await store.outbox.mark_sent(entry_id, {"providerMessageId": "x"}))

            async with anyio.create_task_group() as tg:
                for peer in reversed(peers):
                    tg.start_soon(store.pipeline.accept_event, "conn", f"e-{peer}-{n}", message(peer, n))
                for entry_id in ids:
                    assert entry_id is not None
                    tg.start_soon(send, entry_id)
        assert max(accepts.sizes) > 1 and max(sends.sizes) > 1
        assert (accepts.failures, sends.failures) == (0, 0)
        assert sent == [True] * len(peers) * 8
        assert await store.inbox.pending_count() == len(peers) * 9
