"""The echo example plugin, run as a real child process through the SDK harness."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from plugin_host.errors import FENCED, UNKNOWN_CONNECTION, RpcError
from plugin_host.protocol import ConnectionInfo, ConnectorSessionView, SendResult, WebhookResult
from plugin_host.sdk.testing import MemoryState, PluginHarness
from tests.support import eventually

pytestmark = pytest.mark.anyio

ECHO_DIR = Path(__file__).resolve().parents[2] / "plugins" / "echo"


def send_params(request_id: str, content: str = "hello", **metadata: Any) -> dict[str, Any]:
    return {
        "requestId": request_id,
        "connectionId": "conn_1",
        "channelId": "chan_1",
        "kind": "echo",
        "target": {"peerId": "peer_1", "peerType": "dm"},
        "content": content,
        "contentType": "text",
        "metadata": metadata,
    }


async def start_session(h: PluginHarness) -> ConnectorSessionView:
    params = {
        "sessionId": "cs_1",
        "kind": "echo",
        "connectionId": "conn_1",
        "channelId": "chan_1",
        "displayName": "Me",
        "options": {},
    }
    return await h.call("session.start", params, result_type=ConnectorSessionView)


async def served(h: PluginHarness) -> dict[str, str]:
    return (await h.call("health"))["connections"]


CONN = ConnectionInfo("conn_1", "chan_1", "echo", "acc", "Echo", options={}, credentials={"token": "t"})


def sent_records(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "sent.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_announces_the_manifest_connector(tmp_path: Path) -> None:
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path) as h:
        result = h.initialize_result
        assert result is not None
        assert (result.plugin.name, result.plugin.version) == ("echo", "1.0.0")
        [connector] = result.connectors
        assert (connector.kind, connector.auth_type) == ("echo", "credentials")
        assert connector.capabilities == ["receive_text", "send_text", "direct_messages"]
        assert result.capabilities == {"webhook": True, "sessions": True}


async def test_session_connects_at_once_with_credentials(tmp_path: Path) -> None:
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path) as h:
        view = await start_session(h)
        assert view.status == "connected"
        [update] = h.session_updates
        assert (update.status, update.connection_id, update.session_id) == ("connected", "conn_1", "cs_1")
        assert update.credentials and len(update.credentials["token"]) >= 16
        assert (await h.call("session.get", {"sessionId": "cs_1"}))["status"] == "connected"
        assert await h.call("health") == {"status": "ok", "detail": None, "connections": {"conn_1": "connected"}}
        assert h.protocol_errors == []


async def test_send_is_recorded_once_and_duplicates_are_flagged(tmp_path: Path) -> None:
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path) as h:
        with pytest.raises(RpcError) as exc:
            await h.call("message.send", send_params("out_1"))
        assert exc.value.code == UNKNOWN_CONNECTION
        await start_session(h)
        first = await h.call("message.send", send_params("out_1"), result_type=SendResult)
        again = await h.call("message.send", send_params("out_1"), result_type=SendResult)
        assert not first.duplicate and again.duplicate
        assert first.provider_message_id == again.provider_message_id
        [record] = sent_records(tmp_path)
        assert record["request"]["requestId"] == "out_1" and record["request"]["content"] == "hello"
        assert h.inbound_events == []


async def test_echo_back_loops_the_message_to_the_host(tmp_path: Path) -> None:
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path) as h:
        await start_session(h)
        await h.call("message.send", send_params("out_2", "ping", echoBack=True))
        [event] = await h.wait_for_inbound(1)
        assert (event.connection_id, event.channel_id, event.peer_id) == ("conn_1", "chan_1", "peer_1")
        assert event.content == "ping" and event.kind == "echo"
        assert event.metadata == {"echoOf": "out_2"}
        assert event.timestamp.endswith("Z")
        assert h.protocol_errors == []


async def test_webhook_turns_a_post_into_an_event(tmp_path: Path) -> None:
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path) as h:
        await start_session(h)
        body = base64.b64encode(json.dumps({"peerId": "u1", "text": "hi", "messageId": "m1"}).encode()).decode()
        params = {
            "connectionId": "conn_1",
            "method": "POST",
            "path": "/webhooks/conn_1",
            "query": "",
            "headers": {},
            "body": body,
        }
        result = await h.call("webhook.handle", params, result_type=WebhookResult)
        assert result.response.status == 200
        [event] = result.events
        assert (event.event_id, event.message_id, event.peer_id, event.content) == ("evt_m1", "m1", "u1", "hi")
        bad = await h.call(
            "webhook.handle", {**params, "body": base64.b64encode(b"nope").decode()}, result_type=WebhookResult
        )
        assert bad.response.status == 400 and bad.events == []


async def test_logout_revokes_and_resume_comes_from_initialize(tmp_path: Path) -> None:
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path, connections=[CONN]) as h:
        # initialize.connections are started after the handshake, in the background
        await eventually(lambda: h.state.value("handovers", connection_id="conn_1") == 1)
        assert await served(h) == {"conn_1": "connected"}
        assert (await h.call("message.send", send_params("out_3")))["duplicate"] is False
        assert await h.call("connection.logout", {"connectionId": "conn_1"}) == {}
        assert h.notifications_of("connection.status") == [
            {"connectionId": "conn_1", "status": "revoked", "error": None}
        ]
        assert await served(h) == {}
        assert h.state.value("handovers", connection_id="conn_1") is None  # the plugin cleaned up its state
        assert await h.call("shutdown") == {}
        await h.close_stdin()
        assert await h.wait_exit() == 0
        assert h.protocol_errors == []


async def test_resume_and_release_hand_a_connection_over_and_back(tmp_path: Path) -> None:
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path) as h:
        await h.resume(CONN)
        assert await served(h) == {"conn_1": "connected"}
        assert h.state.value("handovers", connection_id="conn_1") == 1
        await h.resume(CONN)  # again (credentials after a re-login): stopped, then started again
        assert h.state.value("handovers", connection_id="conn_1") == 2
        assert any("conn_1 is no longer served here" in line for line in h.stderr_lines)
        await h.release("conn_1")
        await h.release("conn_1")  # releasing what is not served is fine
        assert await served(h) == {}
        with pytest.raises(RpcError) as exc:
            await h.call("message.send", send_params("out_4"))
        assert exc.value.code == UNKNOWN_CONNECTION
        assert h.protocol_errors == []


async def test_send_records_live_in_host_state_and_survive_a_plugin_restart(tmp_path: Path) -> None:
    state = MemoryState()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path / "a", connections=[CONN], state=state) as h:
        await eventually(lambda: state.value("handovers", connection_id="conn_1") == 1)
        first = await h.call("message.send", send_params("out_5"), result_type=SendResult)
    assert [k for k in state.keys("conn_1") if k.startswith("sdk:send:")]
    # a new process (as after a crash or a hot swap), a fresh stateDir: the host's state is what remains
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path / "b", connections=[CONN], state=state) as h:
        await eventually(lambda: state.value("handovers", connection_id="conn_1") == 2)
        again = await h.call("message.send", send_params("out_5"), result_type=SendResult)
        assert again.duplicate and again.provider_message_id == first.provider_message_id
        assert sent_records(tmp_path / "b") == []  # nothing sent twice


async def test_a_fenced_write_stops_the_connection(tmp_path: Path) -> None:
    async with PluginHarness.subprocess(ECHO_DIR, state_dir=tmp_path, connections=[CONN]) as h:
        await eventually(lambda: h.state.value("handovers", connection_id="conn_1") == 1)
        h.state.set_epoch("conn_1", 7)  # another host took the lease
        with pytest.raises(RpcError) as exc:
            await h.call("message.send", send_params("out_6"))
        assert exc.value.code == FENCED
        assert await served(h) == {}
        assert any("conn_1 is no longer served here" in line for line in h.stderr_lines)
        await h.resume(CONN)  # handed back, at the new epoch: writes go through again
        assert h.state.value("handovers", connection_id="conn_1") == 2
        assert (await h.call("message.send", send_params("out_6")))["duplicate"] is False


async def test_through_the_real_host_send_records_survive_a_restart_and_a_hot_swap(tmp_path: Path) -> None:
    """The SPEC 3.6 records live in the host's store (SQLite file): a new process, even a new version, sees them."""
    from channel_runtime.runtime import ChannelRuntime
    from plugin_host.host import PluginHost
    from plugin_host.package import pack_directory
    from plugin_host.protocol import SendRequest, Target
    from plugin_host.sdk.idempotency import record_key
    from tests.fault_plugins import default_host_env
    from tests.support.admin import plugin_source

    async def no_reply(message: Any) -> None:
        return None

    home = tmp_path / "home"
    host = PluginHost(home, host_env=default_host_env())
    runtime = ChannelRuntime(no_reply, f"sqlite:///{tmp_path / 'state.db'}", plugin_host=host, home=home)
    async with runtime, host:
        await host.install(pack_directory(plugin_source(tmp_path, "1.0.0"), tmp_path / "v1.zip"))
        await host.install(pack_directory(plugin_source(tmp_path, "1.0.1"), tmp_path / "v2.zip"))
        await host.activate("echo", "1.0.0")
        await host.enable("echo")
        view = await runtime.connections.start_session("echo", "Me")
        connection_id, channel_id = view["connection"]["connectionId"], view["connection"]["channelId"]
        await eventually(lambda: runtime.store.plugin_state.get("echo", connection_id, "handovers"))
        echo = host.client("echo")
        request = SendRequest("out_x", connection_id, channel_id, "echo", Target("peer_1", "dm"), "once", "text", {})
        first = await echo.send(request)
        assert not first.duplicate
        await host.restart("echo")
        await eventually(lambda: host.supervisor("echo") is not None and host.supervisor("echo").state == "running")
        again = await echo.send(request)
        await host.activate("echo", "1.0.1")  # hot swap to a new version
        swapped = await echo.send(request)
        assert again.duplicate and swapped.duplicate
        assert first.provider_message_id == again.provider_message_id == swapped.provider_message_id
        assert len(sent_records(home / "plugin-data" / "echo")) == 1  # sent to the "platform" once
        records = await runtime.store.plugin_state.get("echo", connection_id, record_key("out_x"))
        assert records["out_x"]["status"] == "completed"
