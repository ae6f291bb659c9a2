"""ActivityCounts: per-minute counts per channel over the last hour (the admin overview)."""

from __future__ import annotations

import pytest

from channel_runtime import ChannelConfig, OutboundMessage
from channel_runtime.activity import MAX_CHANNELS, ActivityCounts
from channel_runtime.channels import MemoryChannel
from channel_runtime.runtime import ChannelRuntime
from plugin_host.clock import FakeClock
from plugin_host.protocol import SendRequest, SendResult
from tests.support import eventually


def test_counts_land_in_their_minute_and_leave_after_an_hour() -> None:
    clock = FakeClock(wall=1_800_000_000.0)  # a minute boundary: 30,000,000 minutes
    counts = ActivityCounts(clock)
    counts.count("a", "in")
    counts.count("a", "in")
    clock.advance(61)
    counts.count("a", "sent")
    counts.count("b", "dead", 3)
    window = counts.window()
    assert window["minutes"] == 60
    assert window["start"] == (1_800_000_060 // 60 - 59) * 60
    a = window["channels"]["a"]
    assert a["in"][-2:] == [2, 0] and a["sent"][-2:] == [0, 1] and sum(a["in"]) == 2
    assert window["channels"]["b"]["dead"][-1] == 3
    assert all(len(series) == 60 for series in a.values())

    clock.advance(59 * 60)  # the first minute is now 60 minutes old: out of the window
    window = counts.window()
    assert sum(window["channels"]["a"]["in"]) == 0 and window["channels"]["a"]["sent"][0] == 1
    clock.advance(60)
    assert counts.window()["channels"] == {}  # nothing in the last hour


def test_memory_stays_bounded() -> None:
    clock = FakeClock()
    counts = ActivityCounts(clock)
    for _ in range(300):
        counts.count("a", "in")
        clock.advance(60)
    assert len(counts._channels["a"]) <= 60
    for n in range(MAX_CHANNELS + 50):
        counts.count(f"c{n}", "in")
    assert len(counts._channels) == MAX_CHANNELS


@pytest.mark.anyio
async def test_the_runtime_counts_inbound_messages_and_delivery_outcomes() -> None:
    async with ChannelRuntime(None, "memory://", retry_base=0.01, retry_cap=0.05, idle_poll=0.02) as rt:
        await rt.add_channel("a", ChannelConfig(kind="memory", account_id="bot"))
        channel = rt.channels["a"]
        assert isinstance(channel, MemoryChannel)
        attempts = 0

        async def flaky(request: SendRequest) -> SendResult:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise ConnectionError("down once")
            return SendResult(duplicate=False, provider_message_id=f"p{attempts}")

        channel.on_send = flaky
        assert await channel.receive("u1", "hi", message_id="m1")
        assert not await channel.receive("u1", "hi", message_id="m1")  # a duplicate is not counted
        await eventually(lambda: len(channel.sent) == 1)
        await rt.send(OutboundMessage(channel_id="a", peer_id="u2", content="x", message_id="x"))
        await eventually(lambda: len(channel.sent) == 2)
        series = rt.activity.window()["channels"]["a"]
        assert (sum(series["in"]), sum(series["sent"]), sum(series["deferred"]), sum(series["dead"])) == (1, 2, 1, 0)
