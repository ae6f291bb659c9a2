"""`ctx.state` / `plugin.state`: host-kept state (SPEC 3.4) over JSON-RPC, epochs and fencing."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from plugin_host.errors import FENCED, INVALID_PARAMS, RpcError
from plugin_host.protocol import STATE_VALUE_MAX_BYTES, ConnectionInfo
from plugin_host.sdk import Context, Plugin
from plugin_host.sdk.testing import PluginHarness

pytestmark = pytest.mark.anyio


class Cursor(msgspec.Struct):
    offset: int
    token: str


def info(connection_id: str = "conn_1") -> ConnectionInfo:
    return ConnectionInfo(connection_id, "ch_1", "test", "acc", "Test", {}, {"token": "t"})


def puts(h: PluginHarness) -> list[dict[str, Any]]:
    return [params for method, params in h.calls if method == "state.put"]


async def test_get_put_delete_typed_and_scoped() -> None:
    plugin = Plugin(name="t", version="1")
    async with PluginHarness.in_process(plugin) as h:
        state = plugin.state
        assert await state.get("cursor", connection_id="conn_1") is None
        await state.put("cursor", {"offset": 3, "token": "abc"}, connection_id="conn_1")
        assert await state.get("cursor", connection_id="conn_1", type=Cursor) == Cursor(3, "abc")
        assert await state.get("cursor", connection_id="conn_2") is None  # per connection
        assert await state.get("cursor") is None  # plugin-wide is another scope
        await state.put("names", ["a", "b"])
        assert await state.get("names", type=list[str]) == ["a", "b"]
        with pytest.raises(msgspec.ValidationError):
            await state.get("names", type=int)
        await state.delete("cursor", connection_id="conn_1")
        assert h.state.keys("conn_1") == [] and h.state.value("names") == ["a", "b"]
        # plugin-wide writes carry no epoch; per-connection ones carry the connection's
        assert [p["epoch"] for p in puts(h)] == [1, None, 1]


async def test_a_value_over_64_kib_is_refused_before_it_travels() -> None:
    plugin = Plugin(name="t", version="1")
    async with PluginHarness.in_process(plugin) as h:
        with pytest.raises(ValueError, match="65536"):
            await plugin.state.put("big", "x" * STATE_VALUE_MAX_BYTES)
        assert puts(h) == []
        await plugin.state.put("fits", "x" * (STATE_VALUE_MAX_BYTES - 2))  # 65,536 bytes with its quotes
        assert h.state.value("fits") is not None


async def test_host_refusals_reach_the_caller() -> None:
    plugin = Plugin(name="t", version="1")
    async with PluginHarness.in_process(plugin) as h:
        with pytest.raises(RpcError) as exc:
            await plugin.state.get("")  # no empty keys: the host answers -32602
        assert exc.value.code == INVALID_PARAMS
        assert h.protocol_errors  # the harness saw params that do not match the schema


async def test_the_epoch_is_pinned_at_the_hand_over_and_a_fenced_write_stops_the_connection() -> None:
    plugin = Plugin(name="t", version="1")
    events: list[str] = []

    @plugin.on_connect
    async def connect(ctx: Context, connection: ConnectionInfo) -> None:
        events.append(f"connect {plugin.state.epoch(connection.connection_id)}")

    @plugin.on_disconnect
    async def disconnect(ctx: Context, connection_id: str) -> None:
        events.append("disconnect")

    async with PluginHarness.in_process(plugin) as h:
        h.state.set_epoch("conn_1", 4)
        await h.resume(info())
        assert events == ["connect 4"]
        await plugin.state.put("k", 1, connection_id="conn_1")
        h.state.set_epoch("conn_1", 5)  # the lease moved to another host
        with pytest.raises(RpcError) as exc:
            await plugin.state.put("k", 2, connection_id="conn_1")
        assert exc.value.code == FENCED
        assert events == ["connect 4", "disconnect"] and "conn_1" not in plugin.connections
        assert h.state.value("k", connection_id="conn_1") == 1
        await h.resume(info())  # handed back: the new epoch is pinned
        await plugin.state.put("k", 3, connection_id="conn_1")
        assert events[-1] == "connect 5" and h.state.value("k", connection_id="conn_1") == 3


async def test_a_write_from_a_background_task_and_for_a_connection_not_served() -> None:
    plugin = Plugin(name="t", version="1")
    done = anyio.Event()

    async def poll() -> None:
        await plugin.state.put("cursor", "c9", connection_id="conn_7")  # no hand-over yet: epoch fetched first
        done.set()

    async with PluginHarness.in_process(plugin) as h:
        plugin.start_background(poll)
        with anyio.fail_after(5):
            await done.wait()
        assert h.state.value("cursor", connection_id="conn_7") == "c9"
        assert plugin.state.epoch("conn_7") == 1
        h.state.set_epoch("conn_7", 2)
        with pytest.raises(RpcError) as exc:
            await plugin.state.put("cursor", "c10", connection_id="conn_7")
        assert exc.value.code == FENCED  # raised; nothing was served, so no hook runs


async def test_context_state_is_the_plugins() -> None:
    plugin = Plugin(name="t", version="1")

    @plugin.method("remember")
    async def remember(ctx: Context, params: Any) -> Any:
        await ctx.state.put("last", params["value"], connection_id=params["connectionId"])
        return await ctx.state.get("last", connection_id=params["connectionId"])

    async with PluginHarness.in_process(plugin) as h:
        assert await h.call("remember", {"value": {"n": 1}, "connectionId": "c"}) == {"n": 1}
        assert plugin.state is Context(plugin).state


def test_the_harness_keeps_the_hosts_limits() -> None:
    from plugin_host.protocol import STATE_KEYS_PER_CONNECTION, StatePutParams
    from plugin_host.sdk.testing import MemoryState

    state = MemoryState()
    for n in range(STATE_KEYS_PER_CONNECTION):
        state.put(StatePutParams(f"k{n}", n, "c1"))
    with pytest.raises(RpcError) as exc:
        state.put(StatePutParams("one_more", 1, "c1"))
    assert exc.value.code == INVALID_PARAMS and exc.value.data == {"limit": STATE_KEYS_PER_CONNECTION}
    state.put(StatePutParams("k0", "overwrite", "c1"))  # an existing key is no new key
    state.put(StatePutParams("k1", None, "c1"))  # a delete frees one
    state.put(StatePutParams("one_more", 1, "c1"))
    state.put(StatePutParams("elsewhere", 1, "c2"))  # another scope
    with pytest.raises(RpcError) as exc:
        state.put(StatePutParams("big", "x" * STATE_VALUE_MAX_BYTES, None))
    assert exc.value.data == {"limit": STATE_VALUE_MAX_BYTES}
