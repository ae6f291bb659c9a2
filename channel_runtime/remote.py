"""A remote sidecar as the connector provider of `serve` (the application side of SPEC 11).

When no local plugin provides a connector kind, `ConnectionManager` onboards it
through a sidecar: `POST /connector-sessions` with the application's own connection
and channel ids, `GET /connector-sessions/{id}` to follow the session, `/cancel`,
`POST /connections/{id}/logout`. A connected account runs as an
`external_connector` channel (`HttpChannel`: `POST /send`), and the sidecar
forwards its inbound events to this application's bridge.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgspec

from plugin_host.errors import Refusal
from plugin_host.redact import redact

from .config import ChannelConfig
from .store.base import ConnectionRecord

# a connection's `plugin_id` when a remote sidecar serves it: never a valid plugin id (SPEC 4)
REMOTE_PROVIDER = "@sidecar"
_SESSION_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
_ANSWER_LIMIT = 1024 * 1024


class SidecarError(Refusal):
    """The sidecar refused an onboarding call, or could not be reached."""


class SidecarClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        callback_base_url: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the sidecar URL must start with http:// or https://")
        self.url = url.rstrip("/")
        self._token = token
        self.callback_base_url = callback_base_url
        self._timeout = timeout
        self._transport = transport

    def __repr__(self) -> str:
        return f"SidecarClient({self.url!r})"  # never the token

    def channel_config(self, record: ConnectionRecord) -> ChannelConfig:
        """The `external_connector` channel of a connection the sidecar serves."""
        return ChannelConfig.for_sidecar_connection(
            url=self.url,
            token=self._token,
            connection_id=record.connection_id,
            connector_kind=record.kind,
            account_id=record.account_id,
            display_name=record.display_name,
        )

    # ---------------------------------------------------------------- the routes of SPEC 11

    async def start_session(
        self, *, kind: str, connection_id: str, channel_id: str, display_name: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        body = {
            "kind": kind,
            "connectionId": connection_id,
            "channelId": channel_id,
            "displayName": display_name,
            "callbackBaseUrl": self.callback_base_url,
            "options": options,
        }
        hidden = [v for v in options.values() if isinstance(v, str)]  # options may hold an app secret
        return _session_view(await self._call("POST", "/connector-sessions", body, hidden))

    async def get_session(self, session_id: str) -> dict[str, Any]:
        return _session_view(await self._call("GET", f"/connector-sessions/{session_id}"))

    async def cancel_session(self, session_id: str) -> dict[str, Any]:
        return _session_view(await self._call("POST", f"/connector-sessions/{session_id}/cancel", {}))

    async def logout(self, connection_id: str) -> None:
        await self._call("POST", f"/connections/{connection_id}/logout", {})

    async def _call(self, method: str, path: str, body: Any = None, hidden: list[str] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"}
        secrets = [self._token, *(hidden or [])]
        try:
            async with httpx.AsyncClient(timeout=self._timeout, transport=self._transport) as client:
                response = await client.request(
                    method,
                    self.url + path,
                    headers=headers,
                    content=None if body is None else msgspec.json.encode(body),
                )
        except httpx.HTTPError as exc:
            raise SidecarError(
                "sidecar_unavailable",
                f"the sidecar at {self.url} could not be reached ({type(exc).__name__})",
                status=503,
            ) from None
        try:
            answer = msgspec.json.decode(response.content[:_ANSWER_LIMIT]) if response.content else {}
        except msgspec.DecodeError:
            answer = None
        if response.status_code >= 400:
            error = answer.get("error") if isinstance(answer, dict) else None
            code = str(error.get("code")) if isinstance(error, dict) and error.get("code") else "sidecar_refused"
            message = str(error.get("message")) if isinstance(error, dict) else f"HTTP {response.status_code}"
            status = response.status_code if response.status_code < 500 else 502
            raise SidecarError(code, f"the sidecar refused: {redact(message, secrets)}", status=status)
        if answer is None:
            raise SidecarError("sidecar_invalid_answer", "the sidecar answered something that is not JSON", status=502)
        return answer


def _session_view(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict) or not _SESSION_ID.match(str(answer.get("sessionId") or "")):
        raise SidecarError("sidecar_invalid_answer", "the sidecar answered no valid session view", status=502)
    return answer
