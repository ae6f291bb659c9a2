"""Resuming many connections (issue 14, finding 5; SPEC 10 `connection.resume`).

2,500 connections do not fit in one `initialize` (maxMessageBytes, 512 KiB by default):
initialize carries what fits and the rest follow through `connection.resume`. A plain
Node.js plugin (tests/plugins/node_resume) holds them; its recorded traffic is checked
against schemas/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from plugin_host import wire_schemas
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory
from plugin_host.protocol import ConnectionInfo
from plugin_host.services import HostServices
from tests.fault_plugins import default_host_env
from tests.support import REPO, eventually

pytestmark = pytest.mark.anyio

NODE_PLUGIN = REPO / "tests" / "plugins" / "node_resume"
COUNT = 2500


class ManyConnections(HostServices):
    def __init__(self, count: int) -> None:
        self.infos = [
            ConnectionInfo(
                connection_id=f"conn_{i:05d}",
                channel_id=f"conn_{i:05d}",
                kind="node_resume",
                account_id=f"acct-{i}",
                display_name=f"Account {i}",
                options={"region": "eu"},
                credentials={"token": f"tok-conn_{i:05d}", "padding": "p" * 200},
            )
            for i in range(count)
        ]

    async def resumable_connections(self, plugin_id: str) -> list[ConnectionInfo]:
        return self.infos


async def test_2500_connections_are_resumed_in_pages(tmp_path: Path) -> None:
    services = ManyConnections(COUNT)
    assert len(msgspec.json.encode(services.infos)) > 524_288  # more than one initialize may carry
    async with PluginHost(tmp_path / "home", host_env=default_host_env(), services=services) as host:
        await host.install(pack_directory(NODE_PLUGIN, tmp_path / "node_resume.zip"))
        await host.enable("node_resume")
        supervisor = host.supervisor("node_resume")
        assert supervisor is not None and supervisor.state == "running"

        async def all_held() -> dict[str, Any] | None:
            held = await supervisor.call("connections", {})
            return held if len(held["ids"]) == COUNT else None

        held = await eventually(all_held, timeout=60)
        assert held["ids"] == [info.connection_id for info in services.infos]
        assert held["credentialsIntact"] is True
        assert 0 < held["fromInitialize"] < COUNT and held["fromInitialize"] + held["fromResume"] == COUNT
        assert supervisor.last_error is None

    received = [
        json.loads(line)
        for line in (tmp_path / "home" / "plugin-data" / "node_resume" / "received.jsonl").read_text().splitlines()
    ]
    initialize = next(m for m in received if m.get("method") == "initialize")
    resumes = [m for m in received if m.get("method") == "connection.resume"]
    assert len(resumes) == held["fromResume"]
    # every message within the limit, every one valid against schemas/
    for message in [initialize, *resumes]:
        assert len(json.dumps(message, separators=(",", ":"))) <= 524_288
        assert wire_schemas.message_errors("host_to_plugin", message) == [], message["method"]


async def test_a_plugin_without_connection_resume_gets_what_fits_and_the_rest_is_reported(tmp_path: Path) -> None:
    services = ManyConnections(COUNT)
    async with PluginHost(tmp_path / "home", host_env=default_host_env(), services=services) as host:
        await host.install(pack_directory(NODE_PLUGIN, tmp_path / "node_resume.zip"))
        await host.set_config("node_resume", {"resume": False})
        await host.enable("node_resume")
        supervisor = host.supervisor("node_resume")
        assert supervisor is not None

        async def reported() -> str | None:
            return supervisor.last_error

        error = await eventually(reported, timeout=60)
        held = await supervisor.call("connections", {})
        assert supervisor.state == "running"  # it serves what it got
    assert 0 < held["fromInitialize"] < COUNT and held["fromResume"] == 0
    missing = COUNT - held["fromInitialize"]
    assert f"{missing} of {missing} connection(s)" in error
    assert "does not implement connection.resume" in error
    assert services.infos[held["fromInitialize"]].connection_id in error  # the first one left out is named
    assert "tok-" not in error
