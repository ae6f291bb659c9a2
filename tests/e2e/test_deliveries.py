"""Deliveries that tell the truth, end to end (SPEC 3.7, 6.4, 6.5, 7.3).

A real HTTP server, a real SQLite file and a real plugin process: the plain
Node.js plugin `tests/plugins/scripted` (no SDK) plays a platform that closes
reply windows (-32016), rate-limits (-32015) or expires the account's session
(-32017, `connection.status` error `session_expired`). The replies that waited
arrive in order, once; a refused send is never `sent`; the relogin route brings
an expired account back; the traffic validates against `schemas/`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from admin_api import create_app
from channel_runtime import InboundMessage, OutboundMessage
from channel_runtime.runtime import ChannelRuntime
from channel_runtime.settings import Settings
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from tests.support import REPO, eventually, free_port
from tests.support.traffic import answers_to, read_traffic, traffic_problems

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("node") is None, reason="the scripted plugin needs Node.js"),
]

ADMIN = "admin-token-deliveries-0123456789"
PLUGIN_DIR = REPO / "tests" / "plugins" / "scripted"


class Stack:
    def __init__(self, home: Path, runtime: ChannelRuntime, client: httpx.AsyncClient, base: str) -> None:
        self.home = home
        self.runtime = runtime
        self.client = client
        self.base = base
        self.inbound: list[InboundMessage] = []

    @property
    def data(self) -> Path:
        return self.home / "plugin-data" / "scripted"

    def sent(self) -> list[dict[str, Any]]:
        path = self.data / "sent.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def traffic(self) -> list[tuple[str, dict[str, Any]]]:
        return read_traffic(self.data / "traffic.jsonl")

    async def connect(self, **options: Any) -> tuple[str, str]:
        r = await self.client.post("/api/connector-sessions", json={"kind": "scripted", "options": options})
        assert r.status_code == 201, r.text
        connection_id = r.json()["connection"]["connectionId"]
        await eventually(lambda: self.status(connection_id, "connected"))
        channel_id = r.json()["connection"]["channelId"]
        await eventually(lambda: self.runtime.states.get(channel_id, {}).get("state") == "running")
        return connection_id, channel_id

    async def status(self, connection_id: str, wanted: str) -> dict[str, Any] | None:
        view = (await self.client.get(f"/api/connections/{connection_id}")).json()
        return view if view["status"] == wanted else None

    async def peer_writes(self, connection_id: str, peer: str, message_id: str) -> None:
        body = {"peerId": peer, "text": f"hello {message_id}", "messageId": message_id}
        r = await self.client.post(f"/webhooks/{connection_id}", json=body)
        assert r.status_code == 200, r.text

    async def send(self, channel_id: str, peer: str, content: str) -> str:
        return await self.runtime.send(OutboundMessage(channel_id=channel_id, peer_id=peer, content=content))

    async def delivery(self, delivery_id: str) -> dict[str, Any]:
        r = await self.client.get(f"/api/deliveries/{delivery_id}")
        assert r.status_code == 200, r.text
        return r.json()

    async def state_of(self, delivery_id: str, state: str, reason: str | None = None) -> dict[str, Any] | None:
        view = await self.delivery(delivery_id)
        return view if view["status"] == state and (reason is None or view["reason"] == reason) else None


@asynccontextmanager
async def stack_at(home: Path, tmp: Path, *, install: bool) -> AsyncIterator[Stack]:
    host = PluginHost(home)
    seen: list[InboundMessage] = []

    async def handler(message: InboundMessage) -> None:
        seen.append(message)  # no reply: the tests send their own

    runtime = ChannelRuntime(
        handler, f"sqlite:///{home / 'state.db'}", plugin_host=host, home=home, idle_poll=0.05, retry_base=0.05
    )
    settings = Settings.load({"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN}, home=str(home))

    async def install_scripted(h: PluginHost) -> None:
        if install:
            await h.install(pack_directory(PLUGIN_DIR, tmp / "scripted.zip"))
            await h.enable("scripted")

    app = create_app(host=host, runtime=runtime, settings=settings, host_setup=[install_scripted])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        await eventually(lambda: server.started)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=20) as client:
            s = Stack(home, runtime, client, base)
            s.inbound = seen
            await eventually(
                lambda: host.supervisor("scripted") is not None and host.supervisor("scripted").state == "running"
            )
            try:
                yield s
            finally:
                server.should_exit = True


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with stack_at(tmp_path / "home", tmp_path, install=True) as s:
        yield s


def assert_traffic_valid(s: Stack) -> list[tuple[str, dict[str, Any]]]:
    traffic = s.traffic()
    assert traffic_problems(traffic) == []
    return traffic


def send_outcomes(traffic: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, int | None]]:
    """(content, error code or None) of every message.send call, in order."""
    return [
        (params["content"], answer.get("error", {}).get("code"))
        for params, answer in answers_to(traffic, "message.send")
    ]


async def test_a_closed_reply_window_defers_until_the_peer_writes_again(stack: Stack) -> None:
    connection_id, channel_id = await stack.connect(mode="reply_window", repliesPerInbound=1)
    # the manifest's replyWindowSeconds: a peer that never wrote cannot be answered yet
    early = await stack.send(channel_id, "u1", "a0")
    await eventually(lambda: stack.state_of(early, "deferred", "reply_window"))
    assert stack.sent() == []
    await stack.peer_writes(connection_id, "u1", "w1")
    await eventually(lambda: stack.state_of(early, "sent"))
    a1, a2, a3 = [await stack.send(channel_id, "u1", c) for c in ("a1", "a2", "a3")]
    # the platform refuses a1 (-32016): it waits for the peer, a2 and a3 wait behind it
    view = await eventually(lambda: stack.state_of(a1, "deferred", "reply_window"))
    assert view["attempts"] == 0 and view["sentAt"] is None and view["providerMessageId"] is None
    assert "reply_window_closed" in view["lastError"]
    assert (await stack.delivery(a2))["status"] == "queued" and (await stack.delivery(a3))["status"] == "queued"
    listed = (await stack.client.get("/api/deliveries", params={"status": "deferred", "channelId": channel_id})).json()
    assert [d["id"] for d in listed] == [a1]
    for n, delivery_id in enumerate((a1, a2, a3), start=2):
        # each waits for the peer: the platform allows one reply per message of the peer
        await eventually(lambda: stack.state_of(delivery_id, "deferred", "reply_window"))  # noqa: B023
        await stack.peer_writes(connection_id, "u1", f"w{n}")
        done = await eventually(lambda: stack.state_of(delivery_id, "sent"))  # noqa: B023
        assert done["providerMessageId"] and done["sentAt"] >= done["createdAt"]
    assert [m["content"] for m in stack.sent()] == ["a0", "a1", "a2", "a3"]  # in order, once each
    outcomes = send_outcomes(assert_traffic_valid(stack))
    # one refusal each, then accepted after the peer wrote: nothing was tried in between
    assert outcomes == [
        ("a0", None),
        ("a1", -32016),
        ("a1", None),
        ("a2", -32016),
        ("a2", None),
        ("a3", -32016),
        ("a3", None),
    ]


async def test_a_rate_limit_waits_retry_after_without_counting_an_attempt(stack: Stack) -> None:
    connection_id, channel_id = await stack.connect(mode="rate_limit", rateLimitedSends=2, retryAfterSeconds=1)
    await stack.peer_writes(connection_id, "u1", "w1")
    b1, b2 = [await stack.send(channel_id, "u1", c) for c in ("b1", "b2")]
    waiting = await eventually(lambda: stack.state_of(b1, "deferred", "retry_after"))
    assert waiting["attempts"] == 0 and waiting["nextAttemptAt"] > waiting["lastAttemptAt"]
    done = await stack.runtime.wait_delivery(b2, timeout=30)
    assert done.status == "sent"
    first = await stack.delivery(b1)
    assert first["status"] == "sent" and first["attempts"] == 1  # two -32015 answers did not count
    assert first["firstAttemptAt"] < first["lastAttemptAt"]
    calls = send_outcomes(assert_traffic_valid(stack))
    assert calls == [("b1", -32015), ("b1", -32015), ("b1", None), ("b2", None)]
    rate_limited = [answer for _, answer in answers_to(stack.traffic(), "message.send") if "error" in answer]
    assert all(a["error"]["data"] == {"retryAfterSeconds": 1} for a in rate_limited)
    assert [m["content"] for m in stack.sent()] == ["b1", "b2"]


async def collect_events(stack: Stack, into: list[tuple[str, dict[str, Any]]], ready: anyio.Event) -> None:
    """Follow GET /api/events over the real server."""
    async with httpx.AsyncClient(base_url=stack.base, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
        async with client.stream("GET", "/api/events", timeout=None) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            kind = ""
            async for line in response.aiter_lines():
                if line.startswith("retry:"):
                    ready.set()
                elif line.startswith("event: "):
                    kind = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    into.append((kind, json.loads(line.removeprefix("data: "))))


@pytest.mark.parametrize("reported", [True, False], ids=["connection.status", "send answered -32017"])
async def test_an_expired_session_keeps_its_deliveries_until_relogin(stack: Stack, reported: bool) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    async with anyio.create_task_group() as tg:
        ready = anyio.Event()
        tg.start_soon(collect_events, stack, events, ready)
        await ready.wait()
        connection_id, channel_id = await stack.connect(mode="expire", sendsBeforeExpiry=1, reportExpiry=reported)
        await stack.peer_writes(connection_id, "u1", "w1")
        c1 = await stack.send(channel_id, "u1", "c1")
        await eventually(lambda: stack.state_of(c1, "sent"))
        if reported:  # the plugin reports the expiry before c2 is sent: c2 waits without a call
            await eventually(lambda: stack.status(connection_id, "error"))
        c2, c3 = [await stack.send(channel_id, "u1", c) for c in ("c2", "c3")]
        waiting = await eventually(lambda: stack.state_of(c2, "deferred", "not_connected"))
        connection = await eventually(lambda: stack.status(connection_id, "error"))
        assert connection["error"] == "session_expired" and connection["channelId"] == channel_id
        assert waiting["expiresAt"] == pytest.approx(waiting["deferredAt"] + 86_400)
        assert (await stack.delivery(c3))["status"] == "queued"
        assert stack.runtime.states[channel_id]["state"] == "running"  # the channel stays
        metrics = (await stack.client.get("/metrics")).text
        assert "channel_runtime_connections_session_expired 1.0" in metrics
        assert 'channel_runtime_connections{status="error"} 1.0' in metrics
        assert 'channel_runtime_deliveries{state="deferred"} 1.0' in metrics

        r = await stack.client.post(f"/api/connections/{connection_id}/relogin")
        assert r.status_code == 201, r.text
        assert r.json()["connection"]["connectionId"] == connection_id
        for delivery_id in (c2, c3):
            await stack.runtime.wait_delivery(delivery_id, timeout=30)
        await eventually(lambda: stack.status(connection_id, "connected"))
        await eventually(lambda: any(k == "connection.status" and d["status"] == "connected" for k, d in events[3:]))
        tg.cancel_scope.cancel()
    assert [m["content"] for m in stack.sent()] == ["c1", "c2", "c3"]
    traffic = assert_traffic_valid(stack)
    starts = [params for params, _ in answers_to(traffic, "session.start")]
    assert [p["connectionId"] for p in starts] == [connection_id, connection_id]  # the re-login: same connection
    assert any(params["connectionId"] == connection_id for params, _ in answers_to(traffic, "connection.resume"))
    outcomes = send_outcomes(traffic)
    assert outcomes == [("c1", None)] + ([] if reported else [("c2", -32017)]) + [("c2", None), ("c3", None)]
    kinds = [(k, d.get("status") or d.get("reason")) for k, d in events]
    assert ("connection.status", "error") in kinds and ("delivery.deferred", "not_connected") in kinds
    expired = [d for k, d in events if k == "connection.status" and d["status"] == "error"]
    assert expired[0]["error"] == "session_expired" and expired[0]["connectionId"] == connection_id
    assert kinds.index(("connection.status", "error")) < kinds.index(("delivery.deferred", "not_connected"))
    assert ("plugin.state", None) not in kinds  # every event names what changed


async def test_an_expiry_survives_a_restart_and_nothing_is_tried_meanwhile(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with stack_at(home, tmp_path, install=True) as s:
        connection_id, channel_id = await s.connect(mode="expire", sendsBeforeExpiry=1000)
        await s.peer_writes(connection_id, "u1", "w1")
        r = await s.client.post(f"/webhooks/{connection_id}", json={"control": "expire"})
        assert r.status_code == 200
        await eventually(lambda: s.status(connection_id, "error"))
        d1, d2 = [await s.send(channel_id, "u1", c) for c in ("d1", "d2")]
        await eventually(lambda: s.state_of(d1, "deferred", "not_connected"))
    async with stack_at(home, tmp_path, install=False) as s:  # the same home: a restart
        assert s.runtime.states[channel_id]["state"] == "running"
        assert (await s.delivery(d1))["status"] == "deferred" and (await s.delivery(d2))["status"] == "queued"
        await anyio.sleep(0.3)
        assert (await s.delivery(d1))["status"] == "deferred"
        r = await s.client.post(f"/api/connections/{connection_id}/relogin", json={"displayName": "again"})
        assert r.status_code == 201, r.text
        await s.runtime.wait_delivery(d2, timeout=30)
        assert [m["content"] for m in s.sent()] == ["d1", "d2"]
        traffic = assert_traffic_valid(s)
        assert [c for c, _ in send_outcomes(traffic)] == ["d1", "d2"]  # nothing was tried while expired
