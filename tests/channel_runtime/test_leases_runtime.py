"""Runtimes on one PostgreSQL (SPEC 10) with a plugin that knows neither `connection.resume` nor `.release`.

`tests/fault_plugins/well_behaved.py` (raw JSON-RPC) answers -32601 to both: the
host restarts it instead, and its new `initialize.connections` is the new set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from channel_runtime.leases import NodeSettings
from channel_runtime.runtime import ChannelRuntime
from channel_runtime.store.postgres_registry import PostgresRegistry
from plugin_host.errors import RpcError
from plugin_host.host import PluginHost
from tests.fault_plugins import default_host_env, raw_plugin_zip
from tests.support import eventually

pytestmark = pytest.mark.anyio


def pair(tmp_path: Path, name: str, url: str) -> tuple[ChannelRuntime, PluginHost]:
    host = PluginHost(
        tmp_path / name, host_env=default_host_env(), registry_backend=PostgresRegistry(url), registry_poll=0.2
    )
    runtime = ChannelRuntime(
        None,
        url,
        plugin_host=host,
        home=tmp_path / name,
        secret_key="leases-runtime-key-0123456789",
        node=NodeSettings(node_id=name, lease_ttl=2.0, renew_every=0.3),
    )
    return runtime, host


async def served(host: PluginHost) -> list[str] | None:
    """The connections the plugin process was handed at its last start (its `initialize.connections`)."""
    sup = host.supervisor("raw")
    if sup is None or sup.state != "running":
        return None
    try:
        params: Any = await sup.call("init_params", {})
    except RpcError:  # restarting right now
        return None
    return sorted(c["connectionId"] for c in params["connections"])


async def test_a_plugin_without_resume_and_release_restarts_with_its_new_set(tmp_path: Path, postgres: Any) -> None:
    url = postgres.url()
    runtime_a, host_a = pair(tmp_path, "host-a", url)
    runtime_b, host_b = pair(tmp_path, "host-b", url)

    async def live(runtime: ChannelRuntime, host: PluginHost, up: anyio.Event, down: anyio.Event) -> None:
        async with runtime, host:
            up.set()
            await down.wait()

    a_up, a_down, b_up, b_down = anyio.Event(), anyio.Event(), anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(live, runtime_a, host_a, a_up, a_down)
        await a_up.wait()
        (tmp_path / "zip").mkdir()
        await host_a.install(raw_plugin_zip(tmp_path / "zip", "raw"))
        await host_a.enable("raw")
        ids = []
        for _ in range(2):  # accounts that connected earlier, as the store has them
            record = await runtime_a.store.connections.create(kind="raw", plugin_id="raw", status="connected")
            ids.append(record.connection_id)
        # host-a takes both leases; its plugin answers -32601 to resume: restarted, it gets both
        await eventually(lambda: served(host_a), timeout=20)
        await eventually(lambda: _equals(served(host_a), sorted(ids)), timeout=20)
        tg.start_soon(live, runtime_b, host_b, b_up, b_down)
        await b_up.wait()
        # host-b joins: one lease moves; release and resume both answer -32601, both plugins restart
        await eventually(lambda: _one_each(host_a, host_b, ids), timeout=30)
        assert runtime_a.leases is not None and runtime_b.leases is not None
        assert len(runtime_a.leases.owned) == len(runtime_b.leases.owned) == 1
        b_down.set()
        a_down.set()


async def _equals(value: Any, expected: list[str]) -> bool:
    return (await value) == expected


async def _one_each(a: PluginHost, b: PluginHost, ids: list[str]) -> bool:
    on_a, on_b = await served(a), await served(b)
    return on_a is not None and on_b is not None and len(on_a) == len(on_b) == 1 and sorted(on_a + on_b) == sorted(ids)
