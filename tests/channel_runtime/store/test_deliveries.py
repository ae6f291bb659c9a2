"""Outbox delivery states (SPEC 6.4) on every backend: defer, release, revive, discard, listing, reply windows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from channel_runtime.budget import PeerWindow
from channel_runtime.messages import InboundMessage
from channel_runtime.store import open_store
from channel_runtime.store.base import Page, StoreError
from plugin_host.clock import FakeClock

pytestmark = pytest.mark.anyio


def payload(peer: str, content: str) -> dict:
    return {"target": {"peerId": peer, "peerType": "dm"}, "content": content, "contentType": "text"}


def inbound(peer: str, message_id: str, channel: str = "ch1") -> InboundMessage:
    return InboundMessage(message_id=message_id, channel_id=channel, kind="weixin", peer_id=peer, peer_type="dm")


async def test_states_through_a_delivery_life(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        entry_id = await outbox.enqueue("ch1", "r1", payload("u1", "hi"), conversation="c1")
        assert entry_id is not None
        queued = await outbox.get(entry_id)
        assert queued is not None and queued.state == "queued" and queued.peer_id == "u1"
        [claimed] = await outbox.claim_ready()
        assert claimed.state == "sending" and claimed.attempts == 1
        # a budget wait: the claim's attempt is taken back, the TTL clock starts
        assert await outbox.defer(claimed.id, "rate_budget", clock.time() + 5, since=clock.time())
        deferred = await outbox.get(entry_id)
        assert deferred is not None and deferred.state == "deferred" and deferred.defer_reason == "rate_budget"
        assert deferred.attempts == 0 and deferred.deferred_at == clock.time()
        assert await outbox.claim_ready() == []
        clock.advance(5)
        [again] = await outbox.claim_ready()
        started = clock.time()
        clock.advance(1)
        assert await outbox.mark_sent(again.id, {"providerMessageId": "pm1", "duplicate": False}, attempted_at=started)
        sent = await outbox.get(entry_id)
        assert sent is not None and sent.state == "sent" and sent.provider_message_id == "pm1"
        assert sent.sent_at == clock.time() and sent.first_attempt_at == started == sent.last_attempt_at
        assert sent.deferred_at is not None and sent.defer_reason is None and sent.attempts == 1


async def test_a_deferral_keeps_its_first_time_and_counts_only_when_asked(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        entry_id = await outbox.enqueue("ch1", "r1", payload("u1", "hi"))
        assert entry_id is not None
        first = clock.time()
        [claimed] = await outbox.claim_ready()
        await outbox.defer(claimed.id, "retry_after", clock.time(), since=clock.time(), error="rate_limited: slow")
        clock.advance(10)
        [claimed] = await outbox.claim_ready()
        await outbox.defer(
            claimed.id, "retry_after", clock.time(), since=clock.time(), counted=True, attempted_at=clock.time()
        )
        entry = await outbox.get(entry_id)
        assert entry is not None and entry.deferred_at == first and entry.attempts == 1
        assert entry.last_error == "rate_limited: slow" and entry.last_attempt_at == clock.time()
        with pytest.raises(StoreError, match="unknown defer reason"):
            await outbox.defer(entry_id, "whenever", clock.time(), since=clock.time())  # type: ignore[arg-type]


async def test_an_inbound_message_opens_the_window_and_releases_its_deferrals(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        assert await outbox.peer_window("ch1", "u1") is None
        a = await outbox.enqueue("ch1", "ra", payload("u1", "a"), conversation="c1")
        b = await outbox.enqueue("ch1", "rb", payload("u2", "b"), conversation="c2")
        claimed = await outbox.claim_ready()
        for entry in claimed:
            await outbox.defer(entry.id, "reply_window", clock.time() + 86_400, since=clock.time())
        clock.advance(3)
        assert await store.inbox.commit(inbound("u1", "m1")) is not None
        window = await outbox.peer_window("ch1", "u1")
        assert window == PeerWindow(last_inbound_at=clock.time(), replies=0, closed=False)
        entry_a, entry_b = await outbox.get(a or 0), await outbox.get(b or 0)
        assert entry_a is not None and entry_a.state == "queued" and entry_a.next_attempt_at == clock.time()
        assert entry_b is not None and entry_b.state == "deferred"  # another peer's delivery keeps waiting
        [released] = await outbox.claim_ready()
        assert released.id == a
        await outbox.mark_sent(released.id, {"providerMessageId": "p"})
        window = await outbox.peer_window("ch1", "u1")
        assert window is not None and window.replies == 1  # counted against maxRepliesPerInbound


async def test_a_platform_refusal_closes_the_window_until_the_peer_writes(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        await store.inbox.commit(inbound("u1", "m1"))
        entry_id = await outbox.enqueue("ch1", "r1", payload("u1", "x"))
        [claimed] = await outbox.claim_ready()
        started = clock.time()
        clock.advance(1)
        await outbox.defer(claimed.id, "reply_window", clock.time() + 100, since=started, attempted_at=started)
        window = await outbox.peer_window("ch1", "u1")
        assert window is not None and window.closed
        clock.advance(1)
        await store.inbox.commit(inbound("u1", "m2"))
        window = await outbox.peer_window("ch1", "u1")
        assert window is not None and not window.closed
        entry = await outbox.get(entry_id or 0)
        assert entry is not None and entry.state == "queued"


async def test_a_deferral_that_missed_the_peers_message_is_due_at_once(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        entry_id = await outbox.enqueue("ch1", "r1", payload("u1", "x"))
        [claimed] = await outbox.claim_ready()
        decided = clock.time()
        clock.advance(1)
        await store.inbox.commit(inbound("u1", "m1"))  # the peer wrote while the call was out
        await outbox.defer(claimed.id, "reply_window", decided + 100, since=decided, attempted_at=decided)
        entry = await outbox.get(entry_id or 0)
        assert entry is not None and entry.state == "queued" and entry.next_attempt_at == clock.time()
        window = await outbox.peer_window("ch1", "u1")
        assert window is not None and not window.closed


async def test_release_by_reason_channel_and_entries(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        ids = [
            await outbox.enqueue(ch, f"r{ch}{n}", payload("u1", "x"), conversation=f"{ch}{n}")
            for ch in ("a", "b")
            for n in range(2)
        ]
        claimed = {e.id: e for e in await outbox.claim_ready(10)}
        reasons = ["not_connected", "rate_budget", "not_connected", "rate_budget"]
        for entry_id, reason in zip(ids, reasons, strict=True):
            await outbox.defer(claimed[entry_id or 0].id, reason, clock.time() + 1000, since=clock.time())  # type: ignore[arg-type]
        assert await outbox.release("not_connected", channel_id="a") == 1
        assert await outbox.release_entries([ids[1] or 0, ids[0] or 0]) == 1  # only a deferred one
        assert await outbox.release("rate_budget") == 1  # every channel
        assert (await outbox.counts())["deferred"] == 1
        states = [(await outbox.get(i or 0)).state for i in ids]  # type: ignore[union-attr]
        assert states == ["queued", "queued", "deferred", "queued"]


async def test_revive_and_discard_only_dead_deliveries(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        dead_id = await outbox.enqueue("ch1", "r1", payload("u1", "1"), conversation="c")
        later_id = await outbox.enqueue("ch1", "r2", payload("u1", "2"), conversation="c")
        [first] = await outbox.claim_ready()
        assert await outbox.dead_letter(first.id, "refused: blocked", reason="refused", attempted_at=clock.time())
        assert await outbox.revive(later_id or 0) is None  # not dead
        assert not await outbox.discard(later_id or 0)
        [second] = await outbox.claim_ready()
        assert second.id == later_id
        # revived while its conversation is busy: it waits behind the head
        revived = await outbox.revive(dead_id or 0)
        assert revived is not None and revived.state == "queued" and revived.attempts == 0 and revived.reason is None
        assert revived.request_id == "r1"
        assert await outbox.claim_ready() == []
        await outbox.mark_sent(second.id)
        [again] = await outbox.claim_ready()
        assert again.id == dead_id and again.request_id == "r1"
        await outbox.dead_letter(again.id, "x")
        assert await outbox.discard(dead_id or 0)
        assert await outbox.get(dead_id or 0) is None
        assert await outbox.enqueue("ch1", "r1", payload("u1", "1")) is not None  # its request id is free again


async def test_listing_filters_and_pages_newest_first(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        for n in range(7):
            await outbox.enqueue("a" if n % 2 else "b", f"r{n}", payload(f"u{n % 3}", str(n)), conversation=f"c{n}")
            if n % 3 == 0:
                clock.advance(1)  # some share a creation time: the id breaks the tie
        claimed = await outbox.claim_ready(10)
        await outbox.dead_letter(claimed[0].id, "x")
        await outbox.mark_sent(claimed[1].id)
        everything = await outbox.list(limit=100)
        assert [e.request_id for e in everything] == [f"r{n}" for n in reversed(range(7))]
        pages, before = [], None
        while True:
            page = await outbox.list(limit=3, before=before)
            if not page:
                break
            pages.append([e.request_id for e in page])
            before = Page(page[-1].created_at, page[-1].id)
        assert pages == [["r6", "r5", "r4"], ["r3", "r2", "r1"], ["r0"]]
        assert [e.request_id for e in await outbox.list(channel_id="a")] == ["r5", "r3", "r1"]
        assert [e.request_id for e in await outbox.list(peer_id="u0")] == ["r6", "r3", "r0"]
        assert [e.request_id for e in await outbox.list(state="dead")] == ["r0"]
        assert [e.request_id for e in await outbox.list(state="sent")] == ["r1"]
        assert len(await outbox.list(state="sending")) == 5
        assert await outbox.counts() == {"queued": 0, "sending": 5, "deferred": 0, "dead": 1}
        with pytest.raises(StoreError):
            await outbox.list(state="lost")  # type: ignore[arg-type]


async def test_inbox_dead_letters_list_revive_and_discard(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        inbox = store.inbox
        for n in range(3):
            await inbox.commit(inbound(f"u{n}", f"m{n}", channel="a" if n else "b"))
        for entry in await inbox.claim_ready(10):
            await inbox.dead_letter(entry.id, "handler failed", reason="failed")
        dead = await inbox.list_dead()
        assert [e.message.message_id for e in dead] == ["m2", "m1", "m0"] and dead[0].reason == "failed"
        assert [e.message.message_id for e in await inbox.list_dead(channel_id="a", peer_id="u1")] == ["m1"]
        assert [
            e.message.message_id for e in await inbox.list_dead(1, before=Page(dead[0].created_at, dead[0].id))
        ] == ["m1"]
        revived = await inbox.revive(dead[0].id)
        assert revived is not None and revived.status == "pending" and revived.attempts == 0
        [claimed] = await inbox.claim_ready()
        assert claimed.id == dead[0].id
        assert await inbox.discard(dead[1].id) and not await inbox.discard(claimed.id)


async def test_recent_calls_rebuild_the_budgets(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        outbox = store.outbox
        for n in range(3):
            await outbox.enqueue("ch1", f"r{n}", payload("u1", str(n)), conversation=f"c{n}")
        a, b, c = await outbox.claim_ready(3)
        await outbox.mark_sent(a.id, attempted_at=clock.time() - 120)  # too old to count
        await outbox.mark_sent(b.id, attempted_at=clock.time() - 10)
        await outbox.defer(c.id, "retry_after", clock.time() + 5, since=clock.time(), attempted_at=clock.time() - 5)
        calls = await outbox.recent_calls(clock.time() - 60)
        assert [(call.peer_id, call.at) for call in calls] == [("u1", clock.time() - 10), ("u1", clock.time() - 5)]


async def test_a_store_of_the_previous_schema_migrates_its_outbox(tmp_path: Path, clock: FakeClock) -> None:
    """Rows written before delivery states existed get their peer, reason and sent facts."""
    from channel_runtime.store import sqlite as backend

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, statements in enumerate(backend.MIGRATIONS[:3]):
        for statement in statements:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))
    now = clock.time()
    body = '{"target": {"peerId": "wx_old"}, "content": "x"}'
    conn.execute(
        "INSERT INTO outbox (channel_id, conversation, item_key, payload, status, attempts, next_attempt_at,"
        " result, created_at, updated_at) VALUES ('ch', 'c', 'old-sent', ?, 'sent', 1, ?, ?, ?, ?)",
        (body, now, '{"providerMessageId": "pm_old", "duplicate": false}', now, now),
    )
    conn.execute(
        "INSERT INTO outbox (channel_id, conversation, item_key, payload, status, attempts, next_attempt_at,"
        " last_error, created_at, updated_at) VALUES ('ch', 'd', 'old-dead', ?, 'dead', 8, ?, 'gone', ?, ?)",
        (body, now, now, now),
    )
    conn.close()
    async with await open_store(f"sqlite:///{path}", clock=clock) as store:
        sent = await store.outbox.get_by_request_id("old-sent")
        dead = await store.outbox.get_by_request_id("old-dead")
        assert sent is not None and sent.peer_id == "wx_old" and sent.provider_message_id == "pm_old"
        assert sent.sent_at == now and sent.state == "sent"
        assert dead is not None and dead.state == "dead" and dead.reason == "failed" and dead.last_error == "gone"
