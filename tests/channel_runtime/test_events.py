"""EventHub: a bounded ring, resume by id, bounded subscribers, slow subscribers dropped (GET /api/events)."""

from __future__ import annotations

import anyio
import pytest

from channel_runtime import ChannelConfig, OutboundMessage
from channel_runtime.events import EventHub, TooManySubscribers
from channel_runtime.runtime import ChannelRuntime
from plugin_host.clock import FakeClock
from plugin_host.errors import REFUSED, RpcError
from plugin_host.protocol import SendRequest, SendResult
from tests.support import eventually

pytestmark = pytest.mark.anyio


async def drain(stream: anyio.abc.ObjectReceiveStream) -> list:  # type: ignore[type-arg]
    out = []
    while True:
        try:
            out.append(stream.receive_nowait())
        except anyio.WouldBlock:
            return out
        except anyio.EndOfStream:
            out.append(None)  # the end
            return out


async def test_resume_from_an_id_gets_what_was_missed() -> None:
    hub = EventHub(clock=FakeClock(), ring_size=5)
    first = hub.publish("channel.state", {"channelId": "a", "state": "running", "lastError": None})
    for n in range(3):
        hub.publish("channel.state", {"channelId": f"c{n}", "state": "running", "lastError": None})
    async with hub.subscribe(first.id) as stream:
        missed = await drain(stream)
        assert [e.data["channelId"] for e in missed] == ["c0", "c1", "c2"]
        live = hub.publish("plugin.state", {"pluginId": "p", "state": "running", "previous": "starting"})
        assert await drain(stream) == [live]
    async with hub.subscribe(live.id) as stream:
        assert await drain(stream) == []  # nothing missed
    async with hub.subscribe(None) as stream:
        assert await drain(stream) == []  # a new subscriber starts from now


@pytest.mark.parametrize("last", ["gap", "other-run", "future", "garbage"])
async def test_an_id_the_ring_cannot_resume_from_gets_a_reset_first(last: str) -> None:
    hub = EventHub(clock=FakeClock(), ring_size=3)
    first = hub.publish("x", {"n": 0})
    for n in range(5):
        hub.publish("x", {"n": n + 1})  # the first event left the ring
    wanted = {
        "gap": first.id,
        "other-run": "deadbeef-3",
        "future": f"{hub.run}-999",
        "garbage": "not an id",
    }[last]
    async with hub.subscribe(wanted) as stream:
        [reset] = await drain(stream)
        assert reset.type == "reset" and reset.data == {"reason": "cannot_resume"}
        assert reset.id == f"{hub.run}-6"  # resuming from it works from here on
    assert hub.since(reset.id) == []


async def test_a_slow_subscriber_is_dropped_and_publishing_never_waits() -> None:
    hub = EventHub(clock=FakeClock(), subscriber_buffer=4)
    async with hub.subscribe() as slow, hub.subscribe() as fast:
        for n in range(10):
            hub.publish("x", {"n": n})
            if n % 2:
                await drain(fast)  # keeps up
        assert hub.subscribers == 1 and hub.dropped == 1
        received = await drain(slow)
        assert [e.data["n"] for e in received[:-1]] == [0, 1, 2, 3] and received[-1] is None  # then its end
        hub.publish("x", {"n": 10})
        assert [e.data["n"] for e in await drain(fast)] == [10]


async def test_subscribers_are_bounded() -> None:
    hub = EventHub(clock=FakeClock(), max_subscribers=2)
    async with hub.subscribe(), hub.subscribe():
        with pytest.raises(TooManySubscribers) as refused:
            async with hub.subscribe():
                pass
        assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "5"}
    async with hub.subscribe():  # places free up when subscribers leave
        assert hub.subscribers == 1


async def test_the_runtime_publishes_channel_and_delivery_changes() -> None:
    async with ChannelRuntime(None, "memory://", idle_poll=0.02) as rt:
        async with rt.events.subscribe() as stream:
            await rt.add_channel("a", ChannelConfig(kind="memory"))
            channel = rt.channels["a"]

            async def refuse(request: SendRequest) -> SendResult:
                raise RpcError(REFUSED, "content rejected")

            channel.on_send = refuse  # type: ignore[attr-defined]
            delivery_id = await rt.send(OutboundMessage(channel_id="a", peer_id="u1", content="x"))
            await rt.wait_delivery(delivery_id, timeout=10)
            events = await eventually(lambda: drain(stream))
            while not any(e.type == "delivery.dead" for e in events):
                events += await drain(stream)
                await anyio.sleep(0.01)
        states = [e.data["state"] for e in events if e.type == "channel.state"]
        assert states == ["starting", "running"]
        [dead] = [e for e in events if e.type == "delivery.dead"]
        assert dead.data == {
            "id": delivery_id,
            "direction": "outbound",
            "requestId": dead.data["requestId"],
            "channelId": "a",
            "peerId": "u1",
            "reason": "refused",
            "lastError": "content rejected",
        }
