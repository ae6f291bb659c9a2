"""`/api/channels`: what the runtime runs (SPEC 7.3); deliveries have their own module."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..redaction import redact_all
from .bridge import runtime_of


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


routes = [
    Route("/api/channels", list_channels, methods=["GET"]),
]
