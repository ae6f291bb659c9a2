"""Loopback HTTP/1.1 load generator for the bridge: keep-alive connections, one BridgeEvent per POST.

    python bench/_loadgen.py --port P --token T --connection-id C --prefix RUN
        (--count N | --duration S) [--connections 32] [--peers 64] [--shape bridge|send|send-same]

`--shape send` POSTs SPEC 3.6 send requests to `/send` instead (a sidecar's), each with a
unique requestId; `send-same` repeats one requestId (completed duplicates).

Runs in its own process (so it does not share the server's core budget inside
one interpreter). Every request carries a unique eventId/messageId. Prints one
JSON line: {"requests", "seconds", "rps", "statuses", "first", "last"} where
`first`/`last` are wall-clock (time.time) stamps of the first send and last answer.
Used by bench/e2e.py (count-based) and by bench/ingest.py when wrk is not installed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time

PATH = "/api/channel-connector-bridge/events"


def event_body(prefix: str, n: int, connection_id: str, peers: int) -> bytes:
    ident = f"{prefix}_{n}"
    return json.dumps(
        {
            "eventId": f"evt_{ident}",
            "timestamp": "2026-06-02T09:30:00Z",
            "deliveryAttempt": 1,
            "connectionId": connection_id,
            "channelId": connection_id,
            "kind": "echo",
            "accountId": "acct_bench",
            "peerId": f"peer_{n % peers}",
            "peerType": "dm",
            "messageId": f"msg_{ident}",
            "messageType": "text",
            "content": f"hello {ident}",
            "metadata": {},
        },
        separators=(",", ":"),
    ).encode()


def send_body(prefix: str, n: int, connection_id: str, peers: int) -> bytes:
    return json.dumps(
        {
            "requestId": f"out_{prefix}_{n}",
            "connectionId": connection_id,
            "channelId": connection_id,
            "kind": "echo",
            "target": {"peerId": f"peer_{n % peers}", "peerType": "dm", "threadId": None, "replyToMessageId": None},
            "content": f"reply {prefix}_{n}",
            "contentType": "text",
            "metadata": {},
        },
        separators=(",", ":"),
    ).encode()


def body_for(args: argparse.Namespace, n: int) -> bytes:
    if args.shape == "send":
        return send_body(args.prefix, n, args.connection_id, args.peers)
    if args.shape == "send-same":
        return send_body(args.prefix, 0, args.connection_id, args.peers)
    return event_body(args.prefix, n, args.connection_id, args.peers)


async def worker(args: argparse.Namespace, counter: collections.Counter, state: dict, deadline: float) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
    path = PATH if args.shape == "bridge" else "/send"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nAuthorization: Bearer {args.token}\r\n"
        "Content-Type: application/json\r\n"
    ).encode()
    try:
        while True:
            if args.count is not None:
                if state["issued"] >= args.count:
                    return
            elif time.perf_counter() >= deadline:
                return
            n = state["issued"]
            state["issued"] += 1
            body = body_for(args, n)
            if state["first"] is None:
                state["first"] = time.time()
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            counter[int(status_line.split()[1])] += 1
            state["last"] = time.time()
    finally:
        writer.close()


async def main_async(args: argparse.Namespace) -> dict:
    counter: collections.Counter = collections.Counter()
    state = {"issued": 0, "first": None, "last": None}
    started = time.perf_counter()
    deadline = started + (args.duration or 0)
    await asyncio.gather(*(worker(args, counter, state, deadline) for _ in range(args.connections)))
    seconds = time.perf_counter() - started
    total = sum(counter.values())
    return {
        "requests": total,
        "seconds": seconds,
        "rps": total / seconds if seconds else 0.0,
        "statuses": {str(k): v for k, v in counter.items()},
        "first": state["first"],
        "last": state["last"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--connection-id", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int)
    p.add_argument("--duration", type=float)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--peers", type=int, default=64)
    p.add_argument("--shape", choices=["bridge", "send", "send-same"], default="bridge")
    args = p.parse_args()
    if (args.count is None) == (args.duration is None):
        p.error("give exactly one of --count and --duration")
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
