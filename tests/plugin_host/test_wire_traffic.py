"""Every message the real host and a real plugin exchange is complete and valid against schemas/.

A recording tap (tests/plugins/tap) sits between the real PluginHost (with the
real ChannelRuntime behind it) and the plugin: once the SDK's echo plugin, once
a plain Node.js plugin (tests/plugins/node_complete) that reads every field
without guessing defaults. The flow covers every method both ways: onboarding,
the hand-over (`connection.resume`, `initialize.connections` after a restart,
`connection.release`), host-kept state, sends, inbound events, logout, shutdown.
Each recorded line is checked against the strict schemas (the complete form:
no SPEC field missing, optional ones as null).
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from channel_runtime import InboundMessage, OutboundMessage
from channel_runtime.runtime import ChannelRuntime
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from plugin_host.protocol import BridgeEvent, WebhookParams
from plugin_host.wire_schemas import message_errors, missing_fields
from tests.support import eventually

pytestmark = pytest.mark.anyio
REPO = Path(__file__).resolve().parents[2]
TAP = REPO / "tests" / "plugins" / "tap"

BOTH_WAYS = {
    "host_to_plugin": {
        "initialize",
        "initialized",
        "health",
        "session.start",
        "session.get",
        "session.input",
        "session.cancel",
        "connection.resume",
        "connection.release",
        "message.send",
        "connection.logout",
        "shutdown",
    },
    "plugin_to_host": {"session.update", "event.inbound", "connection.status", "state.get", "state.put"},
}


def tapped(tmp_path: Path, target_dir: Path, argv: list[str]) -> Path:
    """A tap plugin (zip) in front of the plugin in `target_dir`, announcing that plugin's connectors."""
    target = json.loads((target_dir / "plugin.json").read_text())
    folder = tmp_path / "tap"
    folder.mkdir()
    shutil.copy(TAP / "tap.py", folder / "tap.py")
    manifest = json.loads((TAP / "plugin.json").read_text()) | {"connectors": target["connectors"]}
    (folder / "plugin.json").write_text(json.dumps(manifest))
    return pack_directory(folder, tmp_path / "tap.zip")


async def run_flow(
    tmp_path: Path, target_dir: Path, argv: list[str], *, handover_key: str, webhook: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """Drive every method through host and tap; returns the recorded lines and the plugin's stderr."""
    # the plugin's data folder: the only place a sandboxed plugin may write
    log = tmp_path / "home" / "plugin-data" / "tap" / "tap.jsonl"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "TAP_LOG": str(log),
        "TAP_TARGET": json.dumps(argv),
        "TAP_TARGET_DIR": str(target_dir),
    }
    kind = json.loads((target_dir / "plugin.json").read_text())["connectors"][0]["kind"]
    replies: list[str] = []

    async def handler(message: InboundMessage) -> OutboundMessage | None:
        replies.append(message.content)
        if message.content.startswith("echo:"):
            return None
        return message.reply(f"echo: {message.content}", metadata={"echoBack": True})

    host = PluginHost(tmp_path / "home", host_env=env)
    runtime = ChannelRuntime(handler, "memory://", plugin_host=host, idle_poll=0.05)
    async with runtime, host:
        await host.install(tapped(tmp_path, target_dir, argv))
        await host.enable("tap")
        tap = host.client("tap")
        # onboarding: session.start -> session.update -> connected -> connection.resume (state.*)
        view = await runtime.connections.start_session(kind, "Tap", {"region": "eu"})
        connection_id = view["connection"]["connectionId"]
        session_id = view["session"]["sessionId"]
        store = runtime.store
        # the plugin counts hand-overs in host-kept state
        await eventually(lambda: store.plugin_state.get("tap", connection_id, handover_key))
        await tap.session_get(session_id)
        await tap.session_input(session_id, "123456")
        await tap.session_input(session_id, None)
        await tap.session_cancel(session_id)
        record = await store.connections.get(connection_id)
        # an inbound message (the bridge path), its reply through message.send, and the plugin's echo of it
        event = BridgeEvent(
            event_id="ev_1",
            timestamp="2026-06-02T09:30:00Z",
            delivery_attempt=1,
            connection_id=connection_id,
            channel_id=record.channel_id,
            kind=kind,
            account_id=record.account_id,
            peer_id="u1",
            peer_type="dm",
            message_id="m1",
            message_type="text",
            content="hi",
            metadata={},
        )
        await runtime.ingest(event)
        await eventually(lambda: replies == ["hi", "echo: hi"])
        if webhook:
            body = base64.b64encode(json.dumps({"peerId": "u2", "text": "yo", "messageId": "w1"}).encode()).decode()
            params = WebhookParams(connection_id, "POST", f"/webhooks/{connection_id}", "", {}, body)
            for inbound in (await tap.webhook(params)).events:
                await runtime.ingest(inbound)
            await eventually(lambda: replies[2:] == ["yo", "echo: yo"])
        # a restart hands the connection over through initialize.connections
        await host.restart("tap")
        await eventually(lambda: host.supervisor("tap") is not None and host.supervisor("tap").state == "running")
        await tap.release(connection_id)
        await tap.resume(await runtime.connections.connection_info(record))
        await eventually(lambda: store.plugin_state.get("tap", connection_id, handover_key), timeout=5)
        await anyio.sleep(0.5)  # a few periodic health checks
        await runtime.connections.logout(connection_id)
        stderr = host.logs("tap", tail=1000)
        await host.disable("tap")  # shutdown
    return [json.loads(line) for line in log.read_text().splitlines()], stderr


def check_traffic(lines: list[dict[str, Any]]) -> None:
    requests: dict[tuple[str, object], str] = {}
    seen: dict[str, set[str]] = {"host_to_plugin": set(), "plugin_to_host": set()}
    problems = []
    answered: set[tuple[str, object]] = set()
    for entry in lines:
        message = json.loads(entry["line"])
        direction = entry["dir"]
        other = "plugin_to_host" if direction == "host_to_plugin" else "host_to_plugin"
        method = message.get("method")
        if method is not None:
            seen[direction].add(method)
            if "id" in message:
                requests[(direction, message["id"])] = method
            answered_method = None
        else:
            answered_method = requests.get((other, message.get("id")))
            answered.add((other, message.get("id")))
            assert "error" not in message, f"{answered_method} answered an error: {message}"
        issues = message_errors(direction, message, method=answered_method)
        missing = missing_fields(direction, message, method=answered_method)
        if issues or missing:
            problems.append((direction, entry["line"][:300], issues, missing))
    assert problems == []
    for direction, methods in BOTH_WAYS.items():
        assert methods <= seen[direction], f"not exercised {direction}: {methods - seen[direction]}"
    # every request either way was answered, with a result validated above
    assert set(requests) <= answered, set(requests) - answered


async def test_host_and_sdk_echo_traffic_is_complete_and_valid(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "echo_plugin"]
    lines, _ = await run_flow(tmp_path, REPO / "plugins" / "echo", argv, handover_key="handovers", webhook=True)
    check_traffic(lines)
    seen = {json.loads(e["line"]).get("method") for e in lines}
    assert "webhook.handle" in seen


async def test_host_and_a_plain_node_plugin_traffic_is_complete_and_valid(tmp_path: Path) -> None:
    node_dir = REPO / "tests" / "plugins" / "node_complete"
    argv = ["node", str(node_dir / "plugin.js")]
    lines, stderr = await run_flow(tmp_path, node_dir, argv, handover_key="resumes", webhook=False)
    check_traffic(lines)
    # the plugin read every field it was sent without a default: none was missing (it would have said so)
    assert not [line for line in stderr if "MISSING FIELD" in line or "error in" in line], stderr
    resumed = [
        json.loads(e["line"])
        for e in lines
        if e["dir"] == "host_to_plugin" and json.loads(e["line"]).get("method") == "initialize"
    ]
    assert [len(m["params"]["connections"]) for m in resumed] == [0, 1]  # the restart handed the connection back


async def test_the_real_host_reads_missing_optional_fields_as_null_and_refuses_missing_required_ones(
    tmp_path: Path,
) -> None:
    """SPEC 3.1 receivers: a plugin (raw JSON-RPC, no SDK) writes state with and without fields."""
    from tests.fault_plugins import default_host_env, raw_plugin_zip

    async def no_reply(message: InboundMessage) -> None:
        return None

    host = PluginHost(tmp_path / "home", host_env=default_host_env())
    runtime = ChannelRuntime(no_reply, "memory://", plugin_host=host)
    async with runtime, host:
        await host.install(raw_plugin_zip(tmp_path, "raw"))
        await host.enable("raw")
        raw = host.supervisor("raw")
        assert raw is not None

        async def ask(method: str, params: dict[str, Any]) -> Any:
            return await raw.call("ask_host", {"method": method, "params": params})

        # connectionId and epoch are optional: left out, they read as null (plugin-wide state, no fencing)
        assert await ask("state.put", {"key": "k", "value": [1]}) == {"epoch": 0}
        assert await ask("state.get", {"key": "k"}) == {"value": [1], "epoch": 0}
        # value is not optional (null deletes, but it is always sent): -32602, naming it
        refused = await ask("state.put", {"key": "k", "connectionId": None, "epoch": None})
        assert refused["code"] == -32602 and "value" in refused["message"]
        assert await ask("state.get", {"key": "k", "connectionId": None}) == {"value": [1], "epoch": 0}
