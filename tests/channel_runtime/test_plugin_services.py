"""Plugin → host methods answered by the runtime, through real plugin processes (raw JSON-RPC, no SDK).

`state.get`/`state.put` (SPEC 3.4): scoped per plugin and per connection, limits with
clear errors, kept across a restart of the whole service and a hot swap of the plugin,
forgotten when the connection is revoked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from channel_runtime.runtime import ChannelRuntime
from plugin_host.host import PluginHost
from plugin_host.protocol import STATE_VALUE_MAX_BYTES
from tests.fault_plugins import default_host_env, raw_plugin_zip

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def service(home: Path) -> AsyncIterator[tuple[ChannelRuntime, PluginHost]]:
    host = PluginHost(home, host_env=default_host_env())
    runtime = ChannelRuntime(store=f"sqlite:///{home / 'state.db'}", plugin_host=host, home=home)
    async with runtime, host:  # the runtime first: starting plugins ask it what to resume
        yield runtime, host


async def ask(host: PluginHost, plugin_id: str, method: str, params: dict[str, Any]) -> Any:
    """Make the plugin send `method` to the host; the host's result, or its error object."""
    sup = host.supervisor(plugin_id)
    assert sup is not None
    return await sup.call("ask_host", {"method": method, "params": params}, timeout=10)


async def test_state_is_kept_per_plugin_and_connection_across_restarts_and_hot_swaps(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with service(home) as (runtime, host):
        for plugin_id in ("raw", "other"):
            await host.install(raw_plugin_zip(tmp_path, plugin_id))
            await host.enable(plugin_id)
        conn = await runtime.store.connections.create(kind="raw", plugin_id="raw", status="connected")
        cid = conn.connection_id

        put = await ask(host, "raw", "state.put", {"key": "cursor", "value": {"buf": "b-1"}, "connectionId": cid})
        assert put == {"epoch": 0}
        assert await ask(host, "raw", "state.put", {"key": "mode", "value": "fast", "connectionId": None}) == {
            "epoch": 0
        }
        got = await ask(host, "raw", "state.get", {"key": "cursor", "connectionId": cid})
        assert got == {"value": {"buf": "b-1"}, "epoch": 0}
        assert (await ask(host, "raw", "state.get", {"key": "unset", "connectionId": cid}))["value"] is None

        # another plugin can neither read nor write this plugin's connection, nor see its plugin-wide keys
        foreign = await ask(host, "other", "state.get", {"key": "cursor", "connectionId": cid})
        assert foreign["code"] == -32011 and cid in foreign["message"]
        assert (await ask(host, "other", "state.get", {"key": "mode", "connectionId": None}))["value"] is None
        unknown = await ask(host, "raw", "state.put", {"key": "k", "value": 1, "connectionId": "conn_nope"})
        assert unknown["code"] == -32011

        # limits answer -32602 with the bound, and change nothing
        big = await ask(
            host, "raw", "state.put", {"key": "cursor", "value": "x" * STATE_VALUE_MAX_BYTES, "connectionId": cid}
        )
        assert big["code"] == -32602 and big["data"] == {"limit": STATE_VALUE_MAX_BYTES}
        assert "65536" in big["message"]
        long_key = await ask(host, "raw", "state.get", {"key": "k" * 513, "connectionId": cid})
        assert long_key["code"] == -32602
        no_key = await ask(host, "raw", "state.get", {"connectionId": cid})
        assert no_key["code"] == -32602  # `key` is not optional

        # hot swap to a new version: the state follows the plugin id
        await host.install(raw_plugin_zip(tmp_path, "raw", version="1.1.0"))
        await host.activate("raw", "1.1.0")
        assert host.describe("raw")["runningVersion"] == "1.1.0"
        got = await ask(host, "raw", "state.get", {"key": "cursor", "connectionId": cid})
        assert got["value"] == {"buf": "b-1"}

    # the whole service restarted on the same home
    async with service(home) as (runtime, host):
        assert (await ask(host, "raw", "state.get", {"key": "cursor", "connectionId": cid}))["value"] == {"buf": "b-1"}
        assert (await ask(host, "raw", "state.get", {"key": "mode", "connectionId": None}))["value"] == "fast"
        # a deleted value is gone; a revoked connection forgets its state and refuses new writes
        await ask(host, "raw", "state.put", {"key": "mode", "value": None, "connectionId": None})
        assert (await ask(host, "raw", "state.get", {"key": "mode", "connectionId": None}))["value"] is None
        assert runtime.connections is not None
        await runtime.connections.logout(cid)
        assert await runtime.store.plugin_state.get("raw", cid, "cursor") is None
        revoked = await ask(host, "raw", "state.put", {"key": "cursor", "value": "late", "connectionId": cid})
        assert revoked["code"] == -32011


async def test_hundreds_of_connections_resumed_at_once_are_all_served(tmp_path: Path) -> None:
    """A restart hands every connection over in `initialize`; each `on_connect` asks the host for state.

    Started all at once they used to exceed the host's bound on a plugin's requests in
    flight (maxConcurrency + 256: -32004), and the refused ones were silently left unserved.
    """
    from plugin_host.package import pack_directory
    from tests.support import REPO, eventually

    home = tmp_path / "home"
    count = 600
    async with service(home) as (runtime, host):
        for n in range(count):
            record = await runtime.store.connections.create(kind="echo", plugin_id="echo", status="connected")
            await runtime.store.connections.set_credentials(record.connection_id, {"token": f"tok-{n:04d}-x"})
        await host.install(pack_directory(REPO / "plugins" / "echo", tmp_path / "echo.zip"))
        await host.enable("echo")

        async def served_all() -> bool:
            health = await host.client("echo").health()
            return len(health.connections or {}) == count

        assert await eventually(served_all, timeout=60)

        # a connection counts as served while its on_connect still runs: its write lands a moment later
        records = await runtime.store.connections.list(plugin_id="echo")

        async def counts() -> list[Any]:
            return [await runtime.store.plugin_state.get("echo", r.connection_id, "handovers") for r in records]

        async def each_handed_over_once() -> bool:
            return await counts() == [1] * count

        await eventually(each_handed_over_once, timeout=30)  # a second handover would never come back to 1
        assert await counts() == [1] * count
