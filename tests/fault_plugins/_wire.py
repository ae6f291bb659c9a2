"""Raw newline-delimited JSON-RPC for the fault plugins: no SDK, on purpose.

Copied next to each fault script into its version folder by `tests.fault_plugins.make_spec`.
"""

import json
import sys
import threading

_lock = threading.Lock()


def write_line(data: bytes) -> None:
    with _lock:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.buffer.flush()


def send(message: dict) -> None:
    write_line(json.dumps(message, separators=(",", ":")).encode())


def result(request_id, value) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "result": value})


def error(request_id, code: int, message: str) -> None:
    send({"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}})


def log(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def messages():
    """Every message from stdin until EOF."""
    for line in sys.stdin.buffer:
        if line.strip():
            yield json.loads(line)


def init_result(name: str, protocol_version: int = 1) -> dict:
    return {
        "protocolVersion": protocol_version,
        "plugin": {"name": name, "version": "1.0.0"},
        "connectors": [],
        "capabilities": {},
    }


def serve(name: str, handlers: dict | None = None, threaded: frozenset = frozenset()) -> dict:
    """A minimal plugin loop: initialize, health, shutdown, echo plus `handlers`.

    A handler takes (id, params) and answers itself; methods in `threaded` run in
    their own thread so slow ones do not block the loop. Returns at stdin EOF
    with the `initialize` params it received.
    """
    handlers = handlers or {}
    state: dict = {"init": {}}
    for msg in messages():
        method = msg.get("method")
        request_id = msg.get("id")
        params = msg.get("params") or {}
        if method in handlers:
            if method in threaded:
                threading.Thread(target=handlers[method], args=(request_id, params), daemon=True).start()
            else:
                handlers[method](request_id, params)
        elif method == "initialize":
            state["init"] = params
            result(request_id, init_result(name))
        elif method == "health":
            result(request_id, {"status": "ok"})
        elif method in ("shutdown",):
            result(request_id, {})
        elif method == "echo":
            result(request_id, params)
        elif method is not None and request_id is not None:
            error(request_id, -32601, f"method not found: {method}")
    return state["init"]
