"""Stand-ins for SDK parts that are landing in parallel (host-kept state, connection hooks).

Removed once `plugin_host.sdk` has `plugin.state` and `@plugin.on_connect` /
`@plugin.on_disconnect`: they do the same over the same wire methods.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from plugin_host.protocol import (
    ConnectionInfo,
    ConnectionRef,
    InitializeParams,
    StateGetParams,
    StateGetResult,
    StatePutParams,
)
from plugin_host.sdk import Context, Plugin


class HostStateClient:
    """`state.get` / `state.put` (SPEC 3.4) over the plugin's host connection."""

    def __init__(self, plugin: Plugin) -> None:
        self._plugin = plugin

    async def get(self, key: str, *, connection_id: str | None = None, type: Any = Any) -> Any:
        result = await self._plugin.host.call(
            "state.get", StateGetParams(key=key, connection_id=connection_id), result_type=StateGetResult
        )
        return result.value

    async def put(self, key: str, value: Any, *, connection_id: str | None = None) -> None:
        await self._plugin.host.call("state.put", StatePutParams(key=key, value=value, connection_id=connection_id))


def connection_hooks(
    plugin: Plugin,
    on_connect: Callable[[Context, ConnectionInfo], Awaitable[None]],
    on_disconnect: Callable[[Context, str], Awaitable[None]],
) -> None:
    """Connections from `initialize` and `connection.resume` go to `on_connect`; `connection.release` to `on_disconnect`."""

    @plugin.on_initialize
    async def resume_all(ctx: Context, params: InitializeParams) -> None:
        for info in params.connections:
            plugin.start_background(on_connect, ctx, info, name=f"connect-{info.connection_id}")

    @plugin.method("connection.resume")
    async def resume(ctx: Context, params: ConnectionInfo) -> dict[str, Any]:
        await on_connect(ctx, params)
        return {}

    @plugin.method("connection.release")
    async def release(ctx: Context, params: ConnectionRef) -> dict[str, Any]:
        await on_disconnect(ctx, params.connection_id)
        return {}
