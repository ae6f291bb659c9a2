"""`GET /api/overview`: messages and delivery outcomes per minute over the last hour, per connection.

The counts are this process's (`ChannelRuntime.activity`): they start from zero
at start-up and, with several hosts, each host answers for its own traffic.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..redaction import redact_all
from .bridge import runtime_of


async def overview(request: Request) -> Response:
    runtime = runtime_of(request)
    window = runtime.activity.window()
    by_channel = {c.channel_id: c for c in await runtime.store.connections.list()}
    channels: list[dict[str, Any]] = []
    for channel_id, series in sorted(window["channels"].items()):
        connection = by_channel.get(channel_id)
        channels.append(
            {
                "channelId": channel_id,
                "connectionId": connection.connection_id if connection else None,
                "kind": connection.kind if connection else None,
                "displayName": (connection.display_name or connection.account_id) if connection else "",
                "series": series,
            }
        )
    body = {"start": window["start"], "minutes": window["minutes"], "channels": channels}
    return JSONResponse(redact_all(body, request.app.state.secrets))


routes = [Route("/api/overview", overview, methods=["GET"])]
