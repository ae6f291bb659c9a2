"""`/api/connectors`: connector descriptors of the enabled plugins (SPEC 7.3)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..redaction import redact_all


async def list_connectors(request: Request) -> Response:
    # descriptors are the plugins' words: they pass the same redaction as every other answer
    return JSONResponse(redact_all(request.app.state.host.connectors(), request.app.state.secrets))


routes = [Route("/api/connectors", list_connectors, methods=["GET"])]
