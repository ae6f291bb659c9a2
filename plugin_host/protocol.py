"""Wire shapes of plugin protocol v1 (SPEC 3.3-3.6, 6.3, 10) as msgspec Structs.

These Structs are the one hand-written definition of the wire: `schemas/*.json`
and the OpenAPI components are generated from them (`python -m
plugin_host.wire_schemas --write`, checked by tests/plugin_host/test_schemas.py).

Rules (SPEC 3.1):
- camelCase on the wire, snake_case in Python; unknown fields are ignored.
- Every field is always sent (no `omit_defaults`): optional fields (SPEC `?`)
  go out as null.
- A field the SPEC requires has no default, so it cannot be left out when a
  Struct is built, and a message without it does not decode (-32602). An
  optional field defaults to None: a receiver reads it as null when missing.
- Constraints (`msgspec.Meta`) are checked on every decode and appear in the
  generated schemas.
"""

from __future__ import annotations

import datetime
import re
from typing import Annotated, Any, Literal

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
LogLevel = Literal["debug", "info", "warning", "error"]

# [0-9], not \d: the same pattern must mean the same in msgspec, jsonschema and ECMA regexes
RFC3339_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
_RFC3339 = re.compile(RFC3339_PATTERN)

Id = Annotated[str, msgspec.Meta(min_length=1)]
Kind = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Connector kind.")]
Timestamp = Annotated[
    str,
    msgspec.Meta(
        pattern=RFC3339_PATTERN,
        description="RFC 3339 date-time, e.g. 2026-06-02T09:30:00Z.",
        extra_json_schema={"format": "date-time"},
    ),
]
ProtocolVersionNumber = Annotated[int, msgspec.Meta(ge=1, description="1 in protocol v1.")]
JsonObject = dict[str, Any]
LowerCaseName = Annotated[str, msgspec.Meta(pattern=r"^[^A-Z]*$")]
Base64 = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/]*={0,2}$", extra_json_schema={"contentEncoding": "base64"})
]
StateKey = Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
Epoch = Annotated[int, msgspec.Meta(ge=0)]


def is_rfc3339(value: str) -> bool:
    """Whether `value` is an RFC 3339 date-time: the pattern, and a real date and time."""
    if not _RFC3339.match(value):
        return False
    try:
        datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


class Wire(msgspec.Struct, rename="camel", forbid_unknown_fields=False):
    """Base of every protocol shape."""


def encode_checked(value: Wire) -> msgspec.Raw:
    """`value` as JSON, once it is known to decode as its own type, constraints included.

    A Struct can be built with values its peer would refuse (an empty id, a
    malformed timestamp): this raises ValueError with the reason instead.
    """
    data = msgspec.json.encode(value)
    try:
        decoded = msgspec.json.decode(data, type=type(value))
    except msgspec.ValidationError as exc:
        raise ValueError(f"invalid {type(value).__name__}: {exc}") from None
    if isinstance(decoded, BridgeEvent) and not is_rfc3339(decoded.timestamp):
        raise ValueError(f"invalid BridgeEvent: timestamp {decoded.timestamp!r} is not an RFC 3339 date-time")
    return msgspec.Raw(data)


# ---------------------------------------------------------------- shared shapes


class NameVersion(Wire):
    name: str
    version: str


class PluginRef(Wire):
    id: Id
    version: Id


class ConnectorDescriptor(Wire):
    """SPEC 3.5: one connector kind a plugin provides."""

    kind: Kind
    display_name: str
    auth_type: AuthType
    capabilities: list[str]
    options_schema: (
        Annotated[
            JsonObject,
            msgspec.Meta(
                description="JSON Schema of the session.start options (the admin page's connect form);"
                " secret fields carry writeOnly: true."
            ),
        ]
        | None
    ) = None


class ConnectionInfo(Wire):
    """SPEC 3.5: a connection handed to its plugin (initialize, connection.resume)."""

    connection_id: Id
    channel_id: Id
    kind: Kind
    account_id: str
    display_name: str
    options: JsonObject
    credentials: JsonObject


class ConnectorSessionView(Wire):
    """SPEC 3.5: one onboarding attempt as the plugin reports it."""

    session_id: Id
    kind: Kind
    status: SessionStatus
    instructions: list[str]
    metadata: JsonObject
    qr_code: str | None = None
    qr_image: Annotated[str, msgspec.Meta(description="Image as a data: URI.")] | None = None
    account_id: str | None = None
    display_name: str | None = None
    error: str | None = None


class Target(Wire):
    peer_id: Id
    peer_type: PeerType
    thread_id: str | None = None
    reply_to_message_id: str | None = None


class SendRequest(Wire):
    """SPEC 3.6: params of message.send (and the body of an external sidecar's POST /send)."""

    request_id: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            description="Stable across retries of one delivery; the plugin dedupes connectionId + requestId.",
        ),
    ]
    # empty for a channel without a connection (memory, a sidecar configured without one)
    connection_id: str
    channel_id: Id
    kind: Kind
    target: Target
    content: str
    content_type: Annotated[str, msgspec.Meta(min_length=1)]
    metadata: JsonObject


class SendResult(Wire):
    duplicate: bool
    provider_message_id: str | None = None


class BridgeEvent(Wire):
    """SPEC 6.3: one inbound message, from event.inbound, webhook.handle or the bridge endpoint."""

    event_id: Id
    timestamp: Timestamp
    delivery_attempt: Annotated[int, msgspec.Meta(ge=1)]
    connection_id: Id
    channel_id: str
    kind: Kind
    account_id: str
    peer_id: Id
    peer_type: PeerType
    message_id: Id
    message_type: Annotated[str, msgspec.Meta(min_length=1)]
    content: str
    metadata: JsonObject
    user_id: str | None = None
    thread_id: str | None = None


class InboundAck(Wire):
    """Answer to event.inbound and to the bridge endpoint (SPEC 6.3: 200 and 409)."""

    accepted: bool
    duplicate: bool
    pending: bool
    retry_after_seconds: Annotated[int, msgspec.Meta(ge=0)] | None = None


# ---------------------------------------------------------------- host -> plugin


class InitializeParams(Wire):
    protocol_version: ProtocolVersionNumber
    host: NameVersion
    plugin: PluginRef
    config: Annotated[JsonObject, msgspec.Meta(description="Admin config, validated against the configSchema.")]
    state_dir: Id
    connections: Annotated[list[ConnectionInfo], msgspec.Meta(description="Connections this process serves.")]


class InitializeResult(Wire):
    protocol_version: ProtocolVersionNumber
    plugin: NameVersion
    connectors: list[ConnectorDescriptor]
    capabilities: Annotated[JsonObject, msgspec.Meta(description="{webhook: bool, sessions: bool, ...}")]


class HealthResult(Wire):
    status: HealthStatus
    detail: str | None = None
    connections: Annotated[dict[str, str], msgspec.Meta(description="connectionId -> status")] | None = None


class SessionStartParams(Wire):
    session_id: Id
    kind: Kind
    connection_id: Id
    channel_id: Id
    display_name: str
    options: JsonObject


class SessionRef(Wire):
    session_id: Id


class SessionInputParams(Wire):
    session_id: Id
    input: Annotated[Any, msgspec.Meta(description="What the user entered, e.g. a verification code.")]


class ConnectionRef(Wire):
    connection_id: Id


class WebhookParams(Wire):
    connection_id: Id
    method: Annotated[str, msgspec.Meta(min_length=1)]
    path: str
    query: str
    headers: Annotated[dict[LowerCaseName, str], msgspec.Meta(description="Request headers, lower-case names.")]
    body: Base64


class WebhookResponse(Wire):
    status: Annotated[int, msgspec.Meta(ge=100, le=599)]
    headers: dict[str, str]
    body: Annotated[str, msgspec.Meta(description='Text, or base64 when bodyEncoding is "base64".')]
    body_encoding: Literal["base64"] | None = None


class WebhookResult(Wire):
    response: WebhookResponse
    events: list[BridgeEvent]


class Empty(Wire):
    """{} (unknown fields ignored)."""


class CancelParams(Wire):
    id: int | str


# ---------------------------------------------------------------- plugin -> host


class SessionUpdate(ConnectorSessionView, kw_only=True):
    """ConnectorSessionView plus its connection and, once connected, the credentials to store."""

    connection_id: Id
    credentials: (
        Annotated[JsonObject, msgspec.Meta(description="Sent when connected; stored encrypted by the host.")] | None
    ) = None


class ConnectionStatusParams(Wire):
    connection_id: Id
    status: ConnectionStatus
    error: str | None = None


class LogParams(Wire):
    level: LogLevel
    message: str
    fields: JsonObject | None = None


# host-kept plugin state (SPEC 3.4)
STATE_VALUE_MAX_BYTES = 65_536
STATE_KEYS_PER_CONNECTION = 10_000


class StateGetParams(Wire):
    key: StateKey
    connection_id: Annotated[Id, msgspec.Meta(description="null: plugin-wide state.")] | None = None


class StateGetResult(Wire):
    value: Annotated[Any, msgspec.Meta(description="Any JSON; null when unset.")]
    epoch: Annotated[Epoch, msgspec.Meta(description="The connection's lease epoch (0 for plugin-wide state).")]


class StatePutParams(Wire):
    key: StateKey
    value: Annotated[Any, msgspec.Meta(description="Any JSON of at most 64 KiB; null deletes the key.")]
    connection_id: Annotated[Id, msgspec.Meta(description="null: plugin-wide state.")] | None = None
    epoch: (
        Annotated[Epoch, msgspec.Meta(description="The epoch the plugin holds; an older one is refused (-32018).")]
        | None
    ) = None


class StatePutResult(Wire):
    epoch: Epoch


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
    "state.get": (StateGetParams, StateGetResult),
    "state.put": (StatePutParams, StatePutResult),
}
