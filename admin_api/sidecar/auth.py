"""The connector API's bearer token (SPEC 11): `Authorization: Bearer <CONNECTOR_API_TOKEN>`.

Every route of the connector contract needs it (constant-time check); with no token
configured every such request is refused. Other paths pass on to `TokenAuth` (admin
token for `/api/*` and `/metrics`; `/webhooks/*`, `/healthz`, `/admin` public).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from ..auth import CHALLENGE, bearer_token, route_path, token_matches
from ..errors import error_response

CONNECTOR_PATHS = ("/health", "/connectors", "/connector-sessions", "/connections", "/send")


def is_connector_path(path: str) -> bool:
    return any(path == prefix or path.startswith(prefix + "/") for prefix in CONNECTOR_PATHS)


class ConnectorAuth:
    def __init__(self, app: ASGIApp, *, connector_token: str | None) -> None:
        self.app = app
        self.connector_token = connector_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_connector_path(route_path(scope)):
            refusal = self.refusal(bearer_token(scope))
            if refusal is not None:
                await error_response(401, "unauthorized", refusal, headers=CHALLENGE)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, token: bytes | None) -> str | None:
        if not self.connector_token:
            return "the connector API is disabled: CONNECTOR_API_TOKEN is not set"
        if not token_matches(token, self.connector_token):
            return "a valid connector token is required (Authorization: Bearer <CONNECTOR_API_TOKEN>)"
        return None
