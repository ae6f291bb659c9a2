"""Completes the handshake, then crashes as soon as it is told `initialized`."""

import sys

import _wire

for msg in _wire.messages():
    if msg.get("method") == "initialize":
        _wire.result(msg["id"], _wire.init_result("crash_loop"))
    elif msg.get("method") == "initialized":
        _wire.log("crash_loop: giving up right after start")
        sys.exit(7)
