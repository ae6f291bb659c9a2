"""Nodes, connection leases and fencing (SPEC 10), and claims owned by a node: on every backend."""

from __future__ import annotations

import pytest

from channel_runtime.crypto import CredentialCipher
from channel_runtime.messages import InboundMessage
from channel_runtime.store import FencedError, LeaseFence, open_store
from channel_runtime.store.base import Delivery
from plugin_host.clock import FakeClock

pytestmark = pytest.mark.anyio
TTL = 10.0


def msg(message_id: str, peer: str = "oc_1", channel: str = "ch1") -> InboundMessage:
    return InboundMessage(
        message_id=message_id, channel_id=channel, kind="feishu", peer_id=peer, peer_type="group", content="hi"
    )


async def test_heartbeats_list_nodes_and_leaving_removes_the_row(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        first = await store.leases.heartbeat("node-b", TTL, {"url": "http://b"})
        await store.leases.heartbeat("node-a", TTL)
        clock.advance(3)
        again = await store.leases.heartbeat("node-b", TTL, {"url": "http://b2"})
        assert again.started_at == first.started_at and again.heartbeat_at == clock.time()
        assert again.expires_at == clock.time() + TTL and again.info == {"url": "http://b2"}
        assert [n.node_id for n in await store.leases.nodes()] == ["node-a", "node-b"]
        await store.leases.leave("node-a")
        assert [n.node_id for n in await store.leases.nodes()] == ["node-b"]
        clock.advance(TTL + 60)
        assert await store.leases.prune_nodes(older_than=60) == 1
        assert await store.leases.nodes() == []


async def test_a_lease_has_one_owner_and_its_epoch_grows_on_every_change_of_owner(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        leases = store.leases
        [a] = await leases.acquire("node-a", ["conn_1"], TTL)
        assert (a.node_id, a.epoch, a.expires_at) == ("node-a", 1, clock.time() + TTL)
        assert await leases.acquire("node-b", ["conn_1"], TTL) == []  # held and live: not taken
        [still] = await leases.acquire("node-a", ["conn_1"], TTL)  # the owner asking again: same epoch
        assert still.epoch == 1
        clock.advance(TTL)  # expired: another node may take it
        b, other = await leases.acquire("node-b", ["conn_1", "conn_2"], TTL)
        assert (b.connection_id, b.node_id, b.epoch) == ("conn_1", "node-b", 2) and other.epoch == 1
        assert [lease.connection_id for lease in await leases.leases("node-b")] == ["conn_1", "conn_2"]
        assert await leases.renew("node-a", TTL) == []  # node-a lost it
        assert await leases.release("node-b", ["conn_1"]) == 1
        released = await leases.get("conn_1")
        assert released is not None and released.node_id is None and released.epoch == 2
        [back] = await leases.acquire("node-b", ["conn_1"], TTL)  # a release then a take is a change of owner
        assert back.epoch == 3
        taken = await leases.take("node-a", "conn_1", TTL)  # a fresh login elsewhere takes it at once
        assert (taken.node_id, taken.epoch) == ("node-a", 4)
        assert [lease.connection_id for lease in await leases.renew("node-b", TTL)] == ["conn_2"]
        assert await leases.leave("node-b") == 1
        gone = await leases.get("conn_2")
        assert gone is not None and gone.node_id is None and gone.epoch == 1


async def test_an_expired_lease_nobody_took_is_renewed_without_a_new_epoch(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        await store.leases.acquire("node-a", ["conn_1"], TTL)
        clock.advance(TTL + 5)
        [renewed] = await store.leases.renew("node-a", TTL)
        assert renewed.epoch == 1 and renewed.expires_at == clock.time() + TTL


async def test_state_writes_carry_the_fence_and_a_stale_owner_is_refused(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock, cipher=CredentialCipher.ephemeral()) as store:
        record = await store.connections.create(kind="weixin", plugin_id="weixin", status="connected")
        cid = record.connection_id
        state = store.plugin_state
        with pytest.raises(FencedError):  # nobody holds it yet
            await state.put("weixin", cid, "cursor", 1, fence=LeaseFence("node-a"))
        [lease] = await store.leases.acquire("node-a", [cid], TTL)
        await state.put("weixin", cid, "cursor", 1, fence=LeaseFence("node-a", lease.epoch))
        await state.put("weixin", None, "plugin-wide", 1, fence=LeaseFence("node-b"))  # not per connection
        clock.advance(TTL)
        [moved] = await store.leases.acquire("node-b", [cid], TTL)
        with pytest.raises(FencedError) as info:  # node-a has not noticed yet that it lost the lease
            await state.put("weixin", cid, "cursor", 2, fence=LeaseFence("node-a", lease.epoch))
        assert info.value.epoch == moved.epoch
        with pytest.raises(FencedError):  # the new owner with the old epoch: a stale writer on its side
            await state.put("weixin", cid, "cursor", 2, fence=LeaseFence("node-b", lease.epoch))
        assert await state.get("weixin", cid, "cursor") == 1  # the refused writes changed nothing
        await state.put("weixin", cid, "cursor", 3, fence=LeaseFence("node-b", moved.epoch))
        assert await state.get("weixin", cid, "cursor") == 3
        with pytest.raises(FencedError):
            await store.connections.set_credentials(cid, {"token": "t"}, fence=LeaseFence("node-a"))
        assert (await store.connections.get_credentials(cid)) == {}
        await store.connections.set_credentials(cid, {"token": "t"}, fence=LeaseFence("node-b", moved.epoch))
        assert (await store.connections.get_credentials(cid)) == {"token": "t"}


async def test_claims_belong_to_their_owner_who_renews_or_hands_them_back(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock, lease=TTL) as store:
        for peer in "ABC":
            await store.inbox.commit(msg(f"{peer}1", peer))
        a = await store.inbox.claim_ready(2, owner="node-a")
        b = await store.inbox.claim_ready(2, owner="node-b")
        assert [e.message.message_id for e in a] == ["A1", "B1"] and [e.message.message_id for e in b] == ["C1"]
        clock.advance(TTL - 1)
        assert await store.inbox.renew_claims("node-a", TTL) == 2  # node-a lives: its claims hold
        clock.advance(2)  # node-b's claim ran out (a dead host): handed out again
        [again] = await store.inbox.claim_ready(5, owner="node-a")
        assert again.message.message_id == "C1" and again.attempts == 2
        assert await store.inbox.release_claims("node-b") == 0
        assert await store.inbox.release_claims("node-a") == 3  # a clean stop: at once
        assert len(await store.inbox.claim_ready(5, owner="node-b")) == 3


async def test_outbox_claims_can_be_limited_to_channels(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        for channel in ("ch1", "ch2", "ch3"):
            await store.outbox.enqueue(channel, f"out_{channel}:dm:p:1", {"n": 1})
        mine = await store.outbox.claim_ready(10, owner="node-a", channels={"ch2", "ch3"})
        assert sorted(e.channel_id for e in mine) == ["ch2", "ch3"]
        assert await store.outbox.claim_ready(10, owner="node-a", channels=[]) == []
        [rest] = await store.outbox.claim_ready(10, owner="node-b")
        assert rest.channel_id == "ch1"
        assert await store.outbox.renew_claims("node-b", 30.0) == 1
        await store.pipeline.finish_inbound(-1, [Delivery("ch1", "out_ch1:dm:p:2", {})])  # unknown entry: nothing
        assert await store.outbox.get_by_request_id("out_ch1:dm:p:2") is None
