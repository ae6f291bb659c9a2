"""Handler of the several-hosts tests, loaded by `serve --handler tests.support.scale_handler:handle`.

Appends one JSON line per step to $SCALE_RECORD: `{"step": "started"|"handled", "messageId", "peerId",
"pid"}` (the pid of the `serve` process that ran it), takes $SCALE_HANDLER_DELAY seconds (default 0.05)
so that events are in flight when a host dies, and replies.
"""

from __future__ import annotations

import json
import os

import anyio

from channel_runtime import InboundMessage, OutboundMessage


def _record(step: str, message: InboundMessage) -> None:
    line = json.dumps({"step": step, "messageId": message.message_id, "peerId": message.peer_id, "pid": os.getpid()})
    fd = os.open(os.environ["SCALE_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def handle(message: InboundMessage) -> OutboundMessage:
    _record("started", message)
    await anyio.sleep(float(os.environ.get("SCALE_HANDLER_DELAY", "0.05")))
    _record("handled", message)
    return message.reply(f"re: {message.content}")
