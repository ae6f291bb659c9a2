"""Connection hooks: which connections a plugin serves (initialize, connection.resume/release, logout)."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pytest

from plugin_host.errors import INTERNAL_ERROR, METHOD_NOT_FOUND, RpcError
from plugin_host.protocol import ConnectionInfo, ConnectionRef
from plugin_host.sdk import Context, Plugin
from plugin_host.sdk.testing import PluginHarness

pytestmark = pytest.mark.anyio


def info(connection_id: str = "conn_1", token: str = "t1") -> ConnectionInfo:
    return ConnectionInfo(connection_id, f"ch_{connection_id}", "test", "acc", "Test", {}, {"token": token})


def hooked_plugin() -> tuple[Plugin, list[str]]:
    plugin = Plugin(name="t", version="1")
    events: list[str] = []

    @plugin.on_connect
    async def connect(ctx: Context, connection: ConnectionInfo) -> None:
        events.append(f"connect {connection.connection_id} {connection.credentials['token']}")

    @plugin.on_disconnect
    async def disconnect(ctx: Context, connection_id: str) -> None:
        events.append(f"disconnect {connection_id}")

    return plugin, events


async def test_initialize_connections_are_served_after_the_handshake_in_the_background() -> None:
    plugin = Plugin(name="t", version="1")
    gate = anyio.Event()
    started: list[str] = []

    @plugin.on_connect
    async def connect(ctx: Context, connection: ConnectionInfo) -> None:
        started.append(connection.connection_id)
        if connection.connection_id == "slow":
            await gate.wait()

    async with PluginHarness.in_process(plugin, connections=[info("slow"), info("fast")]) as h:
        assert h.initialize_result is not None  # answered while "slow" is still connecting
        with anyio.fail_after(5):
            while "fast" not in plugin.connections:
                await anyio.sleep(0.01)
        assert sorted(started) == ["fast", "slow"]
        gate.set()
        with anyio.fail_after(5):
            while len(plugin.connections) < 2:
                await anyio.sleep(0.01)
        # each hand-over pinned the connection's epoch first
        assert [p["key"] for m, p in h.calls if m == "state.get"].count("sdk:epoch") == 2


async def test_resume_serves_and_a_second_resume_restarts_with_the_new_info() -> None:
    plugin, events = hooked_plugin()
    async with PluginHarness.in_process(plugin) as h:
        await h.resume(info(token="t1"))
        assert events == ["connect conn_1 t1"]
        assert plugin.connections["conn_1"].credentials == {"token": "t1"}
        await h.resume(info(token="t2"))  # credentials after a re-login
        assert events == ["connect conn_1 t1", "disconnect conn_1", "connect conn_1 t2"]
        assert plugin.connections["conn_1"].credentials == {"token": "t2"}
        with pytest.raises(TypeError):
            plugin.connections["x"] = info()  # type: ignore[index]


async def test_release_and_logout_stop_serving() -> None:
    plugin, events = hooked_plugin()
    logged_out: list[str] = []

    @plugin.method("connection.logout")
    async def logout(ctx: Context, params: ConnectionRef) -> dict[str, Any]:
        assert params.connection_id in plugin.connections  # still served while the handler runs
        if params.connection_id == "conn_bad":
            raise RpcError(-32014, "platform logout failed")
        logged_out.append(params.connection_id)
        return {}

    async with PluginHarness.in_process(plugin) as h:
        for connection_id in ("conn_1", "conn_2", "conn_bad"):
            await h.resume(info(connection_id))
        await h.release("conn_1")
        await h.release("conn_1")  # not served any more: nothing happens
        assert await h.call("connection.logout", {"connectionId": "conn_2"}) == {}
        with pytest.raises(RpcError):
            await h.call("connection.logout", {"connectionId": "conn_bad"})
        assert logged_out == ["conn_2"]
        assert [e for e in events if e.startswith("disconnect")] == ["disconnect conn_1", "disconnect conn_2"]
        assert list(plugin.connections) == ["conn_bad"]  # a failed logout keeps serving


async def test_an_on_connect_failure_is_answered_and_cleaned_up(caplog: pytest.LogCaptureFixture) -> None:
    plugin, events = hooked_plugin()

    @plugin.on_connect
    async def refuse(ctx: Context, connection: ConnectionInfo) -> None:
        if connection.credentials["token"] == "bad":
            raise ValueError("the platform refused the token")

    async with PluginHarness.in_process(plugin) as h:
        with pytest.raises(RpcError) as exc:
            await h.resume(info(token="bad"))
        assert exc.value.code == INTERNAL_ERROR
        assert "conn_1" not in plugin.connections
        assert events == ["connect conn_1 bad", "disconnect conn_1"]  # the half-started receive loop is stopped
    with caplog.at_level(logging.ERROR):
        async with PluginHarness.in_process(plugin, connections=[info("a", "bad"), info("b")]) as h:
            with anyio.fail_after(5):
                while "b" not in plugin.connections:
                    await anyio.sleep(0.01)
            assert "a" not in plugin.connections
    assert any("connection a: on_connect failed" in r.getMessage() for r in caplog.records)


async def test_resume_and_release_of_one_connection_do_not_interleave() -> None:
    plugin = Plugin(name="t", version="1")
    gate = anyio.Event()
    events: list[str] = []

    @plugin.on_connect
    async def connect(ctx: Context, connection: ConnectionInfo) -> None:
        events.append("connect start")
        await gate.wait()
        events.append("connect end")

    @plugin.on_disconnect
    async def disconnect(ctx: Context, connection_id: str) -> None:
        events.append("disconnect")

    async with PluginHarness.in_process(plugin) as h:
        async with anyio.create_task_group() as tg:
            tg.start_soon(h.resume, info())
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(h.release, "conn_1")
            await anyio.wait_all_tasks_blocked()
            assert events == ["connect start"]  # the release waits for the hand-over to finish
            gate.set()
        assert events == ["connect start", "connect end", "disconnect"]
        assert "conn_1" not in plugin.connections


async def test_a_host_without_state_still_hands_connections_over() -> None:
    plugin, events = hooked_plugin()
    async with PluginHarness.in_process(plugin) as h:

        def no_state(params: Any) -> Any:
            raise RpcError(METHOD_NOT_FOUND, "no state here")

        h.state.get = no_state  # type: ignore[method-assign]
        await h.resume(info())
        assert events == ["connect conn_1 t1"] and plugin.state.epoch("conn_1") is None


def test_the_sdk_answers_resume_and_release_itself() -> None:
    plugin = Plugin()
    for name in ("connection.resume", "connection.release"):
        with pytest.raises(ValueError, match="on_connect"):
            plugin.method(name)
