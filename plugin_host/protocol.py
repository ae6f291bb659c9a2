"""Wire shapes of plugin protocol v1 (SPEC 3.3-3.6, 6.3) as msgspec Structs.

camelCase on the wire, snake_case in Python. `schemas/*.json` is the
language-neutral copy of the same shapes; tests/test_schemas.py keeps them in step.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1

SessionStatus = Literal[
    "pending",
    "qr_ready",
    "scanned",
    "confirmed",
    "installing",
    "waiting_for_user",
    "connected",
    "expired",
    "error",
    "cancelled",
]
TERMINAL_SESSION_STATUSES = frozenset({"connected", "expired", "error", "cancelled"})
HealthStatus = Literal["ok", "degraded", "error"]
ConnectionStatus = Literal["connected", "disconnected", "error", "revoked"]
AuthType = Literal["qr", "plugin_install", "credentials"]
PeerType = Literal["dm", "group", "channel", "unknown"]


class Wire(msgspec.Struct, rename="camel", omit_defaults=True, forbid_unknown_fields=False):
    """Base of every protocol shape."""


# ---------------------------------------------------------------- shared shapes


class NameVersion(Wire):
    name: str
    version: str


class PluginRef(Wire):
    id: str
    version: str


class ConnectorDescriptor(Wire):
    kind: str
    display_name: str
    auth_type: AuthType
    capabilities: list[str] = msgspec.field(default_factory=list)


class ConnectionInfo(Wire):
    connection_id: str
    channel_id: str
    kind: str
    account_id: str = ""
    display_name: str = ""
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    credentials: dict[str, Any] = msgspec.field(default_factory=dict)


class ConnectorSessionView(Wire):
    session_id: str
    kind: str
    status: SessionStatus
    qr_code: str | None = None
    qr_image: str | None = None
    instructions: list[str] = msgspec.field(default_factory=list)
    account_id: str | None = None
    display_name: str | None = None
    error: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class Target(Wire):
    peer_id: str
    peer_type: PeerType = "dm"
    thread_id: str | None = None
    reply_to_message_id: str | None = None


class SendRequest(Wire, omit_defaults=False):
    request_id: str
    connection_id: str
    channel_id: str
    kind: str
    target: Target
    content: str
    content_type: str = "text"
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class SendResult(Wire, omit_defaults=False):
    duplicate: bool = False
    provider_message_id: str | None = None


class BridgeEvent(Wire, omit_defaults=False):
    event_id: str
    connection_id: str
    kind: str
    peer_id: str
    message_id: str
    timestamp: str = ""
    delivery_attempt: int = 1
    channel_id: str = ""
    account_id: str = ""
    peer_type: PeerType = "unknown"
    user_id: str | None = None
    thread_id: str | None = None
    message_type: str = "text"
    content: str = ""
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


class InboundAck(Wire, omit_defaults=False):
    """Answer to `event.inbound` and the bridge endpoint (SPEC 6.3)."""

    accepted: bool
    duplicate: bool = False
    pending: bool = False
    retry_after_seconds: int | None = None


# ---------------------------------------------------------------- host -> plugin


class InitializeParams(Wire):
    protocol_version: int
    host: NameVersion
    plugin: PluginRef
    state_dir: str
    config: dict[str, Any] = msgspec.field(default_factory=dict)
    connections: list[ConnectionInfo] = msgspec.field(default_factory=list)


class InitializeResult(Wire):
    protocol_version: int
    plugin: NameVersion
    connectors: list[ConnectorDescriptor] = msgspec.field(default_factory=list)
    capabilities: dict[str, Any] = msgspec.field(default_factory=dict)


class HealthResult(Wire):
    status: HealthStatus
    detail: str | None = None
    connections: dict[str, str] | None = None


class SessionStartParams(Wire):
    session_id: str
    kind: str
    connection_id: str
    channel_id: str
    display_name: str = ""
    options: dict[str, Any] = msgspec.field(default_factory=dict)


class SessionRef(Wire):
    session_id: str


class SessionInputParams(Wire):
    session_id: str
    input: Any = None


class ConnectionRef(Wire):
    connection_id: str


class WebhookParams(Wire):
    connection_id: str
    method: str
    path: str
    query: str = ""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: str = ""  # base64


class WebhookResponse(Wire):
    status: int = 200
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    body: str = ""
    body_encoding: Literal["base64"] | None = None


class WebhookResult(Wire):
    response: WebhookResponse = msgspec.field(default_factory=WebhookResponse)
    events: list[BridgeEvent] = msgspec.field(default_factory=list)


class Empty(Wire):
    pass


class CancelParams(Wire):
    id: int | str


# ---------------------------------------------------------------- plugin -> host


class SessionUpdate(ConnectorSessionView):
    connection_id: str = ""
    credentials: dict[str, Any] | None = None


class ConnectionStatusParams(Wire):
    connection_id: str
    status: ConnectionStatus
    error: str | None = None


class LogParams(Wire):
    level: Literal["debug", "info", "warning", "error"]
    message: str
    fields: dict[str, Any] | None = None


# host-kept plugin state (SPEC 3.4)
STATE_VALUE_MAX_BYTES = 65_536
STATE_KEYS_PER_CONNECTION = 10_000


class StateGetParams(Wire):
    key: str
    connection_id: str | None = None  # None: plugin-wide


class StateGetResult(Wire, omit_defaults=False):
    value: Any = None
    epoch: int = 0


class StatePutParams(Wire):
    key: str
    value: Any = None  # None deletes
    connection_id: str | None = None
    epoch: int | None = None


class StatePutResult(Wire, omit_defaults=False):
    epoch: int = 0


# method name -> (params type, result type); result None marks a notification
HOST_TO_PLUGIN: dict[str, tuple[type, type | None]] = {
    "initialize": (InitializeParams, InitializeResult),
    "initialized": (Empty, None),
    "health": (Empty, HealthResult),
    "session.start": (SessionStartParams, ConnectorSessionView),
    "session.get": (SessionRef, ConnectorSessionView),
    "session.input": (SessionInputParams, ConnectorSessionView),
    "session.cancel": (SessionRef, Empty),
    "connection.logout": (ConnectionRef, Empty),
    "connection.resume": (ConnectionInfo, Empty),
    "connection.release": (ConnectionRef, Empty),
    "message.send": (SendRequest, SendResult),
    "webhook.handle": (WebhookParams, WebhookResult),
    "shutdown": (Empty, Empty),
    "$/cancelRequest": (CancelParams, None),
}

PLUGIN_TO_HOST: dict[str, tuple[type, type | None]] = {
    "event.inbound": (BridgeEvent, InboundAck),
    "session.update": (SessionUpdate, None),
    "connection.status": (ConnectionStatusParams, None),
    "log": (LogParams, None),
}
