"""`/api/channels` and `/api/deliveries`: what the runtime runs, and what it gave up on (SPEC 7.3)."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import ApiError
from ..redaction import redact_all
from .bridge import runtime_of

DELIVERIES_LIMIT = 500


async def list_channels(request: Request) -> Response:
    runtime = runtime_of(request)
    configs = runtime.channel_configs
    out = []
    for channel_id, state in sorted(runtime.states.items()):
        if state["state"] == "removed":
            continue
        config = configs.get(channel_id)
        out.append(
            {
                "channelId": channel_id,
                "kind": config.kind if config else None,
                "mode": config.mode if config else None,
                "connectorKind": config.connector_kind if config else None,
                "state": state["state"],
                "lastError": state["last_error"],
                "startedAt": state["started_at"],
            }
        )
    return JSONResponse(redact_all(out, request.app.state.secrets))


async def list_deliveries(request: Request) -> Response:
    runtime = runtime_of(request)
    status = request.query_params.get("status", "failed")
    if status not in ("failed", "dead"):
        raise ApiError(
            "invalid_parameter", "status must be 'failed' (dead letters)", {"parameter": "status"}, status=400
        )
    store = runtime.store
    out: list[dict[str, Any]] = []
    for entry in await store.outbox.list_dead(DELIVERIES_LIMIT):
        out.append(
            {
                "direction": "outbound",
                "id": entry.id,
                "channelId": entry.channel_id,
                "requestId": entry.request_id,
                "status": "failed",
                "attempts": entry.attempts,
                "lastError": entry.last_error,
                "createdAt": entry.created_at,
                "updatedAt": entry.updated_at,
                "target": entry.payload.get("target"),
            }
        )
    for dead_in in await store.inbox.list_dead(DELIVERIES_LIMIT):
        out.append(
            {
                "direction": "inbound",
                "id": dead_in.id,
                "channelId": dead_in.channel_id,
                "messageId": dead_in.message.message_id,
                "sessionId": dead_in.session_id,
                "status": "failed",
                "attempts": dead_in.attempts,
                "lastError": dead_in.last_error,
                "createdAt": dead_in.created_at,
                "updatedAt": dead_in.updated_at,
            }
        )
    out.sort(key=lambda d: d["updatedAt"])
    return JSONResponse(redact_all(msgspec.to_builtins(out), request.app.state.secrets))


routes = [
    Route("/api/channels", list_channels, methods=["GET"]),
    Route("/api/deliveries", list_deliveries, methods=["GET"]),
]
