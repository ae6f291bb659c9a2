"""Messages the application sees: inbound, outbound, channel identity (SPEC 6.1, 6.3, 6.4).

msgspec Structs: snake_case in Python, camelCase when encoded (admin API, stores).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from plugin_host.protocol import BridgeEvent


class _Message(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=False):
    pass


def conversation_id(kind: str, peer_type: str, peer_id: str, thread_id: str | None = None) -> str:
    """The conversation reference of SPEC 6.3: `{kind}:{peerType}:{peerId}[:{threadId}]`."""
    base = f"{kind}:{peer_type}:{peer_id}"
    return f"{base}:{thread_id}" if thread_id else base


class ChannelIdentity(_Message, frozen=True):  # type: ignore[misc]  # msgspec allows a frozen subclass
    """Who a channel is: its id, connector kind and platform account."""

    channel_id: str
    kind: str
    account_id: str = ""
    connection_id: str | None = None
    display_name: str = ""


class OutboundMessage(_Message):
    """A message the application sends; `runtime.send` puts it in the durable outbox."""

    channel_id: str
    peer_id: str
    content: str
    peer_type: str = "dm"
    thread_id: str | None = None
    reply_to_message_id: str | None = None
    content_type: str = "text"
    # the application's own id for this message; when set it makes the request id (SPEC 6.4)
    message_id: str | None = None
    inbound_message_id: str | None = None
    finish_reason: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)

    def session_id(self, kind: str) -> str:
        """Conversation reference; `kind` is the connector kind (`feishu`, `weixin`, ...)."""
        return conversation_id(kind, self.peer_type, self.peer_id, self.thread_id)

    def request_id(self, kind: str) -> str:
        """The stable outbox `requestId` of SPEC 6.4 (see `outbound_request_id`)."""
        return outbound_request_id(self, kind)


class InboundMessage(_Message):
    """A message received from a platform, as the handler sees it."""

    message_id: str
    channel_id: str
    kind: str
    peer_id: str
    peer_type: str = "unknown"
    connection_id: str = ""
    account_id: str = ""
    user_id: str | None = None
    thread_id: str | None = None
    content: str = ""
    message_type: str = "text"
    # RFC 3339 text as the platform/connector reported it (SPEC 6.3)
    timestamp: str = ""
    event_id: str = ""
    delivery_attempt: int = 1
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)

    @property
    def session_id(self) -> str:
        return conversation_id(self.kind, self.peer_type, self.peer_id, self.thread_id)

    def reply(self, content: str, **kwargs: Any) -> OutboundMessage:
        """An answer to the same peer and thread, replying to this message.

        Keyword arguments set or override any `OutboundMessage` field
        (`content_type`, `metadata`, `finish_reason`, `message_id`, ...).
        """
        fields: dict[str, Any] = {
            "channel_id": self.channel_id,
            "peer_id": self.peer_id,
            "peer_type": self.peer_type,
            "thread_id": self.thread_id,
            "reply_to_message_id": self.message_id,
            "inbound_message_id": self.message_id,
        }
        fields.update(kwargs)
        return OutboundMessage(content=content, **fields)

    @classmethod
    def from_bridge_event(cls, event: BridgeEvent, *, channel_id: str | None = None) -> InboundMessage:
        """Convert a wire `BridgeEvent`; `channel_id` overrides the event's (the connection's channel)."""
        return cls(
            message_id=event.message_id,
            channel_id=channel_id or event.channel_id,
            kind=event.kind,
            peer_id=event.peer_id,
            peer_type=event.peer_type,
            connection_id=event.connection_id,
            account_id=event.account_id,
            user_id=event.user_id,
            thread_id=event.thread_id,
            content=event.content,
            message_type=event.message_type,
            timestamp=event.timestamp,
            event_id=event.event_id,
            delivery_attempt=event.delivery_attempt,
            metadata=dict(event.metadata),
        )


def outbound_request_id(message: OutboundMessage, kind: str) -> str:
    """The stable delivery `requestId` of SPEC 6.4.

    `out_{channel}:{session_id}:{message_id}` when the message has an id (a
    non-empty `message_id`), else
    `out_{channel}:{session_id}:{sha256(content + inbound_message_id + peer_id + finish_reason)[:24]}`:
    the hex digest of the UTF-8 concatenation, where a None part counts as the
    empty string. `kind` is the connector kind used in the session id.
    """
    prefix = f"out_{message.channel_id}:{message.session_id(kind)}"
    if message.message_id:
        return f"{prefix}:{message.message_id}"
    text = "".join(
        part or "" for part in (message.content, message.inbound_message_id, message.peer_id, message.finish_reason)
    )
    return f"{prefix}:{hashlib.sha256(text.encode('utf-8')).hexdigest()[:24]}"
