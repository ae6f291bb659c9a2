"""One error shape outside (SPEC 7.1): `{"error": {"code", "message", "details"}}`.

Refusals inside (`plugin_host.errors.Refusal` and its kinds: `ApiError`, `HostError`,
`PackageError`, `ManifestError`, `OnboardingError`, `IngestError`) and `RpcError` are
mapped here, and only here, to a status and that shape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plugin_host.errors import OVERLOADED, TIMED_OUT, UNAVAILABLE, UNKNOWN_CONNECTION, Refusal, RpcError
from plugin_host.redact import redact

from .redaction import redact_all

log = logging.getLogger("admin_api")

_HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}

# RpcError code -> HTTP status; anything else is the plugin's fault: 502
_RPC_STATUS: dict[int, int] = {
    UNAVAILABLE: 503,
    TIMED_OUT: 504,
    OVERLOADED: 503,
    UNKNOWN_CONNECTION: 404,
}


class ApiError(Refusal):
    """An answer other than success, raised anywhere in a handler."""


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str] = (),
) -> JSONResponse:
    # messages and details may quote plugins, validators and vendors: everything goes through redact
    body = {
        "error": {
            "code": code,
            "message": redact_all(message, secrets),
            "details": redact_all(dict(details or {}), secrets),
        }
    }
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def _secrets(request: Request) -> list[str]:
    """The app's own secrets (admin and bridge tokens), masked in every answer."""
    return list(getattr(request.app.state, "secrets", ()))


async def _refusal(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refusal)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers, _secrets(request))


async def _rpc_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RpcError)
    status = _RPC_STATUS.get(exc.code, 502)
    details: dict[str, Any] = {"rpcCode": exc.code}
    if exc.data is not None:
        details["data"] = exc.data
    headers = {"Retry-After": "1"} if exc.code in (UNAVAILABLE, OVERLOADED) else None
    return error_response(status, exc.name, exc.message, details, headers, _secrets(request))


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    if exc.status_code == 404:
        message = f"no route {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = exc.detail or code.replace("_", " ")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, code, message, headers=headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (Starlette names only the first route's)."""
    allowed: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            allowed |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(allowed))


EXCEPTION_HANDLERS = {
    Refusal: _refusal,
    RpcError: _rpc_error,
    HTTPException: _http_exception,
}


class UnexpectedErrors:
    """Outermost app middleware: an unexpected exception is a 500 in the one shape, logged redacted.

    Catching it here (rather than in Starlette's ServerErrorMiddleware, which
    re-raises) keeps a traceback with request data out of the server's log.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            log.error(
                "unexpected %s on %s %s: %s",
                type(exc).__name__,
                scope.get("method"),
                scope.get("path"),
                redact(str(exc)),
            )
            if started:
                raise
            response = error_response(500, "internal_error", "internal error; see the server log")
            await response(scope, receive, send)
