"""Every message the real host and the real SDK plugin exchange validates against schemas/.

The echo plugin runs behind a recording tap (tests/plugins/tap) under the real
PluginHost and ChannelRuntime; the flow covers every method both ways.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import anyio
import pytest

from channel_runtime import InboundMessage, OutboundMessage
from channel_runtime.runtime import ChannelRuntime
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from plugin_host.protocol import WebhookParams
from plugin_host.wire_schemas import message_errors

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]


async def test_host_and_sdk_traffic_matches_the_schemas(tmp_path: Path) -> None:
    home = tmp_path / "home"
    # the plugin's data folder: the only place a sandboxed plugin may write
    log = home / "plugin-data" / "tap" / "tap.jsonl"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "TAP_LOG": str(log),
        "TAP_ECHO_DIR": str(REPO / "plugins" / "echo"),
        "TAP_PYTHON": sys.executable,
    }
    replies: list[str] = []

    async def handler(message: InboundMessage) -> OutboundMessage | None:
        replies.append(message.content)
        return (
            None
            if message.content.startswith("echo:")
            else message.reply(f"echo: {message.content}", metadata={"echoBack": True})
        )

    host = PluginHost(home, host_env=env)
    runtime = ChannelRuntime(handler, "memory://", plugin_host=host, idle_poll=0.05)
    async with runtime, host:
        await host.install(pack_directory(REPO / "tests" / "plugins" / "tap", tmp_path / "tap.zip"))
        await host.enable("tap")
        view = await runtime.connections.start_session("echo", "Tap")
        connection_id = view["connection"]["connectionId"]
        with anyio.fail_after(10):
            while (await runtime.store.connections.get(connection_id)).status != "connected":
                await anyio.sleep(0.02)
        session_id = view["session"]["sessionId"]
        tap = host.client("tap")
        await tap.session_get(session_id)
        await tap.session_input(session_id, "123456")
        await tap.session_cancel(session_id)
        body = base64.b64encode(json.dumps({"peerId": "u1", "text": "hi", "messageId": "w1"}).encode()).decode()
        result = await tap.webhook(
            WebhookParams(
                connection_id=connection_id,
                method="POST",
                path=f"/webhooks/{connection_id}",
                headers={"content-type": "application/json"},
                body=body,
            ),
        )
        for event in result.events:
            await runtime.ingest(event)
        with anyio.fail_after(10):
            while replies != ["hi", "echo: hi"]:
                await anyio.sleep(0.02)
        await anyio.sleep(0.5)  # a few periodic health checks
        await runtime.connections.logout(connection_id)
        await host.disable("tap")  # shutdown

    lines = [json.loads(line) for line in log.read_text().splitlines()]
    requests: dict[tuple[str, object], str] = {}
    seen: set[str] = set()
    problems = []
    for entry in lines:
        message = json.loads(entry["line"])
        direction = entry["dir"]
        method = message.get("method")
        if method is not None:
            seen.add(method)
            if "id" in message:
                requests[(direction, message["id"])] = method
            answered = None
        else:
            other = "plugin_to_host" if direction == "host_to_plugin" else "host_to_plugin"
            answered = requests.get((other, message.get("id")))
        issues = message_errors(direction, message, method=answered)
        if issues:
            problems.append((direction, entry["line"][:300], issues))
    assert problems == []
    expected = {
        "initialize",
        "initialized",
        "health",
        "session.start",
        "session.get",
        "session.input",
        "session.cancel",
        "webhook.handle",
        "message.send",
        "connection.logout",
        "shutdown",
        "session.update",
        "event.inbound",
        "connection.status",
    }
    assert expected <= seen, f"not exercised: {expected - seen}"
    # every request was answered with a result that was validated above
    answered = {json.loads(e["line"]).get("id") for e in lines if "method" not in json.loads(e["line"])}
    assert all(i in answered for (_, i) in requests)
