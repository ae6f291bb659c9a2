"""The durable outbox: idempotent enqueue, order per conversation, retries, dead letters, leases."""

from __future__ import annotations

from pathlib import Path

import pytest

from channel_runtime.messages import OutboundMessage
from channel_runtime.store import DEFAULT_LEASE, open_store, outbox_conversation
from plugin_host.clock import FakeClock

pytestmark = pytest.mark.anyio


def request_id(peer: str, content: str, *, thread: str | None = None) -> str:
    return OutboundMessage(channel_id="ch1", peer_id=peer, content=content, thread_id=thread).request_id("weixin")


def payload(content: str) -> dict:
    return {"content": content, "contentType": "text", "metadata": {"n": [1, 2]}}


def contents(entries: list) -> list[str]:
    return [e.payload["content"] for e in entries]


def test_default_conversation_is_the_request_id_without_its_last_part() -> None:
    rid = request_id("wx_a", "hi", thread="t1")
    assert outbox_conversation(rid) == "out_ch1:weixin:dm:wx_a:t1"
    assert outbox_conversation("plain") == "plain"


async def test_enqueue_is_idempotent_by_request_id(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        rid = request_id("wx_a", "hello")
        assert await store.outbox.enqueue("ch1", rid, payload("hello")) is True
        assert await store.outbox.enqueue("ch1", rid, payload("something else")) is False
        assert await store.outbox.pending_count() == 1
        entry = await store.outbox.get_by_request_id(rid)
        assert entry is not None
        assert entry.payload == payload("hello") and entry.request_id == rid and entry.channel_id == "ch1"
        assert entry.conversation == "out_ch1:weixin:dm:wx_a"

        [claimed] = await store.outbox.claim_ready()
        assert await store.outbox.mark_sent(claimed.id, {"providerMessageId": "p1", "duplicate": False})
        assert await store.outbox.enqueue("ch1", rid, payload("hello")) is False  # sent stays known
        sent = await store.outbox.get(claimed.id)
        assert sent is not None and sent.status == "sent"
        assert sent.result == {"providerMessageId": "p1", "duplicate": False}
        assert await store.outbox.pending_count() == 0
        assert await store.outbox.claim_ready() == []


async def test_order_per_conversation_and_conversations_in_parallel(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        for n in range(3):
            for peer in ("wx_a", "wx_b"):
                await store.outbox.enqueue("ch1", request_id(peer, f"{peer}-{n}"), payload(f"{peer}-{n}"))
        await store.outbox.enqueue("ch1", "custom-1", payload("custom"), conversation="out_ch1:weixin:dm:wx_a")
        first = await store.outbox.claim_ready(10)
        assert contents(first) == ["wx_a-0", "wx_b-0"]
        assert await store.outbox.claim_ready(10) == []  # each conversation waits for its head
        await store.outbox.mark_sent(first[0].id)
        [a1] = await store.outbox.claim_ready(10)  # only wx_a moves on; wx_b-0 is still out
        assert a1.payload["content"] == "wx_a-1"
        await store.outbox.mark_sent(a1.id)
        [a2] = await store.outbox.claim_ready(10)
        await store.outbox.mark_sent(a2.id)
        [custom] = await store.outbox.claim_ready(10)
        assert custom.request_id == "custom-1"  # an explicit conversation joins the same queue


async def test_order_per_conversation_strict(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        for n in range(3):
            for peer in ("wx_a", "wx_b"):
                await store.outbox.enqueue("ch1", request_id(peer, f"{peer}-{n}"), payload(f"{peer}-{n}"))
        delivered: list[str] = []
        while batch := await store.outbox.claim_ready(10):
            assert len({e.conversation for e in batch}) == len(batch)  # one per conversation at a time
            for entry in batch:
                delivered.append(entry.payload["content"])
                await store.outbox.mark_sent(entry.id)
        assert [c for c in delivered if c.startswith("wx_a")] == ["wx_a-0", "wx_a-1", "wx_a-2"]
        assert [c for c in delivered if c.startswith("wx_b")] == ["wx_b-0", "wx_b-1", "wx_b-2"]


async def test_retry_with_delay_then_dead_letter(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.outbox.enqueue("ch1", request_id("wx_a", "1"), payload("1"))
        await store.outbox.enqueue("ch1", request_id("wx_a", "2"), payload("2"))
        [entry] = await store.outbox.claim_ready()
        assert await store.outbox.retry(entry.id, "-32010 in progress", 5.0)
        clock.advance(4.9)
        assert await store.outbox.claim_ready() == []  # neither 1 (not due) nor 2 (behind 1)
        clock.advance(0.1)
        [again] = await store.outbox.claim_ready()
        assert again.id == entry.id and again.attempts == 2 and again.last_error == "-32010 in progress"
        assert again.request_id == entry.request_id  # retries reuse the request id
        assert await store.outbox.dead_letter(again.id, "plugin unavailable")
        [dead] = await store.outbox.list_dead()
        assert dead.id == entry.id and dead.status == "dead" and dead.last_error == "plugin unavailable"
        assert dead.payload == payload("1")
        assert contents(await store.outbox.claim_ready()) == ["2"]
        assert not await store.outbox.mark_sent(dead.id)
        assert not await store.outbox.retry(dead.id, "x", 1)


async def test_expired_lease_hands_the_entry_out_again(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.outbox.enqueue("ch1", "r1", payload("1"))
        [entry] = await store.outbox.claim_ready(lease=10.0)
        clock.advance(9.9)
        assert await store.outbox.claim_ready() == []
        clock.advance(0.1)
        [again] = await store.outbox.claim_ready()
        assert again.id == entry.id and again.attempts == 2


async def test_unsent_deliveries_survive_a_crash(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = await open_store(url, clock=clock)
    await store.outbox.enqueue("ch1", "r1", payload("1"), conversation="c")
    await store.outbox.enqueue("ch1", "r2", payload("2"), conversation="c")
    [claimed] = await store.outbox.claim_ready()
    await store.aclose()  # "crash" while sending r1

    async with await open_store(url, clock=clock) as store:
        assert await store.outbox.enqueue("ch1", "r1", payload("1")) is False
        assert await store.outbox.claim_ready() == []
        clock.advance(DEFAULT_LEASE)
        [again] = await store.outbox.claim_ready()
        assert again.id == claimed.id and again.request_id == "r1" and again.attempts == 2
        await store.outbox.mark_sent(again.id)
        assert contents(await store.outbox.claim_ready()) == ["2"]


async def test_release_claims(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.outbox.enqueue("ch1", "r1", payload("1"), conversation="c")
        await store.outbox.enqueue("ch1", "r2", payload("2"), conversation="c")
        [entry] = await store.outbox.claim_ready()
        assert await store.outbox.release_claims() == 1
        [again] = await store.outbox.claim_ready()
        assert again.id == entry.id and again.attempts == 2
        await store.outbox.mark_sent(again.id)
        assert await store.outbox.release_claims() == 0


async def test_prune_removes_old_sent_entries_only(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.outbox.enqueue("ch1", "sent", payload("s"), conversation="a")
        await store.outbox.enqueue("ch1", "dead", payload("d"), conversation="b")
        await store.outbox.enqueue("ch1", "pending", payload("p"), conversation="c")
        sent, dead, _pending = await store.outbox.claim_ready(3)
        await store.outbox.mark_sent(sent.id)
        await store.outbox.dead_letter(dead.id, "x")
        clock.advance(100)
        assert await store.outbox.prune(retention=101) == 0
        assert await store.outbox.prune(retention=100) == 1
        assert await store.outbox.get_by_request_id("sent") is None
        assert await store.outbox.get_by_request_id("dead") is not None
        assert await store.outbox.enqueue("ch1", "sent", payload("s")) is True
