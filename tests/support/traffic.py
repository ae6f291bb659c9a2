"""Recorded plugin traffic checked against `schemas/` (the pattern of tests/plugin_host/test_wire_traffic.py).

A recording is JSON lines `{"dir": "host_to_plugin" | "plugin_to_host", "line": "<one JSON-RPC message>"}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plugin_host.wire_schemas import message_errors


def read_traffic(path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(e["dir"], json.loads(e["line"])) for e in map(json.loads, path.read_text().splitlines()) if e["line"]]


def traffic_problems(traffic: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, Any]]:
    """Every message that does not validate, with its issues (results are checked against their request)."""
    requests: dict[tuple[str, object], str] = {}
    problems = []
    for direction, message in traffic:
        method = message.get("method")
        answered = None
        if method is not None:
            if "id" in message:
                requests[(direction, message["id"])] = method
        else:
            other = "plugin_to_host" if direction == "host_to_plugin" else "host_to_plugin"
            answered = requests.get((other, message.get("id")))
        issues = message_errors(direction, message, method=answered)  # type: ignore[arg-type]
        if issues:
            problems.append((direction, json.dumps(message)[:300], issues))
    return problems


def answers_to(traffic: list[tuple[str, dict[str, Any]]], method: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request params, response) of every `method` call the host made, in order."""
    pending: dict[object, dict[str, Any]] = {}
    out = []
    for direction, message in traffic:
        if direction == "host_to_plugin" and message.get("method") == method:
            pending[message["id"]] = message.get("params", {})
        elif direction == "plugin_to_host" and "method" not in message and message.get("id") in pending:
            out.append((pending.pop(message["id"]), message))
    return out
