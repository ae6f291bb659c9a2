"""Channel kinds (SPEC 6.2): what a channel is, and the built-in kinds.

A channel is something the runtime can start, stop and send through. Inbound
messages do not come *from* a channel object: plugins, sidecars and webhooks
feed the one inbound pipeline (`ChannelRuntime.ingest`), and local channels call
`ChannelRuntime.accept`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx
import msgspec

from plugin_host.errors import IN_PROGRESS, RATE_LIMITED, REFUSED, UNKNOWN_CONNECTION, RpcError
from plugin_host.protocol import SendRequest, SendResult

from .config import ChannelConfig
from .messages import ChannelIdentity, InboundMessage

if TYPE_CHECKING:
    from .runtime import ChannelRuntime


class DeliveryError(Exception):
    """A failed delivery: `retry_after` asks for a later retry, `permanent` for a dead letter now."""

    def __init__(self, message: str, *, retry_after: float | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Channel(Protocol):
    channel_id: str
    config: ChannelConfig
    identity: ChannelIdentity

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def send(self, request: SendRequest) -> SendResult: ...


ChannelFactory = Callable[["ChannelRuntime", str, ChannelConfig], Channel]


class _BaseChannel:
    def __init__(self, runtime: ChannelRuntime, channel_id: str, config: ChannelConfig) -> None:
        self.runtime = runtime
        self.channel_id = channel_id
        self.config = config
        self.identity = ChannelIdentity(
            channel_id=channel_id,
            kind=config.connector_kind,
            account_id=config.account_id,
            connection_id=config.connection_id,
            display_name=config.display_name,
        )

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class MemoryChannel(_BaseChannel):
    """In-process channel (`memory`/`local`) for tests and embedding.

    Sends are recorded in `sent`; set `on_send` to answer or fail them. `receive`
    feeds a message into the runtime as if a platform had delivered it.
    """

    def __init__(self, runtime: ChannelRuntime, channel_id: str, config: ChannelConfig) -> None:
        super().__init__(runtime, channel_id, config)
        self.sent: list[SendRequest] = []
        self.on_send: Callable[[SendRequest], Awaitable[SendResult | None]] | None = None
        self.started = False

    async def start(self) -> None:
        if self.config.config.get("failStart"):
            raise RuntimeError(f"channel {self.channel_id} was configured to fail its start")
        self.started = True

    async def stop(self) -> None:
        self.started = False

    async def send(self, request: SendRequest) -> SendResult:
        result = await self.on_send(request) if self.on_send is not None else None
        self.sent.append(request)
        return result or SendResult(duplicate=False, provider_message_id=f"mem_{len(self.sent)}")

    async def receive(
        self, peer_id: str, content: str, *, message_id: str, peer_type: str = "dm", **fields: Any
    ) -> bool:
        """Deliver an inbound message; False when its id was already seen."""
        message = InboundMessage(
            message_id=message_id,
            channel_id=self.channel_id,
            kind=self.identity.kind,
            peer_id=peer_id,
            peer_type=peer_type,
            content=content,
            account_id=self.config.account_id,
            **fields,
        )
        return await self.runtime.accept(message)


class PluginChannel(_BaseChannel):
    """A connection served by a plugin (`plugin`/`stdio`): sends go to its `message.send`."""

    def __init__(self, runtime: ChannelRuntime, channel_id: str, config: ChannelConfig) -> None:
        super().__init__(runtime, channel_id, config)
        if not config.plugin_id or not config.connection_id:
            raise ValueError("a plugin channel needs config.pluginId and config.connectionId")
        self.plugin_id: str = config.plugin_id
        self.connection_id: str = config.connection_id

    async def start(self) -> None:
        host = self.runtime.plugin_host
        if host is None:
            raise RuntimeError("plugin channels need a runtime with a plugin host")
        if host.registry.get(self.plugin_id) is None:
            raise RuntimeError(f"plugin {self.plugin_id} is not installed")

    async def send(self, request: SendRequest) -> SendResult:
        host = self.runtime.plugin_host
        assert host is not None
        try:
            return await host.client(self.plugin_id).send(request)
        except RpcError as exc:
            raise rpc_delivery_error(exc) from None


class HttpChannel(_BaseChannel):
    """A remote sidecar (`external_connector`/`http`, SPEC 7.4): `POST {url}/send` with a bearer token."""

    def __init__(self, runtime: ChannelRuntime, channel_id: str, config: ChannelConfig) -> None:
        super().__init__(runtime, channel_id, config)
        url = str(config.config.get("url") or config.config.get("baseUrl") or "")
        if not url.startswith(("http://", "https://")):
            raise ValueError("an external connector channel needs config.url (http:// or https://)")
        self.url = url.rstrip("/") + "/send"
        self._token = config.secrets.get("token") or config.secrets.get("connectorToken") or ""
        self._timeout = float(config.config.get("timeoutSeconds", 10))
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=self._timeout)

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, request: SendRequest) -> SendResult:
        if self._client is None:
            raise DeliveryError("channel is not started", retry_after=1)
        try:
            response = await self._client.post(
                self.url, content=msgspec.json.encode(request), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise DeliveryError(f"sidecar unreachable: {type(exc).__name__}") from None
        if response.status_code == 409:
            raise DeliveryError("sidecar: delivery in progress", retry_after=_retry_after(response))
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise DeliveryError(f"sidecar answered {response.status_code}", retry_after=_retry_after(response, None))
        if response.status_code >= 400:
            raise DeliveryError(f"sidecar refused the delivery with {response.status_code}", permanent=True)
        try:
            answer = msgspec.json.decode(response.content or b"{}", type=_SidecarSendAnswer)
        except msgspec.DecodeError:
            raise DeliveryError("sidecar answered an invalid send result", permanent=True) from None
        return SendResult(duplicate=answer.duplicate, provider_message_id=answer.provider_message_id)


class _SidecarSendAnswer(msgspec.Struct, rename="camel"):
    """A sidecar's answer to POST /send: read leniently, seed sidecars may send only providerMessageId."""

    duplicate: bool = False
    provider_message_id: str | None = None


def _retry_after(response: httpx.Response, default: float | None = 5) -> float | None:
    try:
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("retryAfterSeconds"), (int, float)):
            return float(body["retryAfterSeconds"])
    except ValueError:
        pass
    header = response.headers.get("retry-after", "")
    return float(header) if header.isdigit() else default


def rpc_delivery_error(exc: RpcError) -> DeliveryError:
    """How a plugin's answer to `message.send` maps onto a retry decision."""
    if exc.code in (IN_PROGRESS, RATE_LIMITED):
        data = exc.data if isinstance(exc.data, dict) else {}
        return DeliveryError(exc.message, retry_after=float(data.get("retryAfterSeconds", 5)))
    # -32602 invalid params, -32011 unknown connection, -32012 unsupported, -32019 refused: retrying cannot help
    permanent = exc.code in (-32602, -32601, UNKNOWN_CONNECTION, -32012, REFUSED)
    return DeliveryError(f"{exc.name}: {exc.message}", permanent=permanent)


BUILTIN_KINDS: dict[str, ChannelFactory] = {
    "memory": MemoryChannel,
    "local": MemoryChannel,
    "plugin": PluginChannel,
    "stdio": PluginChannel,
    "external_connector": HttpChannel,
    "http": HttpChannel,
}
