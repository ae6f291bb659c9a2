"""`StateBuckets`: many entries in a fixed number of host-state keys, expiring, within the value limit.

Every instance here talks to real host-kept state: the SDK's `HostState` over
JSON-RPC to the harness, which keeps the values in memory with the host's limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plugin_host.clock import FakeClock
from plugin_host.protocol import STATE_VALUE_MAX_BYTES
from plugin_host.sdk import Plugin, StateBuckets
from plugin_host.sdk.buckets import EntryTooLarge, bucket_key
from plugin_host.sdk.testing import PluginHarness

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def buckets(clock: FakeClock, **options: object) -> AsyncIterator[tuple[StateBuckets, PluginHarness]]:
    plugin = Plugin(name="t", version="1.0.0", clock=clock)
    async with PluginHarness.in_process(plugin) as h:
        settings = {"buckets": 8, "retention": 3600.0, **options}
        yield StateBuckets(plugin.state, "c1", "b:", clock=clock, **settings), h  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


async def test_entries_round_trip_through_host_state(clock: FakeClock) -> None:
    async with buckets(clock) as (store, h):
        await store.put("alice", "token-a")
        await store.put("bob", {"n": 1})
        assert await store.get("alice", type=str) == "token-a" and await store.get("bob") == {"n": 1}
        assert await store.get("carol") is None
        key = store.key("alice")
        assert key == bucket_key("b:", "alice", 8) and h.state.value(key, connection_id="c1")["alice"][0] == "token-a"
        # another instance (a restarted process) reads what the host kept
        fresh = StateBuckets(store.state, "c1", "b:", buckets=8, retention=3600.0, clock=clock)
        assert await fresh.get("alice") == "token-a"
        await store.put("alice", None)
        assert await store.get("alice") is None and await fresh.get("bob") == {"n": 1}


async def test_many_entries_use_at_most_the_bucket_count_of_keys(clock: FakeClock) -> None:
    async with buckets(clock) as (store, h):
        for n in range(500):
            await store.put(f"peer-{n}", f"t{n}")
        assert len(h.state.keys("c1")) <= 8
        assert await store.get("peer-0") == "t0" and await store.get("peer-499") == "t499"


async def test_entries_expire_after_the_retention(clock: FakeClock) -> None:
    async with buckets(clock, buckets=1) as (store, h):
        await store.put("old", "x")
        clock.advance(3000)
        await store.put("newer", "y")
        clock.advance(601)
        assert await store.get("old") is None and await store.get("newer") == "y"
        await store.put("newest", "z")  # a write drops what has expired from its key
        assert set(h.state.value("b:0", connection_id="c1")) == {"newer", "newest"}
        clock.advance(3601)
        await store.put("newest", None)  # nothing live is left: the key itself goes
        assert h.state.keys("c1") == []


async def test_a_full_key_drops_its_oldest_entries_first(clock: FakeClock) -> None:
    async with buckets(clock, buckets=1) as (store, h):
        value = "v" * 1000
        for n in range(80):  # ~80 KB: more than one value holds
            await store.put(f"e{n:02d}", value)
            clock.advance(1)
        kept = h.state.value("b:0", connection_id="c1")
        assert len(msgspec.json.encode(kept)) <= STATE_VALUE_MAX_BYTES
        assert "e79" in kept and "e00" not in kept
        assert sorted(kept) == [f"e{n:02d}" for n in range(80 - len(kept), 80)]
        with pytest.raises(EntryTooLarge):
            await store.put("huge", "h" * STATE_VALUE_MAX_BYTES)
        assert await store.get("e79") == value  # the refused write changed nothing


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from("abcdefgh"), st.one_of(st.none(), st.integers(0, 9)), st.floats(0, 900))))
async def test_it_behaves_like_a_dict_with_expiry(clock: FakeClock, steps: list[tuple[str, int | None, float]]) -> None:
    async with buckets(clock, buckets=3, retention=1000.0) as (store, _):
        model: dict[str, tuple[int, float]] = {}
        for entry_id, value, wait in steps:
            clock.advance(wait)
            await store.put(entry_id, value)
            if value is None:
                model.pop(entry_id, None)
            else:
                model[entry_id] = (value, clock.time())
            for known in "abcdefgh":
                live = model.get(known)
                expected = live[0] if live and live[1] >= clock.time() - 1000.0 else None
                assert await store.get(known) == expected
