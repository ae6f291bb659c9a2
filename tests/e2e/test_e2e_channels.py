"""End to end through a real HTTP server, the real echo plugin process and a real SQLite file.

Onboarding → channel running without restart → inbound via webhook and via
`event.inbound` → handler → outbox → `message.send` → retry with the same
requestId → bridge endpoint rules → logout → channel removed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
import uvicorn

from admin_api import create_app
from channel_runtime import InboundMessage, OutboundMessage
from channel_runtime.runtime import ChannelRuntime
from channel_runtime.settings import Settings
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from plugin_host.protocol import SendRequest
from tests.support import REPO, eventually, free_port

pytestmark = pytest.mark.anyio

ADMIN = "admin-token-e2e-0123456789"
BRIDGE = "bridge-token-e2e-0123456789"
PUBLIC_URL = "https://bots.example.test"


class Stack:
    def __init__(self, home: Path, runtime: ChannelRuntime, host: PluginHost, client: httpx.AsyncClient) -> None:
        self.home = home
        self.runtime = runtime
        self.host = host
        self.client = client
        self.seen: list[InboundMessage] = []

    def sent(self) -> list[dict[str, Any]]:
        path = self.home / "plugin-data" / "echo" / "sent.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    home = tmp_path / "home"
    seen: list[InboundMessage] = []

    async def handler(message: InboundMessage) -> OutboundMessage | None:
        seen.append(message)
        if message.content.startswith("echo:"):
            return None  # the loop ends when the plugin echoes our reply back
        return message.reply(f"echo: {message.content}", metadata={"echoBack": True})

    host = PluginHost(home)
    runtime = ChannelRuntime(
        handler,
        f"sqlite:///{home / 'state.db'}",
        plugin_host=host,
        home=home,
        retry_base=0.05,
        retry_cap=0.2,
        idle_poll=0.05,
    )
    settings = Settings.load(
        {
            "CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN,
            "CHANNEL_RUNTIME_BRIDGE_TOKEN": BRIDGE,
            "CHANNEL_RUNTIME_PUBLIC_URL": PUBLIC_URL,
        },
        home=str(home),
    )

    async def install_echo(h: PluginHost) -> None:
        outcome = await h.install(pack_directory(REPO / "plugins" / "echo", tmp_path / "echo.zip"))
        assert outcome.created
        await h.enable("echo")

    app = create_app(host=host, runtime=runtime, settings=settings, host_setup=[install_echo])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await eventually(lambda: server.started)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=20
        ) as client:
            s = Stack(home, runtime, host, client)
            s.seen = seen
            yield s
        server.should_exit = True


async def connect(s: Stack) -> tuple[str, str, str]:
    r = await s.client.post("/api/connector-sessions", json={"kind": "echo", "displayName": "Tester"})
    assert r.status_code == 201, r.text
    body = r.json()
    session_id = body["session"]["sessionId"]
    connection_id = body["connection"]["connectionId"]

    async def connected() -> dict[str, Any] | None:
        view = (await s.client.get(f"/api/connector-sessions/{session_id}")).json()
        return view if view["connection"]["status"] == "connected" else None

    view = await eventually(connected)
    assert view["session"]["status"] == "connected"
    return session_id, connection_id, view["connection"]["channelId"]


async def test_onboarding_to_logout_end_to_end(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = stack
    bodies: list[str] = []

    async def get(path: str, **kw: Any) -> httpx.Response:
        r = await s.client.get(path, **kw)
        bodies.append(r.text)
        return r

    assert [c["kind"] for c in (await get("/api/connectors")).json()] == ["echo"]
    session_id, connection_id, channel_id = await connect(s)

    # the channel runs at once, without any restart
    channels = (await get("/api/channels")).json()
    assert [(c["channelId"], c["state"], c["kind"]) for c in channels] == [(channel_id, "running", "plugin")]
    connection = (await get(f"/api/connections/{connection_id}")).json()
    assert connection["status"] == "connected" and connection["hasCredentials"] is True
    assert "credentials" not in connection
    # where the platform must send its webhooks
    assert connection["webhookUrl"] == f"{PUBLIC_URL}/webhooks/{connection_id}"

    # SSE: the stream shows the connected session and ends (terminal status)
    events = await get(f"/api/connector-sessions/{session_id}/events")
    assert events.headers["content-type"].startswith("text/event-stream")
    frames = [line[len("data: ") :] for line in events.text.splitlines() if line.startswith("data: ")]
    assert json.loads(frames[0])["session"]["status"] == "connected"
    assert json.loads(frames[0])["connection"]["webhookUrl"].endswith(f"/webhooks/{connection_id}")

    # inbound through the platform webhook → handler → outbox → plugin message.send
    # → the plugin echoes the reply back through event.inbound → handler again
    hook = await s.client.post(f"/webhooks/{connection_id}", json={"peerId": "u1", "text": "ping", "messageId": "w1"})
    assert hook.status_code == 200 and hook.json() == {"ok": True}
    await eventually(lambda: [m.content for m in s.seen] == ["ping", "echo: ping"])
    first, echoed = s.seen
    assert first.session_id == "echo:dm:u1" and first.channel_id == channel_id
    assert echoed.metadata.get("echoOf", "").startswith(f"out_{channel_id}:echo:dm:u1:")
    [delivery] = s.sent()
    assert delivery["request"]["requestId"] == echoed.metadata["echoOf"]
    assert delivery["request"]["target"]["replyToMessageId"] == "w1"

    # the platform delivering the same webhook again changes nothing
    again = await s.client.post(f"/webhooks/{connection_id}", json={"peerId": "u1", "text": "ping", "messageId": "w1"})
    assert again.status_code == 200
    await anyio.sleep(0.3)
    assert len(s.seen) == 2 and len(s.sent()) == 1

    # delivery while the plugin is down is retried with the same requestId once it is back
    assert (await s.client.post("/api/plugins/echo/disable")).status_code == 200
    request_id = await s.runtime.send(OutboundMessage(channel_id=channel_id, peer_id="u2", content="later"))

    async def failed_once() -> bool:
        entry = await s.runtime.store.outbox.get_by_request_id(request_id)
        return entry is not None and entry.attempts >= 1 and entry.last_error is not None

    await eventually(failed_once)
    assert (await s.client.post("/api/plugins/echo/enable")).status_code == 200

    async def delivered() -> bool:
        entry = await s.runtime.store.outbox.get_by_request_id(request_id)
        return entry is not None and entry.status == "sent"

    await eventually(delivered)
    assert [d["request"]["requestId"] for d in s.sent()].count(request_id) == 1
    # the resumed plugin got the connection back through initialize: a webhook still works
    hook = await s.client.post(f"/webhooks/{connection_id}", json={"peerId": "u3", "text": "hi", "messageId": "w3"})
    assert hook.status_code == 200

    # the plugin's own idempotency: the same requestId again is a duplicate and sends nothing
    [done] = [d for d in s.sent() if d["request"]["requestId"] == request_id]
    result = await s.host.client("echo").send(msgspec.convert(done["request"], SendRequest))
    assert result.duplicate is True and result.provider_message_id == done["providerMessageId"]
    assert [d["request"]["requestId"] for d in s.sent()].count(request_id) == 1

    # logout: plugin told, channel removed, connection revoked; its doors close
    out = await s.client.post(f"/api/connections/{connection_id}/logout")
    assert out.status_code == 200 and out.json()["status"] == "revoked"
    assert out.json()["hasCredentials"] is False
    assert (await get("/api/channels")).json() == []
    # logout is final: a late or replayed "connected" from the plugin cannot bring it back
    from plugin_host.protocol import SessionUpdate

    await s.runtime.connections.on_session_update(
        "echo",
        SessionUpdate(
            session_id=session_id,
            kind="echo",
            status="connected",
            instructions=[],
            metadata={},
            connection_id=connection_id,
            credentials={"token": "replayed-token-0123456789"},
        ),
    )
    again = (await get(f"/api/connections/{connection_id}")).json()
    assert again["status"] == "revoked" and again["hasCredentials"] is False
    assert (await get("/api/channels")).json() == []
    gone = await s.client.post(f"/webhooks/{connection_id}", json={"peerId": "u1", "text": "x", "messageId": "w9"})
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "unknown_connection"

    # no secret anywhere: stored credentials, tokens
    credentials = await s.runtime.store.connections.get_credentials(connection_id)
    assert credentials == {}  # revoked: credentials dropped
    logs = caplog.text
    for secret in (ADMIN, BRIDGE):
        assert all(secret not in b for b in bodies)
        assert secret not in logs


async def test_credentials_never_leave_the_store(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = stack
    session_id, connection_id, _ = await connect(s)
    token = (await s.runtime.store.connections.get_credentials(connection_id))["token"]
    assert len(token) >= 32
    raw = (s.home / "state.db").read_bytes() + (s.home / "state.db-wal").read_bytes()
    assert token.encode() not in raw  # encrypted at rest
    texts = [
        (await s.client.get(path)).text
        for path in (
            "/api/connections",
            f"/api/connections/{connection_id}",
            f"/api/connector-sessions/{session_id}",
            f"/api/connector-sessions/{session_id}/events",
            "/api/channels",
            "/api/plugins",
            "/api/plugins/echo",
            "/api/plugins/echo/logs",
        )
    ]
    assert all(token not in t for t in texts)
    assert token not in caplog.text


async def test_bridge_endpoint_rules(stack: Stack) -> None:
    s = stack
    _, connection_id, _ = await connect(s)
    url = "/api/channel-connector-bridge/events"
    event = {
        "eventId": "b1",
        "timestamp": "2026-06-02T09:30:00Z",
        "deliveryAttempt": 1,
        "connectionId": connection_id,
        "channelId": "",
        "kind": "echo",
        "accountId": "acc",
        "peerId": "p1",
        "peerType": "dm",
        "messageId": "bm1",
        "messageType": "text",
        "content": "from sidecar",
        "metadata": {},
    }
    bridge = {"Authorization": f"Bearer {BRIDGE}"}
    assert (await s.client.post(url, json=event, headers={"Authorization": ""})).status_code == 401
    assert (await s.client.post(url, json=event, headers={"Authorization": "Bearer wrong"})).status_code == 401
    # the admin token is not the bridge token
    assert (await s.client.post(url, json=event)).status_code == 401
    bad = await s.client.post(url, json={**event, "peerType": "nonsense"}, headers=bridge)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_event"
    missing = await s.client.post(url, json={k: v for k, v in event.items() if k != "messageId"}, headers=bridge)
    assert missing.status_code == 422
    unknown = await s.client.post(url, json={**event, "connectionId": "conn_nope"}, headers=bridge)
    assert unknown.status_code == 404

    ok = await s.client.post(url, json=event, headers=bridge)
    assert ok.status_code == 200 and ok.json() == {
        "accepted": True,
        "duplicate": False,
        "pending": True,
        "retryAfterSeconds": None,
    }
    dup = await s.client.post(url, json={**event, "deliveryAttempt": 2}, headers=bridge)
    assert dup.status_code == 200 and dup.json()["duplicate"] is True
    await eventually(lambda: [m.content for m in s.seen if m.content == "from sidecar"] == ["from sidecar"])
    await anyio.sleep(0.2)
    assert [m.content for m in s.seen].count("from sidecar") == 1

    # processing elsewhere and fresh → 409 with retryAfterSeconds 5
    await s.runtime.store.bridge_dedupe.begin(connection_id, "b2", "bm2")
    busy = await s.client.post(url, json={**event, "eventId": "b2", "messageId": "bm2"}, headers=bridge)
    assert busy.status_code == 409 and busy.json()["retryAfterSeconds"] == 5

    # failed earlier → processed again on the next delivery
    await s.runtime.store.bridge_dedupe.begin(connection_id, "b3", "bm3")
    await s.runtime.store.bridge_dedupe.fail(f"{connection_id}:b3", "boom")
    retry = await s.client.post(
        url, json={**event, "eventId": "b3", "messageId": "bm3", "content": "retried"}, headers=bridge
    )
    assert retry.status_code == 200 and retry.json()["accepted"] and not retry.json()["duplicate"]
    record = await s.runtime.store.bridge_dedupe.get(f"{connection_id}:b3")
    assert record is not None and record.status == "completed" and record.delivery_attempts == 2
    assert record.last_error is None
    await eventually(lambda: any(m.content == "retried" for m in s.seen))


async def test_bridge_refused_without_bridge_token(tmp_path: Path) -> None:
    host = PluginHost(tmp_path)
    runtime = ChannelRuntime(None, "memory://", plugin_host=host)
    settings = Settings.load({"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN}, home=str(tmp_path))
    app = create_app(host=host, runtime=runtime, settings=settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for token in ("", ADMIN, "anything"):
                r = await client.post(
                    "/api/channel-connector-bridge/events", json={}, headers={"Authorization": f"Bearer {token}"}
                )
                assert r.status_code == 401
