"""plugin_host.sdk: dispatch, built-ins, concurrency, stdio handling, harnesses."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from plugin_host.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    REQUEST_CANCELLED,
    UNKNOWN_CONNECTION,
    UNSUPPORTED,
    RpcError,
)
from plugin_host.protocol import (
    BridgeEvent,
    ConnectorSessionView,
    InboundAck,
    InitializeParams,
    NameVersion,
    PluginRef,
    SendRequest,
    SendResult,
    Target,
)
from plugin_host.sdk import Context, Plugin
from plugin_host.sdk.testing import PluginHarness
from plugin_host.streams import pipe_pair

pytestmark = pytest.mark.anyio
OK_HEALTH = {"status": "ok", "detail": None, "connections": None}  # every field on the wire (SPEC 3.1)


def send_request(request_id: str = "req_1", **metadata: Any) -> SendRequest:
    return SendRequest(
        request_id=request_id,
        connection_id="conn_1",
        channel_id="chan_1",
        kind="test",
        target=Target(peer_id="peer_1", peer_type="dm"),
        content="hello",
        content_type="text",
        metadata=metadata,
    )


def make_plugin(**kwargs: Any) -> Plugin:
    plugin = Plugin(name="test", version="0.1.0", **kwargs)
    plugin.connector(kind="test", display_name="Test", auth_type="credentials", capabilities=["send_text"])

    @plugin.method("message.send")
    async def send(ctx: Context, params: SendRequest) -> SendResult:
        assert isinstance(params, SendRequest)
        return SendResult(duplicate=False, provider_message_id=f"sent:{params.content}")

    @plugin.method("echo.raw")
    async def echo_raw(ctx: Context, params: Any) -> Any:
        return {"params": params, "requestId": ctx.request_id, "method": ctx.method}

    @plugin.method("fail.rpc")
    async def fail_rpc(ctx: Context, params: Any) -> Any:
        raise RpcError(UNKNOWN_CONNECTION, "no such connection", {"connectionId": "conn_x"})

    @plugin.method("fail.crash")
    async def fail_crash(ctx: Context, params: Any) -> Any:
        raise ValueError("secret detail sk_live_do_not_leak")

    return plugin


# ---------------------------------------------------------------- initialize and dispatch


async def test_initialize_announces_plugin_connectors_and_capabilities(tmp_path: Path) -> None:
    plugin = make_plugin()
    async with PluginHarness.in_process(plugin, config={"x": 1}, state_dir=tmp_path) as h:
        result = h.initialize_result
        assert result is not None
        assert result.protocol_version == 1
        assert (result.plugin.name, result.plugin.version) == ("test", "0.1.0")
        assert [c.kind for c in result.connectors] == ["test"]
        assert result.capabilities == {"webhook": False, "sessions": False}
        assert plugin.config == {"x": 1}
        assert plugin.state_dir == str(tmp_path)
        await plugin.initialized.wait()


async def test_name_and_version_default_to_what_the_host_says() -> None:
    plugin = Plugin()

    @plugin.method("webhook.handle")
    async def webhook(ctx: Context, params: Any) -> Any:
        return {}

    async with PluginHarness.in_process(plugin, plugin_id="anon", version="2.0.0") as h:
        assert h.initialize_result is not None
        assert h.initialize_result.plugin == NameVersion("anon", "2.0.0")
        assert h.initialize_result.capabilities["webhook"] is True


async def test_connectors_come_from_the_manifest(tmp_path: Path) -> None:
    (tmp_path / "plugin.json").write_text(
        '{"id": "mf", "version": "3.1.4", "connectors": [{"kind": "mf", "displayName": "MF",'
        ' "authType": "qr", "capabilities": ["groups"]}]}'
    )
    plugin = Plugin(manifest=tmp_path)
    async with PluginHarness.in_process(plugin) as h:
        assert h.initialize_result is not None
        assert h.initialize_result.plugin == NameVersion("mf", "3.1.4")
        assert h.initialize_result.connectors[0].auth_type == "qr"


async def test_wrong_protocol_version_is_refused() -> None:
    async with PluginHarness.in_process(make_plugin(), initialize=False) as h:
        params = InitializeParams(2, NameVersion("h", "1"), PluginRef("p", "1"), {}, "/tmp", [])
        with pytest.raises(RpcError) as exc:
            await h.call("initialize", params)
        assert exc.value.code == UNSUPPORTED


async def test_known_method_params_are_typed_and_results_encoded() -> None:
    async with PluginHarness.in_process(make_plugin()) as h:
        result = await h.call("message.send", send_request(), result_type=SendResult)
        assert result == SendResult(duplicate=False, provider_message_id="sent:hello")


async def test_unknown_method_params_are_plain_json() -> None:
    async with PluginHarness.in_process(make_plugin()) as h:
        result = await h.call("echo.raw", {"a": [1, 2]})
        assert result["params"] == {"a": [1, 2]}
        assert result["method"] == "echo.raw"
        assert result["requestId"] is not None


async def test_unknown_method_answers_method_not_found() -> None:
    async with PluginHarness.in_process(make_plugin()) as h:
        with pytest.raises(RpcError) as exc:
            await h.call("no.such.method", {})
        assert exc.value.code == METHOD_NOT_FOUND


async def test_invalid_params_answer_invalid_params() -> None:
    async with PluginHarness.in_process(make_plugin()) as h:
        with pytest.raises(RpcError) as exc:
            await h.call("message.send", {"connectionId": "conn_1"})  # no requestId, target, ...
        assert exc.value.code == INVALID_PARAMS
        with pytest.raises(RpcError) as exc:
            await h.call("message.send", None)
        assert exc.value.code == INVALID_PARAMS


async def test_rpc_error_from_a_handler_is_answered_as_is() -> None:
    async with PluginHarness.in_process(make_plugin()) as h:
        with pytest.raises(RpcError) as exc:
            await h.call("fail.rpc")
        assert (exc.value.code, exc.value.data) == (UNKNOWN_CONNECTION, {"connectionId": "conn_x"})


async def test_crash_in_a_handler_is_internal_error_with_traceback_in_the_log(caplog: pytest.LogCaptureFixture) -> None:
    async with PluginHarness.in_process(make_plugin()) as h:
        with caplog.at_level(logging.ERROR), pytest.raises(RpcError) as exc:
            await h.call("fail.crash")
    assert exc.value.code == INTERNAL_ERROR
    assert "sk_live" not in exc.value.message
    assert any(r.exc_info and r.exc_info[0] is ValueError for r in caplog.records)


async def test_health_defaults_to_ok_and_can_be_overridden() -> None:
    async with PluginHarness.in_process(make_plugin()) as h:
        assert await h.call("health") == OK_HEALTH
    plugin = make_plugin()

    @plugin.method("health")
    async def health(ctx: Context, params: Any) -> dict[str, Any]:
        return {"status": "degraded", "detail": "half"}

    async with PluginHarness.in_process(plugin) as h:
        # a dict result is completed to the method's shape: every field goes out
        assert await h.call("health") == {"status": "degraded", "detail": "half", "connections": None}


def test_builtins_cannot_be_replaced() -> None:
    plugin = Plugin()
    for name in ("initialize", "shutdown", "initialized", "$/cancelRequest"):
        with pytest.raises(ValueError):
            plugin.method(name)


# ---------------------------------------------------------------- concurrency and cancel


async def test_handlers_run_concurrently() -> None:
    plugin = make_plugin()
    arrived = 0
    all_in = anyio.Event()

    @plugin.method("gather")
    async def gather(ctx: Context, params: Any) -> int:
        nonlocal arrived
        arrived += 1
        if arrived == 10:
            all_in.set()
        await all_in.wait()  # only returns once all ten are in flight together
        return arrived

    async with PluginHarness.in_process(plugin) as h:
        results: list[int] = []

        async def one() -> None:
            results.append(await h.call("gather"))

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
        assert results == [10] * 10


async def test_concurrency_is_bounded_but_health_still_answers() -> None:
    plugin = make_plugin(max_concurrency=2)
    in_flight = peak = 0
    release = anyio.Event()

    @plugin.method("work")
    async def work(ctx: Context, params: Any) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1

    async with PluginHarness.in_process(plugin) as h:
        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(h.call, "work")
            await anyio.wait_all_tasks_blocked()
            assert peak == 2
            assert await h.call("health") == OK_HEALTH  # not queued behind the limiter
            release.set()
        assert peak == 2 and in_flight == 0


async def test_a_waiter_cancelled_in_the_queue_does_not_leak_a_slot() -> None:
    plugin = make_plugin(max_concurrency=1)
    release = anyio.Event()

    @plugin.method("hold")
    async def hold(ctx: Context, params: Any) -> str:
        await release.wait()
        return "held"

    async with PluginHarness.in_process(plugin) as h:
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.call, "hold")
            await anyio.wait_all_tasks_blocked()
            with pytest.raises(RpcError):  # queued behind "hold"; the host gives up and cancels it
                await h.call("echo.raw", {}, timeout=0.05)
            release.set()
        assert (await h.call("echo.raw", {"after": True}))["params"] == {"after": True}
        assert plugin._limiter.free == 1


async def test_a_result_that_cannot_be_encoded_is_internal_error_not_a_crash() -> None:
    plugin = make_plugin()

    @plugin.method("weird")
    async def weird(ctx: Context, params: Any) -> object:
        return object()

    @plugin.method("weird.error")
    async def weird_error(ctx: Context, params: Any) -> object:
        raise RpcError(UNKNOWN_CONNECTION, "with odd data", object())

    async with PluginHarness.in_process(plugin) as h:
        with pytest.raises(RpcError) as exc:
            await h.call("weird")
        assert exc.value.code == INTERNAL_ERROR
        with pytest.raises(RpcError) as exc:
            await h.call("weird.error")
        assert (exc.value.code, exc.value.data) == (UNKNOWN_CONNECTION, None)
        await h.notify("$/cancelRequest", {"id": {"not": "hashable"}})
        assert await h.call("health") == OK_HEALTH


class RawPeer:
    """A host that writes and reads raw protocol lines."""

    def __init__(self, send: Any, receive: Any) -> None:
        self.send_stream, self.receive_stream = send, receive
        self.buf = b""

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_stream.send(msgspec.json.encode(message) + b"\n")

    async def receive_line(self) -> bytes:
        with anyio.fail_after(5):
            while b"\n" not in self.buf:
                self.buf += await self.receive_stream.receive()
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    async def receive(self) -> dict[str, Any]:
        return msgspec.json.decode(await self.receive_line())


async def test_cancel_request_cancels_the_handler_and_answers_request_cancelled() -> None:
    plugin = make_plugin()
    started, cancelled = anyio.Event(), anyio.Event()

    @plugin.method("slow")
    async def slow(ctx: Context, params: Any) -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    to_plugin_r, to_plugin_w = pipe_pair()
    to_host_r, to_host_w = pipe_pair()
    peer = RawPeer(to_plugin_w, to_host_r)
    async with anyio.create_task_group() as tg:
        tg.start_soon(plugin.serve, to_plugin_r, to_host_w)
        await peer.send({"jsonrpc": "2.0", "id": "slow-1", "method": "slow", "params": {}})
        with anyio.fail_after(5):
            await started.wait()
        await peer.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": "slow-1"}})
        answer = await peer.receive()
        assert answer["id"] == "slow-1"
        assert answer["error"]["code"] == REQUEST_CANCELLED
        assert cancelled.is_set()
        await to_plugin_w.aclose()  # EOF: serve returns
    await to_host_r.aclose()


async def test_serve_returns_on_eof_and_runs_shutdown_hooks() -> None:
    plugin = make_plugin()
    hooks: list[str] = []

    @plugin.on_shutdown
    async def bye(ctx: Context) -> None:
        hooks.append("bye")

    to_plugin_r, to_plugin_w = pipe_pair()
    to_host_r, to_host_w = pipe_pair()
    async with anyio.create_task_group() as tg:
        tg.start_soon(plugin.serve, to_plugin_r, to_host_w)
        await to_plugin_w.aclose()
    assert hooks == ["bye"]
    with pytest.raises(anyio.EndOfStream):
        await to_host_r.receive()  # the plugin closed its output
    await to_host_r.aclose()


async def test_shutdown_runs_hooks_cancels_background_tasks_and_stops_serving() -> None:
    plugin = make_plugin(shutdown_grace=0.3)  # above anyio's 0.1 s polling in wait_all_tasks_blocked
    events: list[str] = []

    async def poller(connection_id: str) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            events.append(f"poller {connection_id} stopped")

    @plugin.on_initialize
    async def start_pollers(ctx: Context, params: InitializeParams) -> None:
        plugin.start_background(poller, "conn_1")

    @plugin.on_shutdown
    async def bye(ctx: Context) -> None:
        await anyio.wait_all_tasks_blocked()
        events.append("hook")

    async with PluginHarness.in_process(plugin) as h:
        assert await h.call("shutdown") == {}
        assert events[-1] == "hook", events
        with anyio.fail_after(5):  # serve ends by itself, even though stdin stays open
            await h.disconnected.wait()
    assert sorted(events) == ["hook", "poller conn_1 stopped"]


async def test_background_task_failure_is_logged_and_contained(caplog: pytest.LogCaptureFixture) -> None:
    plugin = make_plugin()
    done = anyio.Event()

    async def broken() -> None:
        try:
            raise RuntimeError("boom")
        finally:
            done.set()

    async with PluginHarness.in_process(plugin) as h:
        with caplog.at_level(logging.ERROR):
            scope = plugin.start_background(broken)
            await done.wait()
            await anyio.wait_all_tasks_blocked()
        assert isinstance(scope, anyio.CancelScope)
        assert await h.call("health") == OK_HEALTH
    assert any("background task broken failed" in r.getMessage() for r in caplog.records)


def test_start_background_needs_a_serving_plugin() -> None:
    with pytest.raises(RuntimeError):
        Plugin().start_background(anyio.sleep_forever)


# ---------------------------------------------------------------- plugin -> host


async def test_handlers_talk_to_the_host() -> None:
    plugin = make_plugin()

    @plugin.method("poke")
    async def poke(ctx: Context, params: Any) -> dict[str, Any]:
        event = BridgeEvent(
            event_id="evt_1",
            timestamp="2026-06-02T09:30:00Z",
            delivery_attempt=1,
            connection_id="conn_1",
            channel_id="chan_1",
            kind="test",
            account_id="acc",
            peer_id="p",
            peer_type="dm",
            message_id="m1",
            message_type="text",
            content="hi",
            metadata={},
        )
        ack = await ctx.host.inbound(event)
        await ctx.host.connection_status("conn_1", "connected")
        await ctx.host.log("info", "poked", peer="p")
        raw = await ctx.host.call("event.inbound", event)
        return {"ack": ack, "raw": raw}

    answer = InboundAck(accepted=True, duplicate=True, pending=False)
    async with PluginHarness.in_process(plugin, inbound_answer=lambda event: answer) as h:
        result = await h.call("poke")
        assert result["ack"]["duplicate"] is True and result["raw"]["duplicate"] is True
        assert [e.event_id for e in h.inbound_events] == ["evt_1", "evt_1"]
        assert await h.wait_for_notification("log") == {"level": "info", "message": "poked", "fields": {"peer": "p"}}
        assert h.notifications_of("connection.status") == [
            {"connectionId": "conn_1", "status": "connected", "error": None}
        ]
        method, sent = h.calls[0]
        assert method == "event.inbound" and len(sent) == len(BridgeEvent.__struct_fields__)  # every field
        assert sent["userId"] is None and sent["threadId"] is None
        assert h.protocol_errors == []


async def test_the_sdk_refuses_locally_what_the_host_would_refuse() -> None:
    plugin = make_plugin()

    @plugin.method("poke")
    async def poke(ctx: Context, params: Any) -> Any:
        event = BridgeEvent("", "2026-13-01T00:00:00Z", 1, "c", "ch", "test", "", "p", "dm", "m", "text", "", {})
        try:
            await ctx.host.inbound(event)
        except ValueError as exc:
            return str(exc)
        return "sent"

    async with PluginHarness.in_process(plugin) as h:
        assert "eventId" in await h.call("poke")
        assert h.calls == []


async def test_plugin_host_is_unavailable_outside_serve() -> None:
    with pytest.raises(RpcError):
        _ = Plugin().host


# ---------------------------------------------------------------- a real child process

CHILD_PLUGIN = textwrap.dedent(
    """
    import os
    import subprocess

    import anyio

    from plugin_host.sdk import Plugin

    plugin = Plugin(name="child", version="0.2.0")

    @plugin.method("noisy")
    async def noisy(ctx, params):
        print("stray print to stdout")
        os.write(1, b"raw write to fd 1\\n")
        subprocess.run(["sh", "-c", "echo from a child process"], check=True)
        return {"ok": True, "pid": os.getpid()}

    @plugin.method("slow")
    async def slow(ctx, params):
        await anyio.sleep_forever()

    if __name__ == "__main__":
        print("printed before run() is a protocol violation the host tolerates", flush=True)
        plugin.run()
    """
)


@pytest.fixture
def child_plugin(tmp_path: Path) -> Path:
    path = tmp_path / "child_plugin.py"
    path.write_text(CHILD_PLUGIN)
    return path


async def test_subprocess_plugin_serves_and_stray_output_goes_to_stderr(child_plugin: Path, tmp_path: Path) -> None:
    async with PluginHarness.subprocess(child_plugin, state_dir=tmp_path) as h:
        assert h.initialize_result is not None and h.initialize_result.plugin.name == "child"
        result = await h.call("noisy")
        assert result["ok"] is True
        assert await h.call("health") == OK_HEALTH
        # the line printed before run() is the only thing that ever hit the protocol stream
        assert len(h.protocol_errors) == 1 and "before run()" in h.protocol_errors[0]
        await h.close_stdin()
        assert await h.wait_exit() == 0
    assert "stray print to stdout" in h.stderr_lines
    assert "raw write to fd 1" in h.stderr_lines
    assert "from a child process" in h.stderr_lines


async def test_subprocess_plugin_exits_on_stdin_eof_with_calls_in_flight(child_plugin: Path) -> None:
    async with PluginHarness.subprocess(child_plugin) as h:
        async with anyio.create_task_group() as tg:

            async def call_slow() -> None:
                with pytest.raises(RpcError):
                    await h.call("slow", timeout=None)

            tg.start_soon(call_slow)
            await anyio.wait_all_tasks_blocked()
            await h.close_stdin()
            assert await h.wait_exit() == 0


async def test_subprocess_cancel_answers_request_cancelled(child_plugin: Path) -> None:
    async with await anyio.open_process([sys.executable, str(child_plugin)]) as process:
        peer = RawPeer(process.stdin, process.stdout)
        assert (await peer.receive_line()).startswith(b"printed before run()")
        await peer.send({"jsonrpc": "2.0", "id": 7, "method": "slow"})
        await peer.send({"jsonrpc": "2.0", "id": 8, "method": "health"})
        assert await peer.receive() == {"jsonrpc": "2.0", "id": 8, "result": OK_HEALTH}
        await peer.send({"jsonrpc": "2.0", "method": "$/cancelRequest", "params": {"id": 7}})
        answer = await peer.receive()
        assert answer["id"] == 7 and answer["error"]["code"] == REQUEST_CANCELLED
        assert process.stdin is not None
        await process.stdin.aclose()
        with anyio.fail_after(5):
            assert await process.wait() == 0


async def test_plain_stdio_run_via_python_dash_c(child_plugin: Path) -> None:
    """Spawned with an argv list: the plugin still answers and exits on EOF."""
    async with PluginHarness.subprocess([sys.executable, str(child_plugin)]) as h:
        assert await h.call("health") == OK_HEALTH


async def test_results_of_spec_methods_go_out_complete_or_are_refused_with_the_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = Plugin(name="t", version="1")

    @plugin.method("session.get")
    async def get(ctx: Context, params: Any) -> Any:
        if params.session_id == "dict":  # a dict: completed to the shape, optional fields as null
            return {"sessionId": "dict", "kind": "test", "status": "pending", "instructions": [], "metadata": {}}
        if params.session_id == "struct-bad":  # a Struct the host would refuse: an empty kind
            return ConnectorSessionView("struct-bad", "", "pending", [], {})
        return {"sessionId": "no-status", "kind": "test"}

    async with PluginHarness.in_process(plugin) as h:
        view = await h.call("session.get", {"sessionId": "dict"})
        assert view == {
            "sessionId": "dict",
            "kind": "test",
            "status": "pending",
            "instructions": [],
            "metadata": {},
            "qrCode": None,
            "qrImage": None,
            "accountId": None,
            "displayName": None,
            "error": None,
        }
        with caplog.at_level(logging.ERROR):
            for session_id, reason in (("struct-bad", "$.kind"), ("no-status", "status")):
                with pytest.raises(RpcError) as exc:
                    await h.call("session.get", {"sessionId": session_id})
                assert exc.value.code == INTERNAL_ERROR and reason in exc.value.message
        assert any("returned an invalid result" in r.getMessage() for r in caplog.records)
