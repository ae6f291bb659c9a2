"""Sidecar mode is language-neutral: a plain Node.js plugin (no SDK) onboarded, forwarded and sent through.

The traffic is checked against `schemas/`: the event the application receives, the ack the
plugin gets for its `event.inbound`, and the `message.send` the plugin gets for a `/send`.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from plugin_host.package import pack_directory
from plugin_host.wire_schemas import bridge_event_validator, errors_of, inbound_ack_validator, validate
from tests.support import REPO, eventually
from tests.support.sidecar import RecordingBridge, running_sidecar, send_body

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed"),
]
NODE_RELAY = REPO / "tests" / "plugins" / "node_relay"
CREDENTIAL = "node-secret-credential-123"


async def test_a_node_plugin_through_the_sidecar(tmp_path: Path) -> None:
    log = tmp_path / "home" / "plugin-data" / "node_relay" / "relay.jsonl"

    def lines() -> list[dict]:
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []

    async with RecordingBridge().serving() as bridge:
        async with running_sidecar(tmp_path / "home", bridge=bridge.base_url) as (sidecar, http):
            host = sidecar.plugin_host
            archive = pack_directory(NODE_RELAY, tmp_path / "node_relay.zip")
            await host.install(io.BytesIO(archive.read_bytes()))
            await host.enable("node_relay")
            await eventually(lambda: host.supervisor("node_relay") is not None)
            await eventually(lambda: host.supervisor("node_relay").state == "running")
            session = await http.post(
                "/connector-sessions",
                json={"kind": "node_relay", "connectionId": "conn_node_1", "channelId": "chan_node", "options": {}},
            )
            assert session.status_code == 200 and session.json()["status"] == "connected", session.text
            assert await sidecar.store.connections.get_credentials("conn_node_1") == {"token": CREDENTIAL}

            [(_, event)] = await eventually(lambda: bridge.received)  # emitted on connection.resume
            sent = await http.post(
                "/send", json={**send_body("req-node", connection_id="conn_node_1"), "kind": "node_relay"}
            )
            assert sent.status_code == 200 and sent.json() == {"duplicate": False, "providerMessageId": "node_req-node"}
            answers = [session.text, sent.text, (await http.get("/health")).text]

    assert errors_of(bridge_event_validator(), event) == []
    assert event["eventId"] == "evt_node_conn_node_1" and event["channelId"] == "chan_node"
    assert event["content"] == "hello from node" and event["metadata"] == {"via": "node"}
    [ack] = [
        m["message"]
        for m in lines()
        if m["dir"] == "in" and "result" in m["message"] and "accepted" in m["message"]["result"]
    ]
    assert errors_of(inbound_ack_validator(), ack["result"]) == []
    assert ack["result"]["accepted"] is True and ack["result"]["pending"] is True
    [send_call] = [m["message"] for m in lines() if m["message"].get("method") == "message.send"]
    validate("message.send", "params", send_call["params"])
    assert send_call["params"]["requestId"] == "req-node" and send_call["params"]["connectionId"] == "conn_node_1"
    assert not any(CREDENTIAL in text for text in answers)
