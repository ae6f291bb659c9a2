"""The floor of `bench/rpc.py`: newline JSON-RPC echo with msgspec and blocking stdio, no SDK.

Answers `initialize` (so the same host harness can start it), echoes the params
of any other request, ignores notifications, exits on stdin EOF.
"""

import os

import msgspec

INIT = {"protocolVersion": 1, "plugin": {"name": "raw-echo", "version": "1.0.0"}, "connectors": [], "capabilities": {}}
decode, encode = msgspec.json.decode, msgspec.json.encode
pending = b""
while chunk := os.read(0, 65536):
    *lines, pending = (pending + chunk).split(b"\n")
    out = []
    for line in lines:
        msg = decode(line)
        if "id" in msg:
            result = INIT if msg["method"] == "initialize" else msg.get("params")
            out.append(encode({"jsonrpc": "2.0", "id": msg["id"], "result": result}))
    if out:
        os.write(1, b"\n".join(out) + b"\n")
