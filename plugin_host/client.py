"""Host → plugin calls (SPEC 3.3, 10) as typed methods: `host.client(plugin_id).send(request)`.

Each call finds the plugin's current supervisor, so a client stays valid across
restarts and hot swaps; it raises `RpcError` (-32002 when the plugin is not
running). Timeouts are the manifest's per-method ones unless given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from .errors import UNAVAILABLE, RpcError
from .protocol import (
    ConnectionInfo,
    ConnectionRef,
    ConnectorSessionView,
    Empty,
    HealthResult,
    SendRequest,
    SendResult,
    SessionInputParams,
    SessionRef,
    SessionStartParams,
    WebhookParams,
    WebhookResult,
)
from .redact import credential_secrets

if TYPE_CHECKING:
    from .host import PluginHost

T = TypeVar("T")


class PluginClient:
    __slots__ = ("_host", "plugin_id")

    def __init__(self, host: PluginHost, plugin_id: str) -> None:
        self._host = host
        self.plugin_id = plugin_id

    async def _call(self, method: str, params: Any, result_type: type[T], timeout: float | None = None) -> T:
        sup = self._host.supervisor(self.plugin_id)
        if sup is None:
            raise RpcError(UNAVAILABLE, f"plugin {self.plugin_id} is not running")
        result: T = await sup.call(method, params, timeout=timeout, result_type=result_type)
        return result

    async def health(self, *, timeout: float | None = None) -> HealthResult:
        return await self._call("health", Empty(), HealthResult, timeout)

    async def session_start(self, params: SessionStartParams, *, timeout: float | None = None) -> ConnectorSessionView:
        return await self._call("session.start", params, ConnectorSessionView, timeout)

    async def session_get(self, session_id: str) -> ConnectorSessionView:
        return await self._call("session.get", SessionRef(session_id=session_id), ConnectorSessionView)

    async def session_input(self, session_id: str, value: Any, *, timeout: float | None = None) -> ConnectorSessionView:
        return await self._call(
            "session.input", SessionInputParams(session_id=session_id, input=value), ConnectorSessionView, timeout
        )

    async def session_cancel(self, session_id: str, *, timeout: float | None = None) -> None:
        await self._call("session.cancel", SessionRef(session_id=session_id), Empty, timeout)

    async def logout(self, connection_id: str, *, timeout: float | None = None) -> None:
        await self._call("connection.logout", ConnectionRef(connection_id=connection_id), Empty, timeout)

    async def send(self, request: SendRequest, *, timeout: float | None = None) -> SendResult:
        return await self._call("message.send", request, SendResult, timeout)

    async def webhook(self, params: WebhookParams) -> WebhookResult:
        return await self._call("webhook.handle", params, WebhookResult)

    async def resume(self, info: ConnectionInfo) -> None:
        """SPEC 10: serve this connection from now on (credentials included)."""
        sup = self._host.supervisor(self.plugin_id)
        if sup is not None:  # whatever the plugin logs of them from now on is masked
            shown = [info.connection_id, info.channel_id, info.account_id, info.display_name]
            sup.redactor.add(*credential_secrets(info.credentials, public=shown))
        await self._call("connection.resume", info, Empty)

    async def release(self, connection_id: str) -> None:
        """SPEC 10: stop receiving for this connection (no logout)."""
        await self._call("connection.release", ConnectionRef(connection_id=connection_id), Empty)
