"""The pipeline's cross-area operations: `accept_event` and `finish_inbound`, atomic on every backend."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channel_runtime.messages import InboundMessage
from channel_runtime.store import DEFAULT_LEASE, Store, open_store
from channel_runtime.store.base import Delivery
from plugin_host.clock import FakeClock
from tests.support.postgres import session_database

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[3]


def msg(message_id: str, peer: str = "oc_1", **kw: Any) -> InboundMessage:
    return InboundMessage(
        message_id=message_id,
        channel_id="ch1",
        kind="feishu",
        peer_id=peer,
        peer_type="group",
        content=f"text {message_id}",
        **kw,
    )


def unstorable(message_id: str) -> InboundMessage:
    """A message whose inbox insert fails (its metadata cannot be encoded)."""
    return msg(message_id, metadata={"handle": object()})


def reply(request_id: str, content: str = "hi", **payload: Any) -> Delivery:
    return Delivery("ch1", request_id, {"content": content, **payload})


# ---------------------------------------------------------------- accept_event


async def test_accept_event_outcomes_match_spec_6_3(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock, dedupe_ttl=60.0) as store:
        begin, entry = await store.pipeline.accept_event("conn_a", "e1", msg("m1"))
        assert begin.outcome == "new" and entry is not None
        assert entry.message == msg("m1") and entry.session_id == "feishu:group:oc_1" and entry.status == "pending"
        record = await store.bridge_dedupe.get("conn_a:e1")
        assert record is not None and record == begin.record
        assert (record.status, record.delivery_attempts, record.message_id, record.last_error) == (
            "completed",
            1,
            "m1",
            None,
        )
        assert await store.inbox.pending_count() == 1

        clock.advance(5)
        begin, entry = await store.pipeline.accept_event("conn_a", "e1", msg("m1"))
        assert begin.outcome == "duplicate" and entry is None
        assert await store.bridge_dedupe.get("conn_a:e1") == record  # nothing changes

        # another event id for the same platform message: accepted, runtime duplicate, record completed
        begin, entry = await store.pipeline.accept_event("conn_a", "e2", msg("m1"))
        assert begin.should_process and entry is None
        assert (await store.bridge_dedupe.get("conn_a:e2")).status == "completed"  # type: ignore[union-attr]
        assert await store.inbox.pending_count() == 1

        # a delivery still processing elsewhere: in progress, untouched; stale after the window
        await store.bridge_dedupe.begin("conn_a", "e3", "m3")
        begin, entry = await store.pipeline.accept_event("conn_a", "e3", msg("m3"))
        assert begin.outcome == "in_progress" and entry is None
        assert (await store.bridge_dedupe.get("conn_a:e3")).status == "processing"  # type: ignore[union-attr]
        clock.advance(60)
        begin, entry = await store.pipeline.accept_event("conn_a", "e3", msg("m3"))
        assert begin.outcome == "stale" and entry is not None
        assert begin.record.delivery_attempts == 2 and begin.record.status == "completed"

        # failed: processed again on the next delivery, attempts + 1, lastError cleared
        await store.bridge_dedupe.begin("conn_a", "e4", "m4")
        await store.bridge_dedupe.fail("conn_a:e4", "boom")
        begin, entry = await store.pipeline.accept_event("conn_a", "e4", msg("m4"))
        assert begin.outcome == "retry" and entry is not None
        stored = await store.bridge_dedupe.get("conn_a:e4")
        assert stored is not None and (stored.status, stored.delivery_attempts, stored.last_error) == (
            "completed",
            2,
            None,
        )


async def test_failed_accept_leaves_nothing_but_a_failed_record(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        with pytest.raises(TypeError):
            await store.pipeline.accept_event("conn_a", "e1", unstorable("m1"))
        record = await store.bridge_dedupe.get("conn_a:e1")
        assert record is not None
        assert (record.status, record.delivery_attempts, record.message_id) == ("failed", 1, "m1")
        assert record.last_error and "object" in record.last_error
        assert await store.inbox.pending_count() == 0
        assert await store.message_dedupe.seen_or_mark("ch1", "m1") is False  # the mark was rolled back

        clock.advance(1)
        with pytest.raises(TypeError):  # fails again: counted again
            await store.pipeline.accept_event("conn_a", "e1", unstorable("m1b"))
        record = await store.bridge_dedupe.get("conn_a:e1")
        assert record is not None and (record.status, record.delivery_attempts) == ("failed", 2)
        assert record.updated_at == clock.time() and record.message_id == "m1b"

        begin, entry = await store.pipeline.accept_event("conn_a", "e1", msg("m2"))
        assert begin.outcome == "retry" and entry is not None and entry.message.message_id == "m2"
        record = await store.bridge_dedupe.get("conn_a:e1")
        assert record is not None and (record.status, record.delivery_attempts, record.last_error) == (
            "completed",
            3,
            None,
        )


async def test_failure_after_the_inbox_insert_rolls_the_insert_back(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from channel_runtime.store import sqlite as backend

    real_put = backend._put_dedupe

    def put_but_not_completed(conn: sqlite3.Connection, record: Any) -> None:
        if record.status == "completed":
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        real_put(conn, record)

    monkeypatch.setattr(backend, "_put_dedupe", put_but_not_completed)
    async with await open_store(f"sqlite:///{tmp_path / 'state.db'}", clock=clock) as store:
        with pytest.raises(sqlite3.OperationalError):
            await store.pipeline.accept_event("conn_a", "e1", msg("m1"))
        assert await store.inbox.pending_count() == 0
        assert await store.message_dedupe.seen_or_mark("ch1", "m1") is False
        record = await store.bridge_dedupe.get("conn_a:e1")
        assert record is not None and record.status == "failed" and "simulated" in (record.last_error or "")


async def test_concurrent_accepts_one_processor_per_event_and_failures_stay_apart(url: str, clock: FakeClock) -> None:
    """Calls of one loop turn may share a transaction (SQLite group commit); each stays its own unit."""
    async with await open_store(url, clock=clock) as store:
        results: dict[tuple[str, int], Any] = {}

        async def deliver(event_id: str, copy: int, message: InboundMessage) -> None:
            try:
                results[(event_id, copy)] = (await store.pipeline.accept_event("conn_a", event_id, message))[0].outcome
            except TypeError:
                results[(event_id, copy)] = "error"

        async with anyio.create_task_group() as tg:
            for i in range(10):
                for copy in range(3):  # each event delivered three times at once
                    tg.start_soon(deliver, f"e{i}", copy, unstorable(f"m{i}") if i == 4 else msg(f"m{i}"))
        for i in range(10):
            outcomes = sorted(results[(f"e{i}", c)] for c in range(3))
            if i == 4:
                assert outcomes[0] == "error"
            else:
                assert outcomes == ["duplicate", "duplicate", "new"], (i, outcomes)
        assert await store.inbox.pending_count() == 9
        failed = await store.bridge_dedupe.get("conn_a:e4")
        assert failed is not None and failed.status == "failed"
        claimed = await store.inbox.claim_ready(100)
        assert [e.message.message_id for e in claimed] == ["m0"]  # one conversation: strictly in order


async def test_accepted_entries_and_records_survive_a_reopen(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with await open_store(url, clock=clock) as store:
        await store.pipeline.accept_event("conn_a", "e1", msg("m1"))
    async with await open_store(url, clock=clock) as store:
        [entry] = await store.inbox.claim_ready()
        assert entry.message == msg("m1")
        assert (await store.pipeline.accept_event("conn_a", "e1", msg("m1")))[0].outcome == "duplicate"


# ---------------------------------------------------------------- finish_inbound


async def test_finish_inbound_acks_and_enqueues_together(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.outbox.enqueue("ch1", "out_ch1:c:known", {"content": "old"})
        await store.inbox.commit(msg("m1"))
        await store.inbox.commit(msg("m2"))
        [entry] = await store.inbox.claim_ready()
        new = await store.pipeline.finish_inbound(
            entry.id, [reply("out_ch1:c:r1", "one"), reply("out_ch1:c:known"), reply("out_ch1:c:r2", "two")]
        )
        assert new == [True, False, True]
        assert await store.inbox.get(entry.id) is None
        sent = await store.outbox.claim_ready(10)
        assert [e.request_id for e in sent] == ["out_ch1:c:known"]  # one conversation, in order
        for e in sent:
            await store.outbox.mark_sent(e.id)
        assert [e.payload["content"] for e in await store.outbox.claim_ready(10)] == ["one"]
        # the next message of the conversation is free now
        assert [e.message.message_id for e in await store.inbox.claim_ready()] == ["m2"]


async def test_finish_inbound_of_a_finished_entry_changes_nothing(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        entry = await store.inbox.commit(msg("m1"))
        assert entry is not None
        assert await store.pipeline.finish_inbound(entry.id, []) == []
        assert await store.pipeline.finish_inbound(entry.id, [reply("out_ch1:c:r1")]) is None
        assert await store.outbox.get_by_request_id("out_ch1:c:r1") is None
        assert await store.pipeline.finish_inbound(12345, [reply("out_ch1:c:r2")]) is None
        assert await store.outbox.pending_count() == 0


async def test_failed_finish_inbound_changes_nothing(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.inbox.commit(msg("m1"))
        [entry] = await store.inbox.claim_ready()
        with pytest.raises(TypeError):
            await store.pipeline.finish_inbound(
                entry.id, [reply("out_ch1:c:r1"), reply("out_ch1:c:r2", handle=object())]
            )
        still = await store.inbox.get(entry.id)
        assert still is not None and still.status == "claimed"
        assert await store.outbox.pending_count() == 0
        assert await store.outbox.get_by_request_id("out_ch1:c:r1") is None
        assert await store.pipeline.finish_inbound(entry.id, [reply("out_ch1:c:r1")]) == [True]


_CRASH = textwrap.dedent("""
    import os, sys
    import anyio
    from channel_runtime.store import open_store, sqlite as backend
    from channel_runtime.store.base import Delivery

    async def main(url, entry_id, crash):
        store = await open_store(url)
        real = backend.SqliteOutbox.enqueue_in
        def enqueue_then_die(self, *args):
            result = real(self, *args)
            if crash == "mid":
                os._exit(9)  # killed inside the transaction: after the ack and the first reply
            return result
        backend.SqliteOutbox.enqueue_in = enqueue_then_die
        await store.pipeline.finish_inbound(
            entry_id, [Delivery("ch1", "out_ch1:c:r1", {"content": "one"}), Delivery("ch1", "out_ch1:c:r2", {"content": "two"})])
        os._exit(9)  # killed right after the commit, without closing

    anyio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3])
""")


@pytest.mark.parametrize("crash", ["mid", "after"])
async def test_finish_inbound_is_all_or_nothing_across_a_crash(tmp_path: Path, crash: str) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    clock = FakeClock()
    async with await open_store(url, clock=clock) as store:
        await store.inbox.commit(msg("m1"))
        [entry] = await store.inbox.claim_ready()
    done = subprocess.run([sys.executable, "-c", _CRASH, url, str(entry.id), crash], cwd=REPO, timeout=60)
    assert done.returncode == 9
    async with await open_store(url, clock=clock) as store:
        left = await store.inbox.get(entry.id)
        replies = [await store.outbox.get_by_request_id(f"out_ch1:c:r{n}") for n in (1, 2)]
        if crash == "mid":
            assert left is not None and left.status == "claimed" and replies == [None, None]
            clock.advance(DEFAULT_LEASE)
            assert [e.id for e in await store.inbox.claim_ready()] == [entry.id]  # handled again
        else:
            assert left is None and all(r is not None and r.status == "pending" for r in replies)


# ---------------------------------------------------------------- same outcomes as the step-by-step calls

DELIVERIES = st.lists(
    st.tuples(
        st.sampled_from(["e1", "e2", "e3"]),  # event id
        st.sampled_from(["m1", "m2"]),  # message id
        st.booleans(),  # the inbox insert fails
        st.sampled_from([0.0, 1.0, 59.0, 60.0]),  # time passing before it
        st.booleans(),  # a step-by-step `begin` of it first (a delivery in flight elsewhere)
    ),
    max_size=12,
)


async def _replay(
    store: Store, clock: FakeClock, steps: list[tuple[str, str, bool, float, bool]], *, atomic: bool
) -> list[Any]:
    seen: list[Any] = []
    for event_id, message_id, fails, dt, in_flight in steps:
        clock.advance(dt)
        if in_flight:
            await store.bridge_dedupe.begin("conn_a", event_id, message_id)
        message = unstorable(message_id) if fails else msg(message_id)
        try:
            if atomic:
                begin, entry = await store.pipeline.accept_event("conn_a", event_id, message)
                outcome = begin.outcome
            else:  # what the runtime did before: three transactions
                result = await store.bridge_dedupe.begin("conn_a", event_id, message_id)
                outcome, entry = result.outcome, None
                if result.should_process:
                    try:
                        entry = await store.inbox.commit(message)
                    except TypeError as exc:
                        await store.bridge_dedupe.fail(result.dedupe_key, str(exc))
                        raise
                    await store.bridge_dedupe.complete(result.dedupe_key)
            seen.append((outcome, entry is not None))
        except TypeError:
            seen.append("error")
        records = [await store.bridge_dedupe.get(f"conn_a:{e}") for e in ("e1", "e2", "e3")]
        seen.append(
            [
                None if r is None else (r.status, r.delivery_attempts, r.message_id, r.updated_at, r.last_error is None)
                for r in records
            ]
        )
        seen.append(await store.inbox.pending_count())
    return seen


@pytest.mark.usefixtures("postgres")  # drops the session database at the end
@pytest.mark.parametrize("backend", ["memory", "sqlite", "postgresql"])
@settings(max_examples=40, deadline=None)
@given(steps=DELIVERIES)
def test_accept_event_equals_begin_commit_complete(
    tmp_path_factory: pytest.TempPathFactory, backend: str, steps: list[tuple[str, str, bool, float, bool]]
) -> None:
    async def run(atomic: bool) -> list[Any]:
        clock = FakeClock()
        if backend == "postgresql":
            url = session_database().url()
        elif backend == "memory":
            url = "memory://"
        else:
            url = f"sqlite:///{tmp_path_factory.mktemp('eq') / 'state.db'}"
        async with await open_store(url, clock=clock, dedupe_ttl=60.0) as store:
            return await _replay(store, clock, steps, atomic=atomic)

    assert anyio.run(run, True) == anyio.run(run, False)


# ---------------------------------------------------------------- schema migration


async def test_migration_marks_the_heads_of_existing_queues(tmp_path: Path, clock: FakeClock) -> None:
    from channel_runtime.store.sqlite import MIGRATIONS

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    rows = [
        ("a1", "A", "pending"),
        ("b1", "B", "dead"),
        ("a2", "A", "pending"),
        ("b2", "B", "claimed"),
        ("b3", "B", "pending"),
        ("c1", "C", "dead"),
    ]
    for key, conversation, status in rows:
        payload = msg(key, conversation)
        conn.execute(
            "INSERT INTO inbox (channel_id, conversation, item_key, payload, status, next_attempt_at, claimed_until,"
            " created_at, updated_at) VALUES ('ch1', ?, ?, ?, ?, 0, 0, 0, 0)",
            (payload.session_id, key, __import__("msgspec").json.encode(payload).decode(), status),
        )
    conn.close()

    async with await open_store(f"sqlite:///{path}", clock=clock) as store:
        claimed = await store.inbox.claim_ready(10)
        assert [e.message.message_id for e in claimed] == ["a1", "b2"]  # b2: its old claim has expired
        for entry in claimed:
            await store.inbox.ack(entry.id)
        assert [e.message.message_id for e in await store.inbox.claim_ready(10)] == ["a2", "b3"]
