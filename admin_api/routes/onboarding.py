"""`/api/connector-sessions` and `/api/connections`: onboarding and revoking accounts (SPEC 6.5, 7.3)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from channel_runtime.connections import ConnectionManager, public_options
from plugin_host.protocol import TERMINAL_SESSION_STATUSES

from ..body import read_object
from ..errors import ApiError
from ..redaction import redact_all

SSE_KEEPALIVE_SECONDS = 15.0


def manager(request: Request) -> ConnectionManager:
    runtime = request.app.state.runtime
    connections = getattr(runtime, "connections", None)
    if connections is None or not runtime.started:
        raise ApiError("runtime_unavailable", "the channel runtime is not running", status=503)
    return connections


def _answer(request: Request, value: Any, status: int = 200, hidden: list[str] | None = None) -> JSONResponse:
    secrets = [*request.app.state.secrets, *(hidden or [])]
    return JSONResponse(redact_all(value, secrets), status_code=status)


def _connection(request: Request, view: dict[str, Any] | None) -> dict[str, Any] | None:
    """A connection view, with `webhookUrl` when CHANNEL_RUNTIME_PUBLIC_URL is set (platforms need it)."""
    base = request.app.state.settings.public_url
    if view is None or not base:
        return view
    return {**view, "webhookUrl": f"{base}/webhooks/{view['connectionId']}"}


def _session(request: Request, view: dict[str, Any]) -> dict[str, Any]:
    return {**view, "connection": _connection(request, view.get("connection"))}


def _string(body: dict[str, Any], name: str, *, required: bool = False) -> str:
    value = body.get(name, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise ApiError(
            "invalid_field", f"{name} must be a {'non-empty ' if required else ''}string", {"field": name}, status=422
        )
    return value


async def start_session(request: Request) -> Response:
    body = await read_object(request)
    options = body.get("options", {})
    if not isinstance(options, dict):
        raise ApiError("invalid_field", "options must be an object", {"field": "options"}, status=422)
    kind = _string(body, "kind", required=True)
    view = await manager(request).start_session(kind, _string(body, "displayName"), options)
    # options may carry an app secret (Feishu link mode): it is never echoed back
    hidden = [v for k, v in options.items() if k not in public_options(options) and isinstance(v, str)]
    return _answer(request, _session(request, view), 201, hidden)


async def get_session(request: Request) -> Response:
    return _answer(request, _session(request, await manager(request).session_view(request.path_params["session_id"])))


async def session_input(request: Request) -> Response:
    body = await read_object(request)
    if "input" not in body:
        raise ApiError("invalid_field", "input is required", {"field": "input"}, status=422)
    view = await manager(request).session_input(request.path_params["session_id"], body["input"])
    return _answer(request, _session(request, view))


async def cancel_session(request: Request) -> Response:
    return _answer(request, _session(request, await manager(request).cancel_session(request.path_params["session_id"])))


async def session_events(request: Request) -> Response:
    """Server-Sent Events: `event: session` with `{session, connection}` on every change."""
    connections = manager(request)
    session_id = request.path_params["session_id"]
    await connections.session_view(session_id)  # 404 in the JSON shape before the stream starts
    secrets = request.app.state.secrets

    def frame(view: dict[str, Any]) -> bytes:
        data = msgspec.json.encode(redact_all(_session(request, view), secrets)).decode()
        return f"event: session\ndata: {data}\n\n".encode()

    async def stream() -> AsyncIterator[bytes]:
        async with connections.subscribe(session_id) as (current, updates):
            yield frame(current)
            if current["session"]["status"] in TERMINAL_SESSION_STATUSES:
                return
            while True:
                with anyio.move_on_after(SSE_KEEPALIVE_SECONDS) as idle:
                    try:
                        view = await updates.receive()
                    except (anyio.EndOfStream, anyio.ClosedResourceError):
                        return
                if idle.cancelled_caught:
                    yield b": keep-alive\n\n"
                    continue
                yield frame(view)
                if view["session"]["status"] in TERMINAL_SESSION_STATUSES:
                    return

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def list_connections(request: Request) -> Response:
    return _answer(request, [_connection(request, c) for c in await manager(request).list_connections()])


async def get_connection(request: Request) -> Response:
    return _answer(
        request, _connection(request, await manager(request).get_connection(request.path_params["connection_id"]))
    )


async def logout(request: Request) -> Response:
    return _answer(request, _connection(request, await manager(request).logout(request.path_params["connection_id"])))


routes = [
    Route("/api/connector-sessions", start_session, methods=["POST"]),
    Route("/api/connector-sessions/{session_id}", get_session, methods=["GET"]),
    Route("/api/connector-sessions/{session_id}/events", session_events, methods=["GET"]),
    Route("/api/connector-sessions/{session_id}/input", session_input, methods=["POST"]),
    Route("/api/connector-sessions/{session_id}/cancel", cancel_session, methods=["POST"]),
    Route("/api/connections", list_connections, methods=["GET"]),
    Route("/api/connections/{connection_id}", get_connection, methods=["GET"]),
    Route("/api/connections/{connection_id}/logout", logout, methods=["POST"]),
]
