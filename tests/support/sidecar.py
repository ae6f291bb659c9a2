"""Helpers of the sidecar tests (no tests here): a sidecar app with the echo plugin, and a recording bridge.

The recording bridge stands in for the *application* a sidecar forwards to (the seed's
backend, a third party from the sidecar's side); the end-to-end tests use a real
`channel-runtime serve` instead.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin_api.sidecar import create_sidecar_app
from channel_runtime.settings import SidecarSettings
from channel_runtime.sidecar import Sidecar
from plugin_host.clock import Clock
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from tests.support import eventually, free_port
from tests.support.admin import ADMIN_TOKEN, ECHO_DIR, lifespan

CONNECTOR_TOKEN = "c0nnector-Tok3n-for-tests-0123456789abcdefXYZ"
APP_BRIDGE_TOKEN = "app-Br1dge-Tok3n-for-tests-0123456789abcdefXYZ"
BRIDGE_PATH = "/api/channel-connector-bridge/events"

# SPEC 11's example body of POST /connector-sessions
SESSION_BODY: dict[str, Any] = {
    "kind": "echo",
    "connectionId": "conn_app_0001",
    "channelId": "chan_app_0001",
    "displayName": "Support bot",
    "callbackBaseUrl": "https://app.example.com",
    "options": {},
}
SESSION_FIELDS = {
    "sessionId",
    "kind",
    "status",
    "qrCode",
    "qrImage",
    "instructions",
    "accountId",
    "displayName",
    "error",
    "metadata",
}


def send_body(request_id: str, *, connection_id: str = "conn_app_0001", **metadata: Any) -> dict[str, Any]:
    """A SPEC 3.6 send request, every field present."""
    return {
        "requestId": request_id,
        "connectionId": connection_id,
        "channelId": "chan_app_0001",
        "kind": "echo",
        "target": {"peerId": "user_1", "peerType": "dm", "threadId": None, "replyToMessageId": None},
        "content": f"hello {request_id}",
        "contentType": "text",
        "metadata": metadata,
    }


def sidecar_settings(home: Path, *, token: str | None = CONNECTOR_TOKEN, bridge: str | None = None) -> SidecarSettings:
    env = {"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN_TOKEN, "BEAVER_BRIDGE_TOKEN": APP_BRIDGE_TOKEN}
    if token is not None:
        env["CONNECTOR_API_TOKEN"] = token
    if bridge is not None:
        env["BEAVER_BRIDGE_BASE_URL"] = bridge
    return SidecarSettings.load(env, home=home)


async def install_echo(host: PluginHost) -> None:
    if host.registry.get("echo") is None:
        archive = pack_directory(ECHO_DIR, host.home.parent / f"echo-{id(host)}.zip")
        await host.install(io.BytesIO(archive.read_bytes()))
        await host.enable("echo")
    await eventually(lambda: host.supervisor("echo") is not None and host.supervisor("echo").state == "running")


@asynccontextmanager
async def running_sidecar(
    home: Path,
    *,
    token: str | None = CONNECTOR_TOKEN,
    bridge: str | None = None,
    clock: Clock | None = None,
    **sidecar_kw: Any,
) -> AsyncIterator[tuple[Sidecar, httpx.AsyncClient]]:
    """A sidecar app with the echo plugin, its lifespan running; the client carries the connector token."""
    settings = sidecar_settings(home, token=token, bridge=bridge)
    host = PluginHost(home, clock=clock)
    sidecar = Sidecar(
        plugin_host=host,
        store=f"sqlite:///{home / 'state.db'}",
        bridge_base_url=settings.bridge_base_url,
        bridge_token=settings.bridge_token,
        home=home,
        clock=clock,
        **{"forward_retry_base": 0.05, "forward_retry_cap": 0.2, **sidecar_kw},
    )
    app = create_sidecar_app(host=host, sidecar=sidecar, settings=settings, host_setup=[install_echo])
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        lifespan(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sidecar", headers=headers, timeout=30
        ) as http,
    ):
        yield sidecar, http


Answer = Callable[[dict[str, Any], int], Awaitable[Response | None]]


@dataclass
class RecordingBridge:
    """A real HTTP bridge endpoint on 127.0.0.1 that records what reaches it; `answer` may refuse."""

    port: int = field(default_factory=free_port)
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (authorization, event)
    answer: Answer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def events(self) -> list[dict[str, Any]]:
        return [event for _, event in self.received]

    async def _endpoint(self, request: Request) -> Response:
        event = await request.json()
        self.received.append((request.headers.get("authorization", ""), event))
        if self.answer is not None:
            response = await self.answer(event, len(self.received))
            if response is not None:
                return response
        return JSONResponse({"accepted": True, "duplicate": False, "pending": True, "retryAfterSeconds": None})

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[RecordingBridge]:
        app = Starlette(routes=[Route(BRIDGE_PATH, self._endpoint, methods=["POST"])])
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            await eventually(lambda: server.started)
            try:
                yield self
            finally:
                server.should_exit = True
