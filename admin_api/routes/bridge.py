"""The connector bridge and platform webhooks: the HTTP doors of the inbound pipeline (SPEC 6.3, 7.3).

Both end in `ChannelRuntime.ingest`: an answer of 200 means the event is
committed to the durable inbox. The webhook door also serves a sidecar (SPEC 11),
whose `ingest` commits to its forward queue.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

import httpx
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channel_runtime.application import Application
from channel_runtime.runtime import ChannelRuntime
from plugin_host.errors import OVERLOADED, TIMED_OUT, UNAVAILABLE, RpcError
from plugin_host.protocol import WebhookParams, WebhookResult
from plugin_host.wire_schemas import decode_bridge_event

from ..body import JSON_LIMIT, read_body
from ..errors import ApiError

log = logging.getLogger(__name__)

WEBHOOK_BODY_LIMIT = JSON_LIMIT
FORWARDED_HEADER = "x-channel-runtime-forwarded"
FORWARD_TIMEOUT = 15.0
_HOP_BY_HOP = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade", "content-encoding"}
)
# hop-by-hop and framing headers are the server's business, not the plugin's
_DROPPED_RESPONSE_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"})


def runtime_of(request: Request) -> ChannelRuntime:
    runtime = request.app.state.runtime
    if runtime is None or not runtime.started:
        raise ApiError("runtime_unavailable", "the channel runtime is not running", status=503)
    return runtime


def application_of(request: Request) -> Application:
    """The runtime, or a sidecar: whichever owns this app's plugin host."""
    application = request.app.state.runtime
    if application is None or not application.started:
        raise ApiError("runtime_unavailable", "the channel runtime is not running", status=503)
    return application


async def bridge_event(request: Request) -> Response:
    runtime = runtime_of(request)
    event, problems = decode_bridge_event(await read_body(request, JSON_LIMIT, "JSON body"))
    if event is None:
        raise ApiError("invalid_event", "the body is not a valid BridgeEvent", {"errors": problems}, status=422)
    result = await runtime.ingest(event)
    return Response(msgspec.json.encode(result.ack), status_code=result.status, media_type="application/json")


async def webhook(request: Request) -> Response:
    runtime = application_of(request)
    host = runtime.plugin_host
    connection = await runtime.store.connections.get(request.path_params["connection_id"])
    if host is None or connection is None or connection.status == "revoked":
        raise ApiError("unknown_connection", "unknown or revoked connection", status=404)
    body = await read_body(request, WEBHOOK_BODY_LIMIT, "webhook body")
    if FORWARDED_HEADER not in request.headers:
        owner = await runtime.serving_host(connection.connection_id)
        if owner is not None:  # several hosts (SPEC 10): the plugin process that serves the account is there
            return await _forward(request, owner, body)
    params = WebhookParams(
        connection_id=connection.connection_id,
        method=request.method,
        path=request.url.path,
        query=request.url.query,
        headers={name.lower(): value for name, value in request.headers.items()},
        body=base64.b64encode(body).decode(),
    )
    try:
        result = await host.client(connection.plugin_id).webhook(params)
    except RpcError as exc:
        if exc.code in (UNAVAILABLE, TIMED_OUT, OVERLOADED):
            # the platform retries a 503; the dedupe makes the retry safe
            raise ApiError(
                "plugin_unavailable",
                f"plugin {connection.plugin_id} is unavailable",
                status=503,
                headers={"Retry-After": "5"},
            ) from None
        raise ApiError("webhook_failed", f"plugin {connection.plugin_id} failed: {exc.message}", status=502) from None
    for event in result.events:
        if event.connection_id != connection.connection_id:
            event = msgspec.structs.replace(event, connection_id=connection.connection_id)
        # committed before the platform hears back; a failure here makes it deliver again
        await runtime.ingest(event, plugin_id=connection.plugin_id)
    return _plugin_response(result)


async def _forward(request: Request, base: str, body: bytes) -> Response:
    """Pass a platform's webhook on to the host holding the connection's lease, and its answer back."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    headers[FORWARDED_HEADER] = "1"  # once: the other host answers itself, whatever it believes
    url = base.rstrip("/") + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        async with httpx.AsyncClient(timeout=FORWARD_TIMEOUT) as client:
            answer = await client.request(request.method, url, content=body, headers=headers)
    except httpx.HTTPError:
        raise ApiError(
            "plugin_unavailable",
            "the host serving this connection is unreachable",
            status=503,
            headers={"Retry-After": "5"},
        ) from None
    kept = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED_RESPONSE_HEADERS | _HOP_BY_HOP}
    return Response(answer.content, status_code=answer.status_code, headers=kept)


def _plugin_response(result: WebhookResult) -> Response:
    answer = result.response
    if answer.body_encoding == "base64":
        try:
            content = base64.b64decode(answer.body, validate=True)
        except ValueError:
            raise ApiError("webhook_failed", "the plugin answered an invalid base64 body", status=502) from None
    else:
        content = answer.body.encode()
    status = answer.status if 100 <= answer.status <= 599 else 502
    headers: dict[str, Any] = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED_RESPONSE_HEADERS}
    for name, value in headers.items():
        if not _HEADER_NAME.fullmatch(name) or not _valid_header_value(value):
            raise ApiError(
                "webhook_failed",
                f"the plugin answered an invalid response header {name[:100]!r} "
                "(names are tokens, values Latin-1 text without line breaks)",
                status=502,
            )
    return Response(content, status_code=status, headers=headers)


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _valid_header_value(value: Any) -> bool:
    if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


routes = [
    Route("/api/channel-connector-bridge/events", bridge_event, methods=["POST"]),
    Route(
        "/webhooks/{connection_id}",
        webhook,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"],
    ),
]
