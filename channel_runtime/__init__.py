"""The embeddable channel runtime (SPEC 6): messages, channels, stores, connections."""

from __future__ import annotations

from typing import Any

from .config import ChannelConfig
from .messages import ChannelIdentity, InboundMessage, OutboundMessage, outbound_request_id

__all__ = [
    "ChannelConfig",
    "ChannelIdentity",
    "ChannelRuntime",
    "InboundMessage",
    "OutboundMessage",
    "outbound_request_id",
]


def __getattr__(name: str) -> Any:
    # the runtime pulls in the stores and plugin host; import it only when asked for
    if name == "ChannelRuntime":
        from .runtime import ChannelRuntime

        return ChannelRuntime
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
