"""Host-kept plugin state (SPEC 3.4): scopes, deletes, limits, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from channel_runtime.store import StateLimitError, open_store
from plugin_host.clock import FakeClock
from plugin_host.protocol import STATE_KEYS_PER_CONNECTION, STATE_VALUE_MAX_BYTES

pytestmark = pytest.mark.anyio


async def test_values_are_scoped_by_plugin_and_connection(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        state = store.plugin_state
        await state.put("weixin", "conn_a", "cursor", {"buf": "abc", "n": 1})
        await state.put("weixin", None, "cursor", "plugin-wide")
        await state.put("weixin", "conn_b", "cursor", [1, 2, 3])
        assert await state.get("weixin", "conn_a", "cursor") == {"buf": "abc", "n": 1}
        assert await state.get("weixin", None, "cursor") == "plugin-wide"
        assert await state.get("weixin", "conn_b", "cursor") == [1, 2, 3]
        assert await state.get("feishu", "conn_a", "cursor") is None  # another plugin sees nothing
        await state.put("weixin", "conn_a", "cursor", "replaced")
        assert await state.get("weixin", "conn_a", "cursor") == "replaced"


async def test_null_deletes_and_drop_forgets_a_scope(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        state = store.plugin_state
        await state.put("p", "c1", "k1", 1)
        await state.put("p", "c1", "k2", 2)
        await state.put("p", "c2", "k1", 3)
        await state.put("p", "c1", "k1", None)
        assert await state.get("p", "c1", "k1") is None
        await state.put("p", "c1", "never-set", None)  # deleting an unset key is a no-op
        assert await state.drop("p", "c1") == 1
        assert await state.get("p", "c1", "k2") is None and await state.get("p", "c2", "k1") == 3
        assert await state.drop("p") == 1
        assert await state.get("p", "c2", "k1") is None


async def test_a_value_over_64_kib_is_refused_and_changes_nothing(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        state = store.plugin_state
        await state.put("p", "c", "k", "small")
        fits = "x" * (STATE_VALUE_MAX_BYTES - 2)  # the JSON string adds two quotes
        await state.put("p", "c", "big", fits)
        with pytest.raises(StateLimitError, match="at most 65536") as caught:
            await state.put("p", "c", "k", "x" * (STATE_VALUE_MAX_BYTES - 1))
        assert caught.value.limit == STATE_VALUE_MAX_BYTES
        assert await state.get("p", "c", "k") == "small"
        assert len(await state.get("p", "c", "big")) == len(fits)


async def test_the_key_count_per_scope_is_bounded(url: str, clock: FakeClock) -> None:
    async with await open_store(url, clock=clock) as store:
        state = store.plugin_state
        assert state.keys_per_scope == STATE_KEYS_PER_CONNECTION
        state.keys_per_scope = 3  # the bound itself, small enough to reach in a test
        for key in ("a", "b", "c"):
            await state.put("p", "c1", key, key)
        with pytest.raises(StateLimitError, match="already keeps 3 state keys"):
            await state.put("p", "c1", "d", "d")
        await state.put("p", "c1", "a", "rewritten")  # rewriting a key is not a new key
        await state.put("p", "c2", "d", "d")  # other scopes have their own count
        await state.put("p", "c1", "b", None)  # a delete frees a slot
        await state.put("p", "c1", "d", "d")
        assert [await state.get("p", "c1", k) for k in "abcd"] == ["rewritten", None, "c", "d"]


async def test_state_survives_reopening_the_file(tmp_path: Path, clock: FakeClock) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    async with await open_store(url, clock=clock) as store:
        await store.plugin_state.put("weixin", "conn_a", "cursor", "buf-1")
    async with await open_store(url, clock=clock) as store:
        assert await store.plugin_state.get("weixin", "conn_a", "cursor") == "buf-1"
