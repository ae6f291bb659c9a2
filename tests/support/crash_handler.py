"""Handler for the crash-safety test, loaded by `channel-runtime serve --handler tests.support.crash_handler:handle`.

Appends `started <id>` / `handled <id>` to $CRASH_RECORD; with CRASH_BLOCK=1 it
never finishes, so accepted events stay in the inbox when the server is killed.
It replies, so work recovered after a restart needs its plugin channel back first.
"""

from __future__ import annotations

import os

import anyio

from channel_runtime import InboundMessage, OutboundMessage


def _record(line: str) -> None:
    with open(os.environ["CRASH_RECORD"], "a") as f:
        f.write(line + "\n")


async def handle(message: InboundMessage) -> OutboundMessage:
    _record(f"started {message.message_id}")
    if os.environ.get("CRASH_BLOCK") == "1":
        await anyio.sleep_forever()
    _record(f"handled {message.message_id}")
    return message.reply(f"done: {message.content}")
