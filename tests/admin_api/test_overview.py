"""`GET /api/overview`: per-minute counts per connection, through the real bridge, runtime and echo plugin."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import eventually
from tests.support.admin import BRIDGE_TOKEN, running

pytestmark = pytest.mark.anyio


async def test_overview_counts_messages_in_and_replies_sent_per_connection(tmp_path: Path) -> None:
    async with running(tmp_path / "home", with_runtime=True) as (app, http):
        assert (await http.get("/api/overview")).json()["channels"] == []
        from channel_runtime.bundled import install_bundled

        await install_bundled(app.state.host)
        started = await http.post("/api/connector-sessions", json={"kind": "echo", "displayName": "Echo desk"})
        assert started.status_code == 201, started.text
        connection = started.json()["connection"]
        event = {
            "eventId": "ov1",
            "timestamp": "2026-06-02T09:30:00Z",
            "deliveryAttempt": 1,
            "connectionId": connection["connectionId"],
            "channelId": "",
            "kind": "echo",
            "accountId": "acc",
            "peerId": "p1",
            "peerType": "dm",
            "messageId": "ov-m1",
            "messageType": "text",
            "content": "count me",
            "metadata": {},
        }
        bridge = {"Authorization": f"Bearer {BRIDGE_TOKEN}"}
        for _ in range(2):  # the second is a duplicate: counted once
            r = await http.post("/api/channel-connector-bridge/events", json=event, headers=bridge)
            assert r.status_code == 200, r.text

        async def counted() -> dict | None:
            body = (await http.get("/api/overview")).json()
            [channel] = body["channels"] or [None]
            return body if channel and sum(channel["series"]["sent"]) == 1 else None

        body = await eventually(counted)
        [channel] = body["channels"]
        assert body["minutes"] == 60 and body["start"] % 60 == 0
        assert channel["connectionId"] == connection["connectionId"] and channel["displayName"] == "Echo desk"
        assert channel["kind"] == "echo" and channel["channelId"] == connection["channelId"]
        assert {name: sum(values) for name, values in channel["series"].items()} == {
            "in": 1,
            "sent": 1,
            "deferred": 0,
            "dead": 0,
        }
        assert (await http.get("/api/overview", headers={"Authorization": ""})).status_code == 401
