"""The real stack for the plugin's end-to-end tests: host, runtime and admin API under uvicorn, the
real plugin process installed from `plugins/feishu_vendorcli`, and the fake Open Platform.

Every API answer and SSE frame the tests read is kept (`Stack.seen_text`), so a test
can prove that no secret ever appeared in one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
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
from tests.feishu_vendorcli.fake_platform import FakeOpenPlatform
from tests.support import REPO, eventually, free_port

ADMIN = "admin-token-feishu-0123456789"
BRIDGE = "bridge-token-feishu-0123456789"
PLUGIN_ID = "feishu_vendorcli"
ENCRYPT_KEY = "enc-key-e2e-Zx81"
VERIFICATION_TOKEN = "verif-token-1"


class Stack:
    def __init__(self, home: Path, fake: FakeOpenPlatform, host: PluginHost, runtime: ChannelRuntime) -> None:
        self.home = home
        self.fake = fake
        self.host = host
        self.runtime = runtime
        self.client: httpx.AsyncClient
        self.base = ""
        self.seen: list[InboundMessage] = []
        self.answers: list[str] = []  # every API answer and SSE frame read

    def seen_text(self) -> str:
        return "\n".join(self.answers)

    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        response = await self.client.request(method, path, **kw)
        self.answers.append(response.text)
        return response

    async def webhook(self, connection_id: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        response = await self.client.post(f"/webhooks/{connection_id}", content=body, headers=headers)
        self.answers.append(response.text)
        return response

    async def start_session(self, options: dict[str, Any], display_name: str = "") -> tuple[str, str]:
        r = await self.api(
            "POST", "/api/connector-sessions", json={"kind": "feishu", "displayName": display_name, "options": options}
        )
        assert r.status_code == 201, r.text
        body = r.json()
        return body["session"]["sessionId"], body["connection"]["connectionId"]

    async def session(self, session_id: str) -> dict[str, Any]:
        r = await self.api("GET", f"/api/connector-sessions/{session_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def wait_session(self, session_id: str, *statuses: str, timeout: float = 20) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            view = await self.session(session_id)
            return view if view["session"]["status"] in statuses else None

        return await eventually(reached, timeout)

    async def link(self, *, connection: str = "webhook", key: str | None = ENCRYPT_KEY, **options: Any) -> str:
        """A connected webhook (or websocket) connection for a fresh app of the fake; its connection id."""
        app_id, secret = self.fake.add_app(options.pop("app_id", "cli_fake0001"))
        body = {"mode": "link", "appId": app_id, "appSecret": secret, "domain": "feishu", "connection": connection}
        if key:
            body["encryptKey"] = key
        body["verificationToken"] = VERIFICATION_TOKEN
        body.update(options)
        session_id, connection_id = await self.start_session(body)
        view = await self.wait_session(session_id, "connected", "error")
        assert view["session"]["status"] == "connected", view
        await self.wait_served(connection_id)
        return connection_id

    async def wait_served(self, connection_id: str) -> None:
        """Until the plugin serves the connection (the host's connection.resume reached it)."""

        async def served() -> bool:
            health = await self.host.client(PLUGIN_ID).health()
            return connection_id in (health.connections or {})

        await eventually(served)

    async def wait_seen(self, count: int, timeout: float = 15) -> list[InboundMessage]:
        await eventually(lambda: len(self.seen) >= count, timeout)
        return self.seen

    def secrets(self) -> list[str]:
        """Everything that must never be shown: app secrets, the encrypt key, tenant tokens."""
        return [*self.fake.apps.values(), ENCRYPT_KEY, VERIFICATION_TOKEN, *self.fake.tokens]


def plugin_config(fake: FakeOpenPlatform, **overrides: Any) -> dict[str, Any]:
    config = {
        "feishuBaseUrl": fake.base_url,
        "larkBaseUrl": fake.base_url,
        "accountsBaseUrl": fake.accounts_url,
        "larkAccountsBaseUrl": fake.lark_accounts_url,
        "minPollIntervalSeconds": 0.1,
        "slowDownSeconds": 0.05,
        "reconnectInitialSeconds": 0.05,
        "reconnectMaxSeconds": 0.5,
        "eventAckTimeoutSeconds": 2.0,
    }
    config.update(overrides)
    return config


async def default_handler(message: InboundMessage) -> OutboundMessage | None:
    if message.content.startswith("quiet"):
        return None
    if message.content.startswith("new:"):  # a fresh message to the conversation, not a reply
        return OutboundMessage(
            channel_id=message.channel_id,
            peer_id=message.peer_id,
            peer_type=message.peer_type,
            content=f"echo: {message.content}",
        )
    if message.content.startswith("long:"):
        return message.reply("L" * 600 + "\n" + "M" * 600)
    return message.reply(f"echo: {message.content or message.message_type}")


@asynccontextmanager
async def running_stack(
    tmp_path: Path, *, config: dict[str, Any] | None = None, **runtime_kw: Any
) -> AsyncIterator[Stack]:
    home = tmp_path / "home"
    fake = FakeOpenPlatform()
    host = PluginHost(home)
    seen: list[InboundMessage] = []

    async def handler(message: InboundMessage) -> OutboundMessage | None:
        seen.append(message)
        return await default_handler(message)

    options = {"retry_base": 0.05, "retry_cap": 3.0, "idle_poll": 0.05, **runtime_kw}
    runtime = ChannelRuntime(handler, f"sqlite:///{home / 'state.db'}", plugin_host=host, home=home, **options)
    settings = Settings.load(
        {"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN, "CHANNEL_RUNTIME_BRIDGE_TOKEN": BRIDGE}, home=str(home)
    )

    async def install(h: PluginHost) -> None:
        outcome = await h.install(pack_directory(REPO / "plugins" / PLUGIN_ID, tmp_path / "feishu.zip"))
        assert outcome.created
        await h.set_config(PLUGIN_ID, plugin_config(fake, **(config or {})))
        await h.enable(PLUGIN_ID)

    app = create_app(host=host, runtime=runtime, settings=settings, host_setup=[install])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    async with fake.running(), anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await eventually(lambda: server.started, 60)
        stack = Stack(home, fake, host, runtime)
        stack.seen = seen
        stack.base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(
            base_url=stack.base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=20
        ) as client:
            stack.client = client
            try:
                yield stack
            finally:
                server.should_exit = True


def log_text(caplog: Any) -> str:
    return "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)


def assert_no_secret(stack: Stack, *texts: str) -> None:
    joined = "\n".join((stack.seen_text(), *texts))
    for secret in stack.secrets():
        assert secret not in joined, f"a secret leaked: {secret[:6]}..."
