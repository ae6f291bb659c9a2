"""`/api/connectors`: connector descriptors of the enabled plugins (SPEC 7.3)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def list_connectors(request: Request) -> Response:
    return JSONResponse(request.app.state.host.connectors())


routes = [Route("/api/connectors", list_connectors, methods=["GET"])]
