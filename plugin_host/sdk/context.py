"""What a handler sees: the request context and the client for plugin -> host calls."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import OVERLOADED, UNAVAILABLE, RpcError
from ..protocol import (
    BridgeEvent,
    ConnectionStatus,
    ConnectionStatusParams,
    InboundAck,
    LogParams,
    SessionUpdate,
    encode_checked,
)
from ..rpc import Connection, Id

if TYPE_CHECKING:
    from .plugin import Plugin
    from .state import HostState

DEFAULT_HOST_CALL_TIMEOUT = 30.0
_OVERLOAD_FIRST_PAUSE = 0.05
_OVERLOAD_MAX_PAUSE = 1.0
_LOG_LEVELS = frozenset({"debug", "info", "warning", "error"})


class HostClient:
    """Plugin -> host messages (SPEC 3.4) over the plugin's one connection."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def connected(self) -> bool:
        return not self._conn.closed

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = DEFAULT_HOST_CALL_TIMEOUT,
        result_type: Any = Any,
    ) -> Any:
        """A request to the host; raises `RpcError` (-32001 on timeout).

        A host that answers -32004 (its queue of this plugin's requests is full) is
        asked again with backoff within `timeout`: a burst (hundreds of accounts
        resumed at once) waits for room instead of failing.
        """
        deadline = None if timeout is None else anyio.current_time() + timeout
        pause = _OVERLOAD_FIRST_PAUSE
        while True:
            left = None if deadline is None else deadline - anyio.current_time()
            try:
                return await self._conn.call(method, params, timeout=left, result_type=result_type)
            except RpcError as exc:
                if exc.code != OVERLOADED or (deadline is not None and anyio.current_time() + pause >= deadline):
                    raise
            await anyio.sleep(pause)
            pause = min(pause * 2, _OVERLOAD_MAX_PAUSE)

    async def notify(self, method: str, params: Any = None) -> None:
        await self._conn.notify(method, params)

    async def inbound(self, event: BridgeEvent, *, timeout: float | None = DEFAULT_HOST_CALL_TIMEOUT) -> InboundAck:
        """Deliver one inbound message (`event.inbound`) and return the host's answer.

        An event the host would refuse (an empty id, a bad timestamp...) raises
        ValueError here, with the reason, instead of travelling."""
        return await self.call("event.inbound", encode_checked(event), timeout=timeout, result_type=InboundAck)

    async def session_update(self, update: SessionUpdate) -> None:
        await self._conn.notify("session.update", encode_checked(update))

    async def connection_status(self, connection_id: str, status: ConnectionStatus, error: str | None = None) -> None:
        params = ConnectionStatusParams(connection_id, status, error)
        await self._conn.notify("connection.status", encode_checked(params))

    async def log(self, level: str, message: str, **fields: Any) -> None:
        """A structured `log` notification; the host redacts and forwards it to its logger."""
        if level not in _LOG_LEVELS:
            raise ValueError(f"log level must be one of {sorted(_LOG_LEVELS)}, not {level!r}")
        await self._conn.notify("log", LogParams(level, message, fields or None))  # type: ignore[arg-type]


class Context:
    """Passed to every handler: who is asking, and the plugin's shared state.

    Created per request, so it stays a few slots; everything else is read
    through the plugin. `cancel_scope` is the request's scope while the handler
    runs (cancelling it answers -32800); do not keep it past the handler's
    return: a request worker reuses an uncancelled scope for its next request.
    """

    __slots__ = ("_plugin", "request_id", "method", "cancel_scope")

    def __init__(
        self,
        plugin: Plugin,
        request_id: Id = None,
        method: str | None = None,
        cancel_scope: anyio.CancelScope | None = None,
    ) -> None:
        self._plugin = plugin
        self.request_id = request_id
        self.method = method
        self.cancel_scope = cancel_scope

    @property
    def plugin(self) -> Plugin:
        return self._plugin

    @property
    def host(self) -> HostClient:
        return self._plugin.host

    @property
    def state(self) -> HostState:
        """Host-kept state (SPEC 3.4): `await ctx.state.get/put/delete(key, connection_id=...)`."""
        return self._plugin.state

    @property
    def state_dir(self) -> str:
        return self._plugin.state_dir

    @property
    def config(self) -> dict[str, Any]:
        return self._plugin.config

    @property
    def log(self) -> logging.Logger:
        return self._plugin.log


def not_connected() -> RpcError:
    return RpcError(UNAVAILABLE, "the plugin is not connected to a host (serve() is not running)")
