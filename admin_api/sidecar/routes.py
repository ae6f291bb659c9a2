"""The seed's external-connector routes (SPEC 11), camelCase bodies, errors in SPEC 7.1's shape.

| route | answer |
|---|---|
| `GET /health` | `{status, providers, forwarder}` |
| `GET /connectors` | `[{kind, displayName, authType, providerId, capabilities}]` |
| `POST /connector-sessions` | the session view (every field present) |
| `GET /connector-sessions/{sessionId}` · `POST .../cancel` | the session view |
| `POST /connections/{connectionId}/logout` | `{connectionId, status}` |
| `POST /send` | `{providerMessageId, duplicate}`; 409 `{"retryAfterSeconds": 5}` while in progress |
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from channel_runtime.connections import ConnectionManager, public_options
from channel_runtime.sidecar import SendInProgress, Sidecar
from plugin_host.errors import (
    IN_PROGRESS,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    OVERLOADED,
    RATE_LIMITED,
    REFUSED,
    REPLY_WINDOW_CLOSED,
    SESSION_EXPIRED,
    TIMED_OUT,
    TOO_LARGE,
    UNAVAILABLE,
    UNKNOWN_CONNECTION,
    UNSUPPORTED,
    RpcError,
)
from plugin_host.protocol import SendRequest

from ..body import JSON_LIMIT, read_body, read_object
from ..errors import ApiError, error_response
from ..redaction import redact_all

# the session view of SPEC 11, each field with the value it has when the plugin gave none
SESSION_FIELDS: dict[str, Any] = {
    "sessionId": "",
    "kind": "",
    "status": "pending",
    "qrCode": None,
    "qrImage": None,
    "instructions": [],
    "accountId": None,
    "displayName": None,
    "error": None,
    "metadata": {},
}
# the application's ids go into URLs and dedupe keys (`{connectionId}:{eventId}`): no colon, no slash
CONNECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
TEXT_LIMIT = 2048

# a plugin's refusal of message.send -> the HTTP status the application's retry logic reads
# (409 and 429 wait retryAfterSeconds, 5xx retry, other 4xx are final); the body's details.rpcCode
# names the refusal exactly, and channel_runtime.channels.HttpChannel maps that as a plugin's answer
_SEND_STATUS = {
    RATE_LIMITED: 429,
    UNAVAILABLE: 503,
    OVERLOADED: 503,
    TIMED_OUT: 504,
    UNKNOWN_CONNECTION: 404,
    TOO_LARGE: 413,
    INVALID_PARAMS: 422,
    UNSUPPORTED: 422,
    METHOD_NOT_FOUND: 422,
    REFUSED: 422,
    REPLY_WINDOW_CLOSED: 422,
    SESSION_EXPIRED: 422,
}


def sidecar_of(request: Request) -> Sidecar:
    sidecar: Sidecar | None = request.app.state.runtime
    if sidecar is None or not sidecar.started:
        raise ApiError("sidecar_unavailable", "the sidecar is not running", status=503)
    return sidecar


def _manager(request: Request) -> ConnectionManager:
    return sidecar_of(request).connections


def _answer(request: Request, value: Any, status: int = 200, hidden: list[str] | None = None) -> JSONResponse:
    return JSONResponse(redact_all(value, [*request.app.state.secrets, *(hidden or [])]), status_code=status)


def session_view(view: dict[str, Any]) -> dict[str, Any]:
    """Exactly the fields of SPEC 11's session view, every one present (a missing or null one as its default)."""
    session = view.get("session", view)
    return {name: default if session.get(name) is None else session[name] for name, default in SESSION_FIELDS.items()}


def _text(body: dict[str, Any], name: str, *, required: bool = False, nullable: bool = False) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > TEXT_LIMIT or (required and not value.strip()):
        wanted = "a non-empty string" if required else "a string" + (" or null" if nullable else "")
        raise ApiError(
            "invalid_field", f"{name} must be {wanted} (at most {TEXT_LIMIT} characters)", {"field": name}, status=422
        )
    return value


def _connection_id(value: str, name: str) -> str:
    if not CONNECTION_ID.match(value):
        raise ApiError(
            "invalid_field",
            f"{name} must be 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit",
            {"field": name},
            status=422,
        )
    return value


# ---------------------------------------------------------------- routes


async def health(request: Request) -> Response:
    sidecar = sidecar_of(request)
    host = request.app.state.host
    stats = await sidecar.forwarder.refresh()
    kinds: dict[str, list[str]] = {}
    for connector in host.connectors():
        kinds.setdefault(connector["pluginId"], []).append(connector["kind"])
    providers = []
    for plugin in host.list():
        if not plugin["enabled"]:
            continue
        providers.append(
            {
                "providerId": plugin["id"],
                "name": plugin["name"],
                "version": plugin["runningVersion"] or plugin["activeVersion"],
                "state": plugin["state"],
                "available": plugin["state"] in ("running", "degraded"),
                "kinds": kinds.get(plugin["id"], []),
                "lastError": plugin["lastError"],
            }
        )
    healthy = not stats.failing and all(p["available"] for p in providers)
    body = {
        "status": "ok" if healthy else "degraded",
        "providers": providers,
        "forwarder": {
            "configured": sidecar.forwarder.url is not None,
            "backlog": stats.backlog,
            "dead": stats.dead,
            "delivered": stats.delivered,
            "failures": stats.failures,
            "failing": stats.failing,
            "lastError": stats.last_error,
            "lastErrorAt": stats.last_error_at,
            "lastDeliveredAt": stats.last_delivered_at,
        },
    }
    return _answer(request, body)


async def connectors(request: Request) -> Response:
    out = [
        {
            "kind": c["kind"],
            "displayName": c.get("displayName", c["kind"]),
            "authType": c.get("authType"),
            "providerId": c["pluginId"],
            "capabilities": c.get("capabilities") or [],
        }
        for c in request.app.state.host.connectors()
    ]
    return _answer(request, out)


async def start_session(request: Request) -> Response:
    body = await read_object(request)
    kind = _text(body, "kind", required=True)
    connection_id = _connection_id(_text(body, "connectionId", required=True), "connectionId")
    channel_id = _text(body, "channelId")
    if channel_id:
        _connection_id(channel_id, "channelId")
    display_name = _text(body, "displayName")
    callback = _text(body, "callbackBaseUrl", nullable=True)
    if callback and not callback.startswith(("http://", "https://")):
        raise ApiError(
            "invalid_field", "callbackBaseUrl must be an http(s) URL", {"field": "callbackBaseUrl"}, status=422
        )
    options = body.get("options") if body.get("options") is not None else {}
    if not isinstance(options, dict):
        raise ApiError("invalid_field", "options must be an object", {"field": "options"}, status=422)
    view = await _manager(request).start_session(
        kind, display_name, options, connection_id=connection_id, channel_id=channel_id or None
    )
    # options may carry an app secret (Feishu link mode): it is never echoed back
    hidden = [v for k, v in options.items() if k not in public_options(options) and isinstance(v, str)]
    return _answer(request, session_view(view), hidden=hidden)


async def get_session(request: Request) -> Response:
    return _answer(request, session_view(await _manager(request).session_view(request.path_params["session_id"])))


async def cancel_session(request: Request) -> Response:
    view = await _manager(request).cancel_session(request.path_params["session_id"])
    return _answer(request, session_view(view))


async def logout(request: Request) -> Response:
    connection = await _manager(request).logout(request.path_params["connection_id"])
    return _answer(request, {"connectionId": connection["connectionId"], "status": connection["status"]})


async def send(request: Request) -> Response:
    sidecar = sidecar_of(request)
    body = await read_body(request, JSON_LIMIT, "JSON body")
    try:
        send_request = msgspec.json.decode(body, type=SendRequest)
    except msgspec.ValidationError as exc:
        field = _field_of(exc)
        if field in ("requestId", "connectionId"):  # a required id, empty: name it
            raise ApiError("invalid_field", f"{field} is required", {"field": field}, status=422) from None
        raise ApiError("invalid_request", f"the body is not a valid send request: {exc}", status=422) from None
    except msgspec.DecodeError:
        raise ApiError("invalid_json", "the body is not valid JSON", status=400) from None
    if not send_request.request_id.strip():
        raise ApiError("invalid_field", "requestId is required", {"field": "requestId"}, status=422)
    if not send_request.connection_id.strip():
        raise ApiError("invalid_field", "connectionId is required", {"field": "connectionId"}, status=422)
    try:
        result = await sidecar.send(send_request)
    except SendInProgress as exc:
        return _in_progress(exc.retry_after_seconds)
    except RpcError as exc:
        return _send_refused(request, exc)
    return Response(msgspec.json.encode(result), media_type="application/json")


def _in_progress(seconds: int) -> Response:
    return JSONResponse({"retryAfterSeconds": seconds}, status_code=409, headers={"Retry-After": str(seconds)})


def _send_refused(request: Request, exc: RpcError) -> Response:
    data = exc.data if isinstance(exc.data, dict) else {}
    wait = data.get("retryAfterSeconds")
    wait = int(wait) if isinstance(wait, (int, float)) and not isinstance(wait, bool) and 0 <= wait < 86400 else None
    if exc.code == IN_PROGRESS:  # the plugin's own dedupe: the same answer as ours
        return _in_progress(5 if wait is None else wait)
    status = _SEND_STATUS.get(exc.code, 502)
    details: dict[str, Any] = {"rpcCode": exc.code}
    if exc.data is not None:
        details["data"] = exc.data
    headers = {}
    if wait is not None:
        details["retryAfterSeconds"] = wait
        headers["Retry-After"] = str(wait)
    elif status == 503:
        headers["Retry-After"] = "1"
    return error_response(status, exc.name, exc.message, details, headers, request.app.state.secrets)


routes = [
    Route("/send", send, methods=["POST"]),
    Route("/health", health, methods=["GET"]),
    Route("/connectors", connectors, methods=["GET"]),
    Route("/connector-sessions", start_session, methods=["POST"]),
    Route("/connector-sessions/{session_id}", get_session, methods=["GET"]),
    Route("/connector-sessions/{session_id}/cancel", cancel_session, methods=["POST"]),
    Route("/connections/{connection_id}/logout", logout, methods=["POST"]),
]


def _field_of(exc: msgspec.ValidationError) -> str | None:
    """The top-level field a msgspec error names (`... - at `$.requestId``), if any."""
    _, sep, path = str(exc).rpartition("at `$.")
    return path.split("`")[0].split(".")[0].split("[")[0] if sep else None
