"""Bearer-token auth by path (SPEC 7.2).

- `/api/channel-connector-bridge/*`: the bridge token; none configured, every request refused;
- every other `/api/*`: the admin token;
- `/metrics`: the admin token unless metrics are configured open;
- everything else (`/healthz`, `/readyz`, `/webhooks/*`, `/admin`, `/openapi.json`): public.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import error_response

BRIDGE_PREFIX = "/api/channel-connector-bridge"
CHALLENGE = {"WWW-Authenticate": "Bearer"}


def route_path(scope: Scope) -> str:
    """The path inside this app (without the prefix it is mounted under)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "").rstrip("/")
    # strip the mount prefix only at a segment boundary: "/ap" must not turn "/api/x" into "i/x"
    if root and (path == root or path.startswith(root + "/")):
        return path[len(root) :] or "/"
    return path


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def token_matches(given: bytes | None, expected: str | None) -> bool:
    if given is None or not expected:
        return False
    return hmac.compare_digest(given, expected.encode())


class TokenAuth:
    def __init__(self, app: ASGIApp, *, admin_token: str, bridge_token: str | None, metrics_open: bool) -> None:
        if not admin_token:
            raise ValueError("the admin API needs an admin token")
        self.app = app
        self.admin_token = admin_token
        self.bridge_token = bridge_token
        self.metrics_open = metrics_open

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(route_path(scope), bearer_token(scope))
            if refusal is not None:
                await error_response(401, "unauthorized", refusal, headers=CHALLENGE)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, path: str, token: bytes | None) -> str | None:
        """Why a request to `path` with `token` is refused, or None when it may pass."""
        if _under(path, BRIDGE_PREFIX):
            if not self.bridge_token:
                return "the connector bridge is disabled: no bridge token is configured"
            if not token_matches(token, self.bridge_token):
                return "a valid bridge token is required (Authorization: Bearer <token>)"
            return None
        if _under(path, "/api") or (path == "/metrics" and not self.metrics_open):
            if not token_matches(token, self.admin_token):
                return "a valid admin token is required (Authorization: Bearer <token>)"
        return None
