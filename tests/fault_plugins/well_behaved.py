"""A minimal well-behaved plugin; its config (from initialize) selects a few behaviours."""

import itertools
import os
import threading
import time

import _wire

config: dict = {}
cancelled: list = []
host_calls: dict = {}
host_ids = itertools.count(1)


def initialize(request_id, params):
    config.update(params.get("config") or {})
    config["_init"] = params
    _wire.result(request_id, _wire.init_result("well_behaved", config.get("protocolVersion", 1)))


def health(request_id, params):
    _wire.result(request_id, {"status": config.get("health", "ok")})


def sleep(request_id, params):
    time.sleep(params.get("seconds", 1))
    _wire.result(request_id, {"slept": params.get("seconds", 1)})


def ask_host(request_id, params):
    """Send a request to the host and answer with the host's answer (result or error)."""
    my_id = f"p{next(host_ids)}"
    waiter, box = threading.Event(), []
    host_calls[my_id] = (waiter, box)
    _wire.send({"jsonrpc": "2.0", "id": my_id, "method": params["method"], "params": params.get("params", {})})
    waiter.wait(10)
    host_calls.pop(my_id, None)
    _wire.result(request_id, box[0] if box else None)


def notify_host(request_id, params):
    _wire.send({"jsonrpc": "2.0", "method": params["method"], "params": params["params"]})
    _wire.result(request_id, {})


def stderr(request_id, params):
    _wire.log(params["text"])
    _wire.result(request_id, {})


def main() -> None:
    handlers = {
        "initialize": initialize,
        "health": health,
        "sleep": sleep,
        "ask_host": ask_host,
        "env": lambda i, p: _wire.result(i, dict(os.environ)),
        "cwd": lambda i, p: _wire.result(i, {"cwd": os.getcwd(), "pid": os.getpid()}),
        "init_params": lambda i, p: _wire.result(i, config.get("_init")),
        "stats": lambda i, p: _wire.result(i, {"cancelled": list(cancelled)}),
        "notify_host": notify_host,
        "$/cancelRequest": lambda i, p: cancelled.append(p.get("id")),
        "stderr": stderr,
    }
    for msg in _wire.messages():
        if "method" not in msg:  # an answer to ask_host
            entry = host_calls.get(msg.get("id"))
            if entry is not None:
                entry[1].append(msg.get("result", msg.get("error")))
                entry[0].set()
            continue
        method, request_id, params = msg["method"], msg.get("id"), msg.get("params") or {}
        if method in ("sleep", "ask_host"):
            threading.Thread(target=handlers[method], args=(request_id, params), daemon=True).start()
        elif method in handlers:
            handlers[method](request_id, params)
        elif method == "shutdown":
            _wire.result(request_id, {})
        elif method == "echo":
            _wire.result(request_id, params)
        elif request_id is not None and method != "initialized":
            _wire.error(request_id, -32601, f"method not found: {method}")


if __name__ == "__main__":
    main()
