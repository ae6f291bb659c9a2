"""ConnectionManager orderings, through a real plugin process (tests/plugins/racer).

Updates that race a call's answer, a plugin chatty while it is handed a connection,
and a logout the plugin cannot do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from channel_runtime.connections import ConnectionManager
from channel_runtime.runtime import ChannelRuntime
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from tests.fault_plugins import default_host_env
from tests.support import REPO, eventually

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def racer(tmp_path: Path) -> AsyncIterator[tuple[ChannelRuntime, ConnectionManager]]:
    home = tmp_path / "home"
    host = PluginHost(home, host_env=default_host_env())
    runtime = ChannelRuntime(store=f"sqlite:///{home / 'state.db'}", plugin_host=host, home=home)
    async with runtime, host:
        await host.install(pack_directory(REPO / "tests" / "plugins" / "racer", tmp_path / "racer.zip"))
        await host.enable("racer")
        assert runtime.connections is not None
        yield runtime, runtime.connections


async def test_an_answer_older_than_the_plugins_update_does_not_overwrite_it(tmp_path: Path) -> None:
    async with racer(tmp_path) as (runtime, manager):
        started = await manager.start_session("racer")  # the plugin said `scanned`, then answered `qr_ready`
        assert started["session"]["status"] == "scanned"
        stored = await runtime.store.sessions.get(started["session"]["sessionId"])
        assert stored is not None and stored.status == "scanned"


async def test_a_plugin_chatty_while_handed_a_connection_does_not_stall_the_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The hand-over (`connection.resume`) is not awaited inside the plugin's own notification.

    Awaited there, the plugin's notifications queued behind it until the host stopped
    reading the plugin's output, and the resume answer was never read (timed out).
    """
    async with racer(tmp_path) as (runtime, manager):
        started = await manager.start_session("racer", options={"flood": 1500})
        session_id, connection_id = started["session"]["sessionId"], started["session"]["connectionId"]
        with caplog.at_level(logging.WARNING, logger="channel_runtime.connections"):
            await manager.session_input(session_id, connection_id)

            async def handed_over() -> bool:
                return await runtime.store.plugin_state.get("racer", connection_id, "handedOver") is True

            await eventually(handed_over, timeout=30)
        assert not [r for r in caplog.records if "did not take over" in r.getMessage()]
        assert (await runtime.store.connections.get(connection_id)).status == "connected"


async def test_a_logout_the_plugin_cannot_do_still_stops_it_serving_the_account(tmp_path: Path) -> None:
    async with racer(tmp_path) as (runtime, manager):
        started = await manager.start_session("racer")
        session_id, connection_id = started["session"]["sessionId"], started["session"]["connectionId"]
        await manager.session_input(session_id, connection_id)

        async def handed_over() -> bool:
            return await runtime.store.plugin_state.get("racer", connection_id, "handedOver") is True

        await eventually(handed_over)
        revoked = await manager.logout(connection_id)  # the plugin has no connection.logout: -32601
        assert revoked["status"] == "revoked"

        async def released() -> bool:
            return await runtime.store.plugin_state.get("racer", None, "released") == connection_id

        await eventually(released)  # told to stop serving it (connection.release)
