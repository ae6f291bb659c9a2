"""`GET /api/nodes`: the hosts sharing this store and the connection leases each holds (SPEC 10)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..redaction import redact_all
from .bridge import runtime_of


async def list_nodes(request: Request) -> Response:
    nodes = await runtime_of(request).nodes()
    return JSONResponse(redact_all(nodes, request.app.state.secrets))


routes = [Route("/api/nodes", list_nodes, methods=["GET"])]
