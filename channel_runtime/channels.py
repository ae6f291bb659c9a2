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

from plugin_host.errors import (
    IN_PROGRESS,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    RATE_LIMITED,
    REFUSED,
    REPLY_WINDOW_CLOSED,
    SESSION_EXPIRED,
    TOO_LARGE,
    UNKNOWN_CONNECTION,
    UNSUPPORTED,
    RpcError,
)
from plugin_host.manifest import OutboundLimits
from plugin_host.protocol import SendRequest, SendResult

from .budget import NO_LIMITS, DeferReason
from .config import ChannelConfig
from .messages import ChannelIdentity, InboundMessage
from .queues import retry_after_answer, retry_after_seconds

if TYPE_CHECKING:
    from .runtime import ChannelRuntime


class DeliveryError(Exception):
    """A delivery that did not go out, and what to do about it.

    `defer`: wait without counting an attempt (`retry_after` seconds for
    `retry_after`; until the peer writes again for `reply_window`; until the
    connection is back for `not_connected`). `permanent`: dead now (`refused`:
    the platform refused it for good, SPEC -32019). Otherwise: retry with backoff,
    after `retry_after` seconds when given, and dead after the last attempt.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        permanent: bool = False,
        refused: bool = False,
        defer: DeferReason | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent or refused
        self.refused = refused
        self.defer = defer


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

    @property
    def outbound_limits(self) -> OutboundLimits:
        """The platform budgets the dispatcher enforces for this channel (SPEC 6.4); none by default."""
        return NO_LIMITS


class MemoryChannel(_BaseChannel):
    """In-process channel (`memory`/`local`) for tests and embedding.

    Sends are recorded in `sent`; set `on_send` to answer or fail them. `receive`
    feeds a message into the runtime as if a platform had delivered it.
    `config["outboundLimits"]` (the shape of a manifest's `limits.outbound`)
    gives it platform budgets.
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

    @property
    def outbound_limits(self) -> OutboundLimits:
        limits = self.config.config.get("outboundLimits")
        return msgspec.convert(limits, OutboundLimits) if limits else NO_LIMITS

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

    @property
    def outbound_limits(self) -> OutboundLimits:
        """The running version's manifest `limits.outbound` (it follows a hot swap)."""
        host = self.runtime.plugin_host
        supervisor = host.supervisor(self.plugin_id) if host is not None else None
        return supervisor.manifest.limits.outbound if supervisor is not None else NO_LIMITS

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
        if response.status_code >= 400:
            raise _sidecar_refusal(response)
        try:
            answer = msgspec.json.decode(response.content or b"{}", type=_SidecarSendAnswer)
        except msgspec.DecodeError:
            raise DeliveryError("sidecar answered an invalid send result", permanent=True) from None
        return SendResult(duplicate=answer.duplicate, provider_message_id=answer.provider_message_id)


class _SidecarSendAnswer(msgspec.Struct, rename="camel"):
    """A sidecar's answer to POST /send: read leniently, seed sidecars may send only providerMessageId."""

    duplicate: bool = False
    provider_message_id: str | None = None


def _sidecar_refusal(response: httpx.Response) -> DeliveryError:
    """What a sidecar's error answer to POST /send means for the delivery.

    A sidecar of ours names the plugin's refusal (`error.details.rpcCode`): it maps
    exactly as the plugin's own answer would. Otherwise the status decides: 409/429
    wait without counting an attempt; 401/403 (a wrong or rotated token: an operator
    fixes it), 408 and 5xx retry with backoff; other 4xx are final.
    """
    status = response.status_code
    rpc = _rpc_error_of(response)
    wait = retry_after_answer(response)
    if rpc is not None:
        if wait is not None and retry_after_seconds(rpc.data) is None:
            rpc.data = {**(rpc.data if isinstance(rpc.data, dict) else {}), "retryAfterSeconds": wait}
        return rpc_delivery_error(rpc)
    text = f"sidecar answered {status}"
    if status in (409, 429):  # in progress / rate limited: wait, the attempt does not count
        return DeliveryError(text, retry_after=5.0 if wait is None else wait, defer="retry_after")
    if status in (401, 403, 408) or status >= 500:
        return DeliveryError(text, retry_after=wait)
    return DeliveryError(f"sidecar refused the delivery with {status}", permanent=True)


def _rpc_error_of(response: httpx.Response) -> RpcError | None:
    """The plugin refusal a sidecar's SPEC 7.1 error body carries (`details.rpcCode`), if any."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    details = error.get("details") if isinstance(error, dict) else None
    if not isinstance(error, dict) or not isinstance(details, dict):
        return None
    code = details.get("rpcCode")
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    message = error.get("message")
    data = details.get("data")
    wait = retry_after_seconds(details)  # a sidecar of ours puts the plugin's wait beside rpcCode
    if wait is not None and retry_after_seconds(data) is None:
        data = {**(data if isinstance(data, dict) else {}), "retryAfterSeconds": wait}
    return RpcError(code, message[:500] if isinstance(message, str) else "", data)


def rpc_delivery_error(exc: RpcError) -> DeliveryError:
    """How a plugin's answer to `message.send` maps onto what the dispatcher does (SPEC 3.7, 6.4)."""
    text = f"{exc.name}: {exc.message}"
    if exc.code in (IN_PROGRESS, RATE_LIMITED):  # wait retryAfterSeconds; the attempt does not count
        wait = retry_after_seconds(exc.data)
        return DeliveryError(text, retry_after=5.0 if wait is None else wait, defer="retry_after")
    if exc.code == REPLY_WINDOW_CLOSED:
        return DeliveryError(text, defer="reply_window")
    if exc.code == SESSION_EXPIRED:
        return DeliveryError(text, defer="not_connected")
    if exc.code == REFUSED:
        return DeliveryError(exc.message, refused=True)  # the platform's own words are the reason
    # -32602 invalid params, -32003 too large, -32011 unknown connection, -32012 unsupported: retrying cannot help
    permanent = exc.code in (INVALID_PARAMS, METHOD_NOT_FOUND, TOO_LARGE, UNKNOWN_CONNECTION, UNSUPPORTED)
    return DeliveryError(text, permanent=permanent)


BUILTIN_KINDS: dict[str, ChannelFactory] = {
    "memory": MemoryChannel,
    "local": MemoryChannel,
    "plugin": PluginChannel,
    "stdio": PluginChannel,
    "external_connector": HttpChannel,
    "http": HttpChannel,
}
