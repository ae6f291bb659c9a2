"""`/api/connectors`: connector descriptors of the enabled plugins (SPEC 7.3)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from plugin_host.redact import mark_secret_fields

from ..redaction import redact_all


async def list_connectors(request: Request) -> Response:
    # descriptors are the plugins' words: they pass the same redaction as every other answer;
    # the secret options are marked writeOnly, so the page's form hides what the host would mask
    descriptors = request.app.state.host.connectors()
    for descriptor in descriptors:
        if isinstance(descriptor, dict) and isinstance(descriptor.get("optionsSchema"), dict):
            descriptor["optionsSchema"] = mark_secret_fields(descriptor["optionsSchema"])
    return JSONResponse(redact_all(descriptors, request.app.state.secrets))


routes = [Route("/api/connectors", list_connectors, methods=["GET"])]
