"""Message handlers for `channel-runtime serve --handler bench._handlers:NAME` in the benchmarks."""

from __future__ import annotations

from channel_runtime.messages import InboundMessage, OutboundMessage


async def noop(message: InboundMessage) -> OutboundMessage | None:
    """Accept and do nothing: the ingest bench measures the pipeline, not an application."""
    return None
