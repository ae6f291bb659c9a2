"""The connections a plugin process serves, and its `on_connect` / `on_disconnect` hooks.

A connection is handed to the process by `initialize.connections` (started after
the handshake, in the background) or `connection.resume` (SPEC 10; a resume of a
connection already served restarts it with the new info, e.g. credentials after
a re-login). It is taken back by `connection.release`, after a successful
`connection.logout`, or when the host answers a state write with -32018 (this
host no longer owns it). A plugin starts an account's receive loop in
`on_connect` (with `plugin.start_background`) and stops it in `on_disconnect`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

import anyio

from ..errors import METHOD_NOT_FOUND, RpcError
from ..locks import KeyedLock
from ..protocol import ConnectionInfo
from .context import Context

if TYPE_CHECKING:
    from .plugin import Plugin

ConnectHook = Callable[[Context, ConnectionInfo], Awaitable[None]]
DisconnectHook = Callable[[Context, str], Awaitable[None]]

CONNECT_CONCURRENCY = 16  # on_connect hooks run at once when a plugin (re)starts with many connections
log = logging.getLogger(__name__)


class ServedConnections:
    """connectionId -> ConnectionInfo of what this process serves, changed one connection at a time."""

    def __init__(self, plugin: Plugin) -> None:
        self._plugin = plugin
        self._served: dict[str, ConnectionInfo] = {}
        self.view: Mapping[str, ConnectionInfo] = MappingProxyType(self._served)
        self._locks = KeyedLock()

    async def connect(self, info: ConnectionInfo) -> None:
        """Serve `info` (restarting it when it is already served); an on_connect failure is raised."""
        async with self._locks(info.connection_id):
            await self._stop(info.connection_id)
            await self._start(info)

    async def connect_all(self, infos: Sequence[ConnectionInfo]) -> None:
        """Serve each of `infos` concurrently; a failure is logged and leaves only that one unserved."""

        async def one(info: ConnectionInfo) -> None:
            try:
                await self.connect(info)
            except Exception:
                log.exception("connection %s: on_connect failed; it is not served", info.connection_id)

        limiter = anyio.CapacityLimiter(CONNECT_CONCURRENCY)  # thousands of accounts must not flood the host

        async def bounded(info: ConnectionInfo) -> None:
            async with limiter:
                await one(info)

        async with anyio.create_task_group() as tg:
            for info in infos:
                tg.start_soon(bounded, info)

    async def disconnect(self, connection_id: str) -> bool:
        """Stop serving a connection; False when it was not served."""
        async with self._locks(connection_id):
            return await self._stop(connection_id)

    async def fenced(self, connection_id: str) -> None:
        """The host refused a write for lack of the lease: stop at once.

        Not under the connection's lock: the refused write may come from inside
        an on_connect hook, which holds it.
        """
        if await self._stop(connection_id):
            self._plugin.log.warning("connection %s: fenced by the host (-32018); no longer served", connection_id)

    async def _start(self, info: ConnectionInfo) -> None:
        plugin = self._plugin
        connection_id = info.connection_id
        try:
            await plugin.state.pin(connection_id)  # the epoch of this handover, sent with every put
        except RpcError as exc:
            if exc.code != METHOD_NOT_FOUND:  # a host without state.*: nothing to pin
                plugin.log.warning(
                    "connection %s: its state epoch is unknown (%s); asked again at the first write",
                    connection_id,
                    exc.message,
                )
        self._served[connection_id] = info
        ctx = Context(plugin)
        try:
            for hook in plugin._on_connect:
                await hook(ctx, info)
        except BaseException:
            # a half-started connection (a receive loop already running) is stopped again
            with anyio.CancelScope(shield=True):
                await self._stop(connection_id)
            raise

    async def _stop(self, connection_id: str) -> bool:
        if self._served.pop(connection_id, None) is None:
            return False
        plugin = self._plugin
        plugin.state.unpin(connection_id)
        ctx = Context(plugin)
        for hook in plugin._on_disconnect:
            try:
                with anyio.move_on_after(plugin.shutdown_grace):
                    await hook(ctx, connection_id)
            except Exception:
                plugin.log.exception(
                    "connection %s: on_disconnect hook %s failed", connection_id, getattr(hook, "__name__", hook)
                )
        return True
