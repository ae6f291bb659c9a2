"""Lease probe: a raw JSON-RPC plugin (stdlib only) that tells which process serves which connection.

Every line of $PROBE_LOG (default `$HOME/probe.jsonl`: the plugin's data folder, the one place a
sandboxed plugin may write) is one JSON record `{t, pid, event, connectionId, ...}`, `pid` unique
per process (plugins run in their own PID namespace, where pids repeat):
`connect` (from `initialize.connections` or `connection.resume`), `disconnect`
(`connection.release`), `send` (a `message.send` it served), `webhook` (a
`webhook.handle` it served: JSON `{messageId, peerId}` becomes one event), `put` (the answer to
its own `state.put`, written every 0.2 s with the epoch `state.get` gave it, while
it serves the connection: `ok`, or the error code, -32018 when fenced), `exit`.
A send for a connection it does not serve is refused with -32011.
"""

import base64
import itertools
import json
import os
import sys
import threading
import time

PID = f"{os.getpid()}-{os.urandom(4).hex()}"
LOG = os.environ.get("PROBE_LOG") or os.path.join(os.environ.get("HOME", "."), "probe.jsonl")
PUT_EVERY = 0.2
_out = threading.Lock()
_ids = itertools.count(1)
_waiting: dict = {}
served: dict = {}  # connectionId -> threading.Event that stops its writer


def record(event, **fields):
    if LOG:
        line = json.dumps({"t": time.time(), "pid": PID, "event": event, **fields}) + "\n"
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def send(message):
    with _out:
        sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def result(request_id, value):
    send({"jsonrpc": "2.0", "id": request_id, "result": value})


def error(request_id, code, message):
    send({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def ask_host(method, params, timeout=10.0):
    """A request to the host; its answer message (result or error)."""
    request_id = f"probe{next(_ids)}"
    box = {"done": threading.Event()}
    _waiting[request_id] = box
    send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
    box["done"].wait(timeout)
    _waiting.pop(request_id, None)
    return box.get("answer") or {"error": {"code": -32001, "message": "no answer"}}


def writer(connection_id, stop):
    """Write host-kept state with the epoch of this process's hand-over, as a connector keeps its cursor."""
    answer = ask_host("state.get", {"connectionId": connection_id, "key": "owner"})
    epoch = (answer.get("result") or {}).get("epoch")
    record("epoch", connectionId=connection_id, epoch=epoch)
    n = 0
    while not stop.wait(PUT_EVERY):
        n += 1
        value = {"pid": PID, "n": n, "epoch": epoch}
        answer = ask_host("state.put", {"connectionId": connection_id, "key": "owner", "value": value, "epoch": epoch})
        if "error" in answer:
            record("put", connectionId=connection_id, epoch=epoch, n=n, code=answer["error"].get("code"))
        elif n == 1:
            record("put", connectionId=connection_id, epoch=epoch, n=n, code=0)


def serve(info, via):
    connection_id = info["connectionId"]
    old = served.pop(connection_id, None)
    if old is not None:
        old.set()
    stop = threading.Event()
    served[connection_id] = stop
    record("connect", connectionId=connection_id, via=via)
    threading.Thread(target=writer, args=(connection_id, stop), daemon=True).start()


def release(connection_id):
    stop = served.pop(connection_id, None)
    if stop is not None:
        stop.set()
        record("disconnect", connectionId=connection_id)


def handle(message):
    method, request_id, params = message["method"], message.get("id"), message.get("params") or {}
    if method == "initialize":
        for info in params.get("connections") or []:
            serve(info, "initialize")
        result(
            request_id,
            {
                "protocolVersion": 1,
                "plugin": {"name": "probe", "version": "1.0.0"},
                "connectors": [],
                "capabilities": {},
            },
        )
    elif method == "connection.resume":
        serve(params, "resume")
        result(request_id, {})
    elif method == "connection.release":
        release(params["connectionId"])
        result(request_id, {})
    elif method == "session.start":
        view = {
            "sessionId": params["sessionId"],
            "kind": params["kind"],
            "status": "connected",
            "qrCode": None,
            "qrImage": None,
            "instructions": [],
            "metadata": {},
            "accountId": "probe_" + params["connectionId"],
            "displayName": params.get("displayName") or "Probe",
            "error": None,
        }
        update = dict(view, connectionId=params["connectionId"], credentials={"token": os.urandom(8).hex()})
        send({"jsonrpc": "2.0", "method": "session.update", "params": update})
        result(request_id, view)
    elif method == "message.send":
        connection_id = params["connectionId"]
        if connection_id not in served:
            error(request_id, -32011, f"this process does not serve {connection_id}")
            return
        record("send", connectionId=connection_id, requestId=params["requestId"], content=params.get("content"))
        result(request_id, {"providerMessageId": f"probe_{os.urandom(6).hex()}", "duplicate": False})
    elif method == "webhook.handle":
        connection_id = params["connectionId"]
        if connection_id not in served:
            error(request_id, -32011, f"this process does not serve {connection_id}")
            return
        body = json.loads(base64.b64decode(params["body"]) or b"{}")
        record("webhook", connectionId=connection_id, messageId=body.get("messageId"))
        event = {
            "eventId": "wh-" + body["messageId"],
            "timestamp": "2026-06-02T09:30:00Z",
            "deliveryAttempt": 1,
            "connectionId": connection_id,
            "channelId": "",
            "kind": "probe",
            "accountId": "a",
            "peerId": body.get("peerId", "wh"),
            "peerType": "dm",
            "userId": None,
            "threadId": None,
            "messageId": body["messageId"],
            "messageType": "text",
            "content": "from a webhook",
            "metadata": {},
        }
        answer = {
            "status": 200,
            "headers": {"content-type": "application/json"},
            "body": json.dumps({"servedBy": PID}),
            "bodyEncoding": None,
        }
        result(request_id, {"response": answer, "events": [event]})
    elif method == "connection.logout":
        release(params["connectionId"])
        result(request_id, {})
    elif method == "health":
        result(request_id, {"status": "ok", "detail": None, "connections": {c: "connected" for c in served}})
    elif method == "shutdown":
        result(request_id, {})
    elif request_id is not None and method not in ("initialized", "$/cancelRequest"):
        error(request_id, -32601, f"unknown method {method}")


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        message = json.loads(line)
        if "method" not in message:  # an answer to one of our requests
            box = _waiting.get(message.get("id"))
            if box is not None:
                box["answer"] = message
                box["done"].set()
            continue
        handle(message)
    for stop in served.values():
        stop.set()
    record("exit")


if __name__ == "__main__":
    main()
