"""The durable inbox: dedupe on commit, order per conversation, retries, dead letters, leases."""

from __future__ import annotations

from pathlib import Path

import pytest

from channel_runtime.messages import InboundMessage
from channel_runtime.store import DEFAULT_LEASE, open_store
from plugin_host.clock import FakeClock

pytestmark = pytest.mark.anyio


def msg(message_id: str, peer: str = "oc_1", *, channel: str = "ch1", thread: str | None = None) -> InboundMessage:
    return InboundMessage(
        message_id=message_id,
        channel_id=channel,
        kind="feishu",
        peer_id=peer,
        peer_type="group",
        thread_id=thread,
        content=f"text {message_id}",
    )


def ids(entries: list) -> list[str]:
    return [e.message.message_id for e in entries]


async def test_commit_returns_entry_and_rejects_duplicate_message_ids(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        entry = await store.inbox.commit(msg("m1"))
        assert entry is not None
        assert entry.status == "pending" and entry.attempts == 0
        assert entry.session_id == "feishu:group:oc_1" and entry.channel_id == "ch1"
        assert entry.message == msg("m1")
        assert await store.inbox.commit(msg("m1")) is None
        assert await store.inbox.commit(msg("m1", peer="other")) is None  # the id decides, per channel
        assert await store.inbox.commit(msg("m1", channel="ch2")) is not None
        assert await store.message_dedupe.seen_or_mark("ch1", "m1") is True
        assert await store.inbox.pending_count() == 2


async def test_duplicate_stays_rejected_after_ack_until_pruned(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.inbox.commit(msg("m1"))
        [entry] = await store.inbox.claim_ready()
        assert await store.inbox.ack(entry.id)
        assert await store.inbox.commit(msg("m1")) is None
        clock.advance(store.message_dedupe.retention)
        assert await store.message_dedupe.prune() == 1
        assert await store.inbox.commit(msg("m1")) is not None


async def test_message_dedupe_seen_or_mark(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock, retention=100.0) as store:
        assert await store.message_dedupe.seen_or_mark("ch1", "m1") is False
        assert await store.message_dedupe.seen_or_mark("ch1", "m1") is True
        assert await store.message_dedupe.seen_or_mark("ch2", "m1") is False
        clock.advance(99)
        assert await store.message_dedupe.prune() == 0
        clock.advance(1)
        assert await store.message_dedupe.prune() == 2
        assert await store.message_dedupe.seen_or_mark("ch1", "m1") is False


async def test_order_within_a_conversation(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        for message_id in ("a1", "a2", "a3"):
            await store.inbox.commit(msg(message_id, "A"))
        [first] = await store.inbox.claim_ready(10)
        assert first.message.message_id == "a1" and first.status == "claimed" and first.attempts == 1
        assert await store.inbox.claim_ready(10) == []  # a2 waits for a1
        assert await store.inbox.ack(first.id)
        assert ids(await store.inbox.claim_ready(10)) == ["a2"]


async def test_conversations_run_in_parallel_oldest_first(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        for n in range(2):
            for peer in ("A", "B", "C"):
                await store.inbox.commit(msg(f"{peer}{n}", peer))
        await store.inbox.commit(msg("T0", "A", thread="t1"))  # a thread is its own conversation
        await store.inbox.commit(msg("X0", "A", channel="ch2"))  # so is the same peer on another channel
        assert ids(await store.inbox.claim_ready(2)) == ["A0", "B0"]
        assert ids(await store.inbox.claim_ready(10)) == ["C0", "T0", "X0"]
        assert await store.inbox.claim_ready(10) == []


async def test_retry_waits_for_its_delay_and_holds_back_the_conversation(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.inbox.commit(msg("a1", "A"))
        await store.inbox.commit(msg("a2", "A"))
        await store.inbox.commit(msg("b1", "B"))
        first = await store.inbox.claim_ready(1)
        assert ids(first) == ["a1"]
        assert await store.inbox.retry(first[0].id, "handler failed", 10.0)
        assert ids(await store.inbox.claim_ready(10)) == ["b1"]  # a2 may not overtake a1
        clock.advance(9.5)
        assert await store.inbox.claim_ready(10) == []
        clock.advance(0.5)
        [again] = await store.inbox.claim_ready(10)
        assert again.message.message_id == "a1"
        assert again.attempts == 2 and again.last_error == "handler failed"


async def test_dead_letter_is_listed_and_unblocks_the_conversation(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.inbox.commit(msg("a1", "A"))
        await store.inbox.commit(msg("a2", "A"))
        [entry] = await store.inbox.claim_ready()
        assert await store.inbox.dead_letter(entry.id, "gave up after 5 attempts")
        [dead] = await store.inbox.list_dead()
        assert dead.id == entry.id and dead.status == "dead" and dead.last_error == "gave up after 5 attempts"
        assert dead.message == msg("a1", "A")
        assert await store.inbox.pending_count() == 1
        assert ids(await store.inbox.claim_ready()) == ["a2"]
        # a finished entry cannot be acked, retried or dead-lettered again
        assert not await store.inbox.ack(entry.id)
        assert not await store.inbox.retry(entry.id, "x", 1)
        assert not await store.inbox.dead_letter(entry.id, "x")


async def test_ack_removes_and_unknown_ids_are_reported(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        entry = await store.inbox.commit(msg("a1"))
        assert entry is not None
        assert await store.inbox.ack(entry.id)
        assert not await store.inbox.ack(entry.id)
        assert await store.inbox.get(entry.id) is None
        assert not await store.inbox.retry(12345, "x", 1)
        assert await store.inbox.pending_count() == 0


async def test_expired_claim_is_handed_out_again(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock, lease=30.0) as store:
        await store.inbox.commit(msg("a1", "A"))
        await store.inbox.commit(msg("a2", "A"))
        [entry] = await store.inbox.claim_ready()
        assert entry.claimed_until == clock.time() + 30.0
        clock.advance(29)
        assert await store.inbox.claim_ready() == []
        clock.advance(1)
        [again] = await store.inbox.claim_ready(lease=5.0)
        assert again.id == entry.id and again.attempts == 2  # still a1: order holds
        assert again.claimed_until == clock.time() + 5.0


async def test_claims_survive_a_crash_and_come_back_after_restart(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = await open_store(url, clock=clock)
    await store.inbox.commit(msg("a1", "A"))
    await store.inbox.commit(msg("a2", "A"))
    await store.inbox.commit(msg("b1", "B"))
    claimed = await store.inbox.claim_ready(10)
    assert ids(claimed) == ["a1", "b1"]
    await store.aclose()  # "crash": nothing acked

    async with await open_store(url, clock=clock) as store:
        assert await store.inbox.pending_count() == 3
        assert await store.inbox.claim_ready(10) == []  # the old leases still hold
        clock.advance(DEFAULT_LEASE)
        again = await store.inbox.claim_ready(10)
        assert ids(again) == ["a1", "b1"]
        assert [e.attempts for e in again] == [2, 2]
        assert await store.inbox.commit(msg("a1", "A")) is None  # still deduped after restart
        for entry in again:
            await store.inbox.ack(entry.id)
        assert ids(await store.inbox.claim_ready(10)) == ["a2"]


async def test_two_stores_on_one_file_never_claim_the_same_entry(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with await open_store(url, clock=clock) as one, await open_store(url, clock=clock) as two:
        for peer in "ABCD":
            await one.inbox.commit(msg(f"{peer}1", peer))
        first = await one.inbox.claim_ready(3)
        second = await two.inbox.claim_ready(3)
        assert ids(first) == ["A1", "B1", "C1"] and ids(second) == ["D1"]


async def test_release_claims_hands_claims_back_at_once_after_restart(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = await open_store(url, clock=clock)
    await store.inbox.commit(msg("a1", "A"))
    await store.inbox.commit(msg("a2", "A"))
    await store.inbox.commit(msg("b1", "B"))
    assert ids(await store.inbox.claim_ready(1)) == ["a1"]
    await store.aclose()  # "crash"

    async with await open_store(url, clock=clock) as store:
        assert await store.inbox.release_claims() == 1  # the runtime, sole consumer, at its start
        again = await store.inbox.claim_ready(10)
        assert ids(again) == ["a1", "b1"] and [e.attempts for e in again] == [2, 1]
        assert await store.inbox.release_claims() == 2


async def test_release_claims_in_memory(clock: FakeClock) -> None:
    async with await open_store("memory://", clock=clock) as store:
        await store.inbox.commit(msg("a1"))
        await store.inbox.claim_ready()
        assert await store.inbox.release_claims() == 1
        [entry] = await store.inbox.claim_ready()
        assert entry.attempts == 2 and entry.claimed_until is not None
