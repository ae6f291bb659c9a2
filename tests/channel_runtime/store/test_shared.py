"""Several stores on one database at once (hosts of SPEC 10): SQLite's file, PostgreSQL's database."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import anyio
import pytest

from channel_runtime.messages import InboundMessage
from channel_runtime.store import Store, open_store
from plugin_host.clock import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgresql"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        return str(request.getfixturevalue("postgres").url())
    return f"sqlite:///{tmp_path / 'state.db'}"


def msg(message_id: str, peer: str) -> InboundMessage:
    return InboundMessage(
        message_id=message_id, channel_id="ch1", kind="feishu", peer_id=peer, peer_type="dm", content=message_id
    )


async def test_hosts_racing_on_one_queue_keep_each_conversation_in_order_one_at_a_time(shared_url: str) -> None:
    clock = FakeClock()
    peers = ["A", "B", "C", "D"]
    per_peer = 15
    stores = [await open_store(shared_url, clock=clock) for _ in range(3)]
    handled: dict[str, list[str]] = {p: [] for p in peers}
    in_flight: set[str] = set()
    overlaps: list[str] = []
    produced = anyio.Event()
    try:

        async def produce(store: Store, peer: str) -> None:
            for n in range(per_peer):
                await store.inbox.commit(msg(f"{peer}{n:02d}", peer))
                await anyio.sleep(0)

        async def consume(store: Store, owner: str) -> None:
            rng = random.Random(owner)
            while not (produced.is_set() and sum(map(len, handled.values())) == len(peers) * per_peer):
                entries = await store.inbox.claim_ready(3, owner=owner)
                if not entries:
                    await anyio.sleep(0.001)
                    continue
                for entry in entries:
                    peer = entry.message.peer_id
                    if peer in in_flight:
                        overlaps.append(peer)
                    in_flight.add(peer)
                    await anyio.sleep(rng.random() / 1000)
                    handled[peer].append(entry.message.message_id)
                    in_flight.discard(peer)
                    assert await store.inbox.ack(entry.id)

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for i, store in enumerate(stores):
                    tg.start_soon(consume, store, f"node-{i}")
                async with anyio.create_task_group() as producers:
                    for i, peer in enumerate(peers):
                        producers.start_soon(produce, stores[i % len(stores)], peer)
                produced.set()
        assert overlaps == []
        for peer in peers:
            assert handled[peer] == [f"{peer}{n:02d}" for n in range(per_peer)]
        assert await stores[0].inbox.pending_count() == 0
    finally:
        for store in stores:
            await store.aclose()


async def test_the_same_events_through_two_hosts_are_accepted_once(shared_url: str) -> None:
    clock = FakeClock()
    stores = [await open_store(shared_url, clock=clock) for _ in range(2)]
    outcomes: dict[str, list[str]] = {}
    entries: list[Any] = []
    try:

        async def deliver(i: int, event: int) -> None:
            begin, entry = await stores[i % 2].pipeline.accept_event("conn_a", f"e{event}", msg(f"m{event}", "P"))
            outcomes.setdefault(f"e{event}", []).append(begin.outcome)
            if entry is not None:
                entries.append(entry)

        async with anyio.create_task_group() as tg:
            for event in range(20):
                for i in range(4):
                    tg.start_soon(deliver, i, event)
        for event, seen in outcomes.items():
            assert sorted(seen).count("new") == 1, (event, seen)
            assert set(seen) <= {"new", "in_progress", "duplicate"}
        assert sorted(e.message.message_id for e in entries) == sorted(f"m{n}" for n in range(20))
        assert await stores[1].inbox.pending_count() == 20
    finally:
        for store in stores:
            await store.aclose()


async def test_a_lease_goes_to_one_of_several_hosts_racing_for_it(shared_url: str) -> None:
    clock = FakeClock()
    stores = [await open_store(shared_url, clock=clock) for _ in range(3)]
    won: list[str] = []
    try:

        async def race(i: int) -> None:
            for lease in await stores[i].leases.acquire(f"node-{i}", ["conn_1", "conn_2"], 10.0):
                won.append(f"{lease.connection_id}@{lease.node_id}")

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(race, i)
        assert sorted(w.split("@")[0] for w in won) == ["conn_1", "conn_2"]
    finally:
        for store in stores:
            await store.aclose()
