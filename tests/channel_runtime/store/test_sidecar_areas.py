"""The sidecar's store areas (SPEC 11): the forward queue and the `/send` dedupe, on every SQLite backend."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import rule

from channel_runtime.store import Store, StoreError, event_conversation, open_store
from plugin_host.clock import FakeClock
from plugin_host.protocol import BridgeEvent
from tests.channel_runtime.test_dedupe_model import CONNECTIONS, EVENTS, RETENTION, TTL, DedupeMachine

pytestmark = pytest.mark.anyio


def event(event_id: str, peer: str = "p1", thread: str | None = None, connection_id: str = "conn_a") -> BridgeEvent:
    return BridgeEvent(
        event_id=event_id,
        timestamp="2026-06-02T09:30:00Z",
        delivery_attempt=1,
        connection_id=connection_id,
        channel_id=connection_id,
        kind="echo",
        account_id="",
        peer_id=peer,
        peer_type="dm",
        thread_id=thread,
        message_id=f"m_{event_id}",
        message_type="text",
        content="",
        metadata={"n": event_id},
    )


async def test_the_forward_queue_keeps_the_event_and_refuses_a_repeat(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        original = event("e1")
        assert await store.forward.enqueue(original)
        assert not await store.forward.enqueue(event("e1", peer="elsewhere"))  # same connectionId + eventId
        assert await store.forward.enqueue(event("e1", connection_id="conn_b"))  # another connection's e1
        [first, second] = await store.forward.claim_ready(10)
        assert first.event == original and first.attempts == 1 and first.connection_id == "conn_a"
        assert first.conversation == "conn_a:dm:p1" == event_conversation(original)
        assert await store.forward.mark_sent(first.id)
        assert not await store.forward.mark_sent(first.id)
        assert not await store.forward.enqueue(event("e1"))  # delivered, still known until pruned
        assert await store.forward.pending_count() == 1


async def test_the_forward_queue_hands_out_one_entry_per_conversation_in_order(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        for n, (peer, thread) in enumerate([("p1", None), ("p1", None), ("p1", "t"), ("p2", None)]):
            await store.forward.enqueue(event(f"e{n}", peer=peer, thread=thread))
        heads = await store.forward.claim_ready(10)
        assert [e.event.event_id for e in heads] == ["e0", "e2", "e3"]  # e1 waits behind e0
        assert await store.forward.retry(heads[0].id, "down", 5)
        assert [e.event.event_id for e in await store.forward.claim_ready(10)] == []
        clock.advance(5)
        [again] = await store.forward.claim_ready(10)
        assert again.event.event_id == "e0" and again.attempts == 2 and again.last_error == "down"
        assert await store.forward.dead_letter(again.id, "refused")
        [next_one] = await store.forward.claim_ready(10)
        assert next_one.event.event_id == "e1"
        assert await store.forward.dead_count() == 1 and [
            d.event.event_id for d in await store.forward.list_dead()
        ] == ["e0"]


async def test_forward_claims_are_leases_and_sent_entries_are_pruned(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.forward.enqueue(event("e1"))
        [claimed] = await store.forward.claim_ready(1, lease=30)
        assert await store.forward.claim_ready(1) == []
        clock.advance(30)
        [again] = await store.forward.claim_ready(1, lease=30)
        assert again.id == claimed.id and again.attempts == 2
        assert await store.forward.mark_sent(again.id)
        clock.advance(99)
        assert await store.forward.prune(retention=100) == 0
        clock.advance(1)
        assert await store.forward.prune(retention=100) == 1
        assert await store.forward.enqueue(event("e1"))  # forgotten: taken again


async def test_send_dedupe_keeps_the_result_of_a_completed_send(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        begun = await store.send_dedupe.begin("conn_a", "out_1")
        assert begun.outcome == "new" and begun.should_send and begun.result is None
        assert begun.record.dedupe_key == "conn_a:out_1"
        assert await store.send_dedupe.complete(begun.record.dedupe_key, {"providerMessageId": "p1"})
        again = await store.send_dedupe.begin("conn_a", "out_1")
        assert again.outcome == "duplicate" and not again.should_send
        assert again.result == {"providerMessageId": "p1"}
        assert (await store.send_dedupe.begin("conn_b", "out_1")).outcome == "new"


async def test_a_store_without_sidecar_areas_says_so() -> None:
    async with await open_store("memory://") as real:
        bare = Store(
            url="test://",
            bridge_dedupe=real.bridge_dedupe,
            message_dedupe=real.message_dedupe,
            inbox=real.inbox,
            outbox=real.outbox,
            connections=real.connections,
            sessions=real.sessions,
            kv=real.kv,
            pipeline=real.pipeline,
            plugin_state=real.plugin_state,
            leases=real.leases,
            listen=real.listen,
            close=real.aclose,
        )
        with pytest.raises(StoreError, match="no sidecar forward queue"):
            bare.forward  # noqa: B018
        with pytest.raises(StoreError, match="no sidecar send dedupe"):
            bare.send_dedupe  # noqa: B018


class SendDedupeMachine(DedupeMachine):
    """The `/send` dedupe against the same reference model as the bridge's (SPEC 3.6 = 6.3's rules),
    plus: a completed duplicate answers exactly the result its send completed with."""

    def __init__(self) -> None:
        super().__init__()
        self.results: dict[str, dict[str, Any]] = {}

    def area(self) -> Any:  # fail, prune and the rest of the rules come from the bridge's machine
        return self.store.send_dedupe

    @rule(
        conn=st.sampled_from(CONNECTIONS), event=st.sampled_from(EVENTS), message_id=st.sampled_from(["", "m1", "m2"])
    )
    def begin(self, conn: str, event: str, message_id: str) -> None:
        key = f"{conn}:{event}"
        expected = self.model.begin(key, "", self.clock.time())

        async def call() -> Any:
            return await self.store.send_dedupe.begin(conn, event)

        result = self.run(call)
        assert result.outcome == expected
        assert result.should_send == (expected in ("new", "stale", "retry"))
        assert result.record.delivery_attempts == self.model.records[key].attempts
        if expected == "duplicate":
            assert result.result == self.results[key]

    @rule(conn=st.sampled_from(CONNECTIONS), event=st.sampled_from(EVENTS), provider=st.sampled_from(["a", "b"]))
    def complete(self, conn: str, event: str, provider: str) -> None:  # type: ignore[override]
        key = f"{conn}:{event}"
        expected = self.model.finish(key, "completed", None, self.clock.time())
        result = {"providerMessageId": f"{provider}-{self.clock.time()}", "duplicate": False}

        async def call() -> bool:
            return await self.store.send_dedupe.complete(key, result)

        assert self.run(call) == expected
        if expected:
            self.results[key] = result

    def records_match_model(self) -> None:  # the bridge table is not what this machine drives
        pass


assert TTL == 60.0 and RETENTION == 7 * 24 * 3600.0  # the 60 s window and 7-day retention of SPEC 6.3


class SqliteSendDedupeMachine(SendDedupeMachine):
    backend = "sqlite"


TestSendDedupeModel = SendDedupeMachine.TestCase
TestSendDedupeModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestSqliteSendDedupeModel = SqliteSendDedupeMachine.TestCase
TestSqliteSendDedupeModel.settings = settings(max_examples=20, stateful_step_count=30, deadline=None)


async def test_deliveries_marked_sent_together_each_get_their_outcome_and_their_conversations_move_on(
    url: str, clock: FakeClock
) -> None:
    async with await open_store(url, clock=clock) as store:
        for n, peer in enumerate(["p1", "p1", "p1", "p2", "p2", "p3"], start=1):
            await store.forward.enqueue(event(f"e{n}", peer=peer))
        heads = await store.forward.claim_ready(10)
        assert [h.event.event_id for h in heads] == ["e1", "e4", "e6"]
        e1, e4, e6 = (h.id for h in heads)
        outcomes: dict[int, bool] = {}

        async def mark(key: int, entry_id: int) -> None:
            outcomes[key] = await store.forward.mark_sent(entry_id)

        async with anyio.create_task_group() as tg:  # one loop turn: one shared store call
            for key, entry_id in enumerate([e4, e1, e6, e6]):
                tg.start_soon(mark, key, entry_id)
        assert outcomes[0] and outcomes[1]
        # e6 twice at once: one marks it, the other finds it already sent (which one is the backend's)
        assert sorted([outcomes[2], outcomes[3]]) == [False, True]
        assert [e.event.event_id for e in await store.forward.claim_ready(10)] == ["e2", "e5"]  # e3 waits for e2
        assert await store.forward.pending_count() == 3


async def test_an_entry_that_cannot_be_marked_fails_alone_and_its_conversation_waits(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with await open_store(f"sqlite:///{tmp_path / 'q.db'}", clock=clock) as store:
        for n, peer in enumerate(["p1", "p1", "p2", "p2", "p3", "p3"], start=1):
            await store.forward.enqueue(event(f"e{n}", peer=peer))
        first, bad, third = await store.forward.claim_ready(10)  # e1, e3, e5
        conn = sqlite3.connect(tmp_path / "q.db")  # a real SQLite refusal of this one entry's update
        conn.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE OF status ON forward_queue"
            f" WHEN new.id = {bad.id} BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        conn.close()
        outcomes: dict[str, bool | str] = {}

        async def mark(name: str, entry_id: int) -> None:
            try:
                outcomes[name] = await store.forward.mark_sent(entry_id)
            except sqlite3.DatabaseError as exc:
                outcomes[name] = str(exc)

        async with anyio.create_task_group() as tg:  # e1 first: the shared try (with e3 in it) fails
            for name, entry in (("e1", first), ("e3", bad), ("e5", third)):
                tg.start_soon(mark, name, entry.id)
        assert outcomes == {"e1": True, "e3": "refused", "e5": True}
        assert [e.event.event_id for e in await store.forward.claim_ready(10)] == ["e2", "e6"]
        assert (await store.forward.get(bad.id)).status == "claimed"  # type: ignore[union-attr]
