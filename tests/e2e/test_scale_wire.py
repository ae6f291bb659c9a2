"""The hand-over between hosts (SPEC 10) on the wire: a plain Node.js plugin, every line checked against schemas/.

Two hosts (each a real ChannelRuntime + PluginHost) share one PostgreSQL database;
each runs `tests/plugins/node_complete` (plain Node.js, no SDK) behind the
recording tap. The connection is onboarded on host A; when A stops cleanly its
plugin gets `connection.release`, B's gets `connection.resume`, and B's plugin
writes its state with the new epoch. Every recorded line on both hosts is
complete and valid against the strict schemas.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from channel_runtime.leases import NodeSettings
from channel_runtime.runtime import ChannelRuntime
from channel_runtime.store.postgres_registry import PostgresRegistry
from plugin_host.host import PluginHost
from plugin_host.wire_schemas import message_errors, missing_fields
from tests.plugin_host.test_wire_traffic import tapped
from tests.support import REPO, eventually

pytestmark = pytest.mark.anyio
NODE = REPO / "tests" / "plugins" / "node_complete"
SECRET = "wire-shared-credentials-key-0123456789"


def pair(tmp_path: Path, name: str, url: str) -> tuple[ChannelRuntime, PluginHost, Path]:
    log = tmp_path / name / "plugin-data" / "tap" / "tap.jsonl"  # the data folder: writable in the sandbox
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "TAP_LOG": str(log),
        "TAP_TARGET": json.dumps(["node", str(NODE / "plugin.js")]),
        "TAP_TARGET_DIR": str(NODE),
    }
    host = PluginHost(tmp_path / name, host_env=env, registry_backend=PostgresRegistry(url), registry_poll=0.2)
    runtime = ChannelRuntime(
        None,
        url,
        plugin_host=host,
        home=tmp_path / name,
        secret_key=SECRET,
        idle_poll=0.05,
        node=NodeSettings(node_id=name, lease_ttl=2.0, renew_every=0.5),
    )
    return runtime, host, log


def traffic(log: Path) -> list[tuple[str, dict[str, Any]]]:
    return (
        [(e["dir"], json.loads(e["line"])) for e in map(json.loads, log.read_text().splitlines())]
        if log.exists()
        else []
    )


def check(lines: list[tuple[str, dict[str, Any]]]) -> None:
    requests: dict[tuple[str, object], str] = {}
    problems = []
    for direction, message in lines:
        other = "plugin_to_host" if direction == "host_to_plugin" else "host_to_plugin"
        method = message.get("method")
        if method is not None and "id" in message:
            requests[(direction, message["id"])] = method
        answered = None if method is not None else requests.get((other, message.get("id")))
        issues = message_errors(direction, message, method=answered)
        missing = missing_fields(direction, message, method=answered)
        if issues or missing:
            problems.append((direction, json.dumps(message)[:300], issues, missing))
    assert problems == []


def answers_to(lines: list[tuple[str, dict[str, Any]]], method: str) -> list[dict[str, Any]]:
    """The results the host gave to the plugin's `method` requests, in order."""
    ids = {m["id"] for d, m in lines if d == "plugin_to_host" and m.get("method") == method}
    return [m["result"] for d, m in lines if d == "host_to_plugin" and m.get("id") in ids and "result" in m]


async def test_a_clean_stop_moves_the_connection_with_release_resume_and_a_new_epoch(
    tmp_path: Path, postgres: Any
) -> None:
    url = postgres.url()
    runtime_a, host_a, log_a = pair(tmp_path, "host-a", url)
    runtime_b, host_b, log_b = pair(tmp_path, "host-b", url)

    async def live(runtime: ChannelRuntime, host: PluginHost, up: anyio.Event, down: anyio.Event) -> None:
        async with runtime, host:  # each host's whole life in its own task, as in its own process
            up.set()
            await down.wait()

    a_up, a_down, b_up, b_down = anyio.Event(), anyio.Event(), anyio.Event(), anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(live, runtime_a, host_a, a_up, a_down)
        await a_up.wait()
        await host_a.install(tapped(tmp_path, NODE, ["node", str(NODE / "plugin.js")]))
        await host_a.enable("tap")
        view = await runtime_a.connections.start_session("nodecomplete", "Node", {})
        connection_id = view["connection"]["connectionId"]
        await eventually(lambda: runtime_a.store.plugin_state.get("tap", connection_id, "resumes"))
        tg.start_soon(live, runtime_b, host_b, b_up, b_down)
        await b_up.wait()
        await eventually(lambda: (s := host_b.supervisor("tap")) is not None and s.state == "running")
        assert runtime_a.leases is not None and runtime_a.leases.owns(connection_id)
        a_down.set()  # host A stops cleanly: its plugin is told first
        await eventually(lambda: runtime_b.leases is not None and runtime_b.connections.serving(connection_id))
        await eventually(lambda: any(r["epoch"] >= 2 for r in answers_to(traffic(log_b), "state.put")))
        b_down.set()
    a, b = traffic(log_a), traffic(log_b)
    check(a)
    check(b)
    sent_a = [m for d, m in a if d == "host_to_plugin" and "method" in m]
    sent_b = [m for d, m in b if d == "host_to_plugin" and "method" in m]
    assert any(m["method"] == "connection.release" and m["params"] == {"connectionId": connection_id} for m in sent_a)
    resumed = [m["params"] for m in sent_b if m["method"] == "connection.resume"] + [
        c for m in sent_b if m["method"] == "initialize" for c in m["params"]["connections"]
    ]
    assert [r["connectionId"] for r in resumed] == [connection_id]
    assert resumed[0]["credentials"]  # the credentials A's login stored, decrypted by B
    epochs_a = {r["epoch"] for r in answers_to(a, "state.get")}
    epochs_b = {r["epoch"] for r in answers_to(b, "state.get")}
    assert max(epochs_b) > max(epochs_a)  # a change of owner is a new epoch
    puts_b = [m["params"] for d, m in b if d == "plugin_to_host" and m.get("method") == "state.put"]
    assert puts_b and all(p["epoch"] == max(epochs_b) for p in puts_b if p["connectionId"] == connection_id)
