"""The real stack around the Weixin plugin, for end-to-end tests (no tests here).

A real `PluginHost` and `ChannelRuntime` (SQLite file) inside `admin_api.create_app`
under uvicorn on 127.0.0.1, the real plugin process installed from
`plugins/weixin_vendorcli`, configured to talk to the fake iLink server. Only the
platform is fake.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn

from admin_api import create_app
from channel_runtime import InboundMessage, OutboundMessage
from channel_runtime.runtime import ChannelRuntime
from channel_runtime.settings import Settings
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from tests.support import REPO, eventually, free_port
from tests.weixin_vendorcli.fake_ilink import FakeIlink

ADMIN = "admin-token-weixin-0123456789"
PLUGIN_ID = "weixin_vendorcli"
PLUGIN_DIR = REPO / "plugins" / "weixin_vendorcli"

Handler = Callable[[InboundMessage], Awaitable[OutboundMessage | None]]


def fast_config(base_url: str, **overrides: Any) -> dict[str, Any]:
    """The plugin's config for tests: the fake's URL and timeouts in the tens of milliseconds."""
    return {
        "baseUrl": base_url,
        "pollTimeoutMs": 1000,
        "qrPollTimeoutMs": 1000,
        "qrPollIntervalMs": 100,
        "apiTimeoutMs": 3000,
        "retryDelayMs": 100,
        "backoffMs": 400,
        "sessionPauseMs": 600_000,
        "partIntervalMs": 50,
        **overrides,
    }


async def echo(message: InboundMessage) -> OutboundMessage | None:
    return message.reply(f"echo: {message.content}")


class Stack:
    def __init__(self, home: Path, host: PluginHost, runtime: ChannelRuntime, client: httpx.AsyncClient) -> None:
        self.home = home
        self.host = host
        self.runtime = runtime
        self.client = client
        self.seen: list[InboundMessage] = []
        self.bodies: list[str] = []  # every API answer body, for the no-secret checks

    async def get(self, path: str, **kw: Any) -> Any:
        response = await self.client.get(path, **kw)
        self.bodies.append(response.text)
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, path: str, body: Any = None, expect: int | None = None) -> httpx.Response:
        response = await self.client.post(path, json=body)
        self.bodies.append(response.text)
        if expect is not None:
            assert response.status_code == expect, response.text
        return response

    async def connection(self, connection_id: str) -> dict[str, Any]:
        return await self.get(f"/api/connections/{connection_id}")  # type: ignore[no-any-return]

    async def session(self, session_id: str) -> dict[str, Any]:
        return (await self.get(f"/api/connector-sessions/{session_id}"))["session"]  # type: ignore[no-any-return]

    async def session_status(self, session_id: str, status: str, timeout: float = 15) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            view = await self.session(session_id)
            return view if view["status"] == status else None

        return await eventually(reached, timeout)  # type: ignore[no-any-return]

    async def connection_status(self, connection_id: str, status: str, timeout: float = 15) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            view = await self.connection(connection_id)
            return view if view["status"] == status else None

        return await eventually(reached, timeout)  # type: ignore[no-any-return]

    async def start_login(self, display_name: str = "Bot") -> tuple[str, str]:
        response = await self.post("/api/connector-sessions", {"kind": "weixin", "displayName": display_name}, 201)
        body = response.json()
        return body["session"]["sessionId"], body["connection"]["connectionId"]

    async def login(self, fake: FakeIlink, token: str, bot_id: str, display_name: str = "Bot") -> tuple[str, str]:
        """A whole QR login (scan, confirm); the account's connection id and channel id, once it receives."""
        polls_before = len(fake.of("getupdates"))
        session_id, connection_id = await self.start_login(display_name)
        await self.session_status(session_id, "qr_ready")
        fake.push_status("scaned")
        await self.session_status(session_id, "scanned")
        fake.push_status("confirmed", bot_token=token, ilink_bot_id=bot_id, ilink_user_id="owner@im.wechat")
        await self.session_status(session_id, "connected")
        view = await self.connection_status(connection_id, "connected")
        await eventually(
            lambda: any(
                r.headers.get("authorization") == f"Bearer {token}" for r in fake.of("getupdates")[polls_before:]
            )
        )
        return connection_id, view["channelId"]

    def plugin_pid(self) -> int | None:
        supervisor = self.host.supervisor(PLUGIN_ID)
        return supervisor.pid if supervisor is not None else None


@asynccontextmanager
async def weixin_stack(
    home: Path, config: dict[str, Any], *, handler: Handler = echo, work: Path | None = None
) -> AsyncIterator[Stack]:
    """The stack on `home` (reuse a home to restart the host with its state)."""
    home.mkdir(parents=True, exist_ok=True)
    seen: list[InboundMessage] = []

    async def recording(message: InboundMessage) -> OutboundMessage | None:
        seen.append(message)
        return await handler(message)

    host = PluginHost(home)
    runtime = ChannelRuntime(
        recording,
        f"sqlite:///{home / 'state.db'}",
        plugin_host=host,
        home=home,
        retry_base=0.05,
        retry_cap=0.3,
        idle_poll=0.05,
    )
    settings = Settings.load({"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN}, home=str(home))
    zips = work or home.parent

    async def install(h: PluginHost) -> None:
        if h.registry.get(PLUGIN_ID) is None:
            await h.install(pack_directory(PLUGIN_DIR, zips / "weixin_vendorcli.zip"))
        await h.set_config(PLUGIN_ID, config)
        await h.enable(PLUGIN_ID)

    app = create_app(host=host, runtime=runtime, settings=settings, host_setup=[install])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await eventually(lambda: server.started, 30)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=20
        ) as client:
            stack = Stack(home, host, runtime, client)
            stack.seen = seen
            await eventually(
                lambda: host.supervisor(PLUGIN_ID) is not None and host.supervisor(PLUGIN_ID).state == "running", 30
            )  # type: ignore[union-attr]
            try:
                yield stack
            finally:
                server.should_exit = True


def all_log_text(caplog: Any) -> str:
    return "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)


__all__ = ["ADMIN", "PLUGIN_ID", "Stack", "all_log_text", "echo", "fast_config", "logging", "weixin_stack"]
