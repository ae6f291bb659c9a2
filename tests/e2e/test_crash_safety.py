"""Accepted events are never lost: SIGKILL the real server with events in the inbox, restart, all handled."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx

from tests.support import REPO, ServeProcess, wait_for

ADMIN = "crash-admin-token-0123456789"
BRIDGE = "crash-bridge-token-0123456789"


def serve(home: Path, record: Path, *, block: bool) -> tuple[ServeProcess, httpx.Client]:
    server = ServeProcess(
        home,
        cwd=REPO,
        args=["--handler", "tests.support.crash_handler:handle"],
        env={
            "CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN,
            "CHANNEL_RUNTIME_BRIDGE_TOKEN": BRIDGE,
            "CRASH_RECORD": str(record),
            "CRASH_BLOCK": "1" if block else "0",
            "PYTHONPATH": str(REPO),  # where the --handler module lives, as for any application's handler
        },
    )
    server.wait_ready()
    return server, httpx.Client(base_url=server.base, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"})


def lines(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def test_events_in_the_inbox_survive_sigkill(tmp_path: Path) -> None:
    home = tmp_path / "home"
    record = tmp_path / "record.txt"
    first, client = serve(home, record, block=True)
    try:
        started = client.post("/api/connector-sessions", json={"kind": "echo"})
        assert started.status_code == 201, started.text
        connection_id = started.json()["connection"]["connectionId"]
        wait_for(
            lambda: client.get(f"/api/connections/{connection_id}").json()["status"] == "connected",
            what="connection connected",
        )
        ids = [f"m{i}" for i in range(6)]
        for i, message_id in enumerate(ids):
            event = {
                "eventId": f"e{i}",
                "timestamp": "2026-06-02T09:30:00Z",
                "deliveryAttempt": 1,
                "connectionId": connection_id,
                "channelId": "",
                "kind": "echo",
                "accountId": "a",
                # three conversations, two messages each: some claimed, some waiting behind them
                "peerId": f"p{i % 3}",
                "peerType": "dm",
                "messageId": message_id,
                "messageType": "text",
                "content": f"text {i}",
                "metadata": {},
            }
            answer = client.post(
                "/api/channel-connector-bridge/events", json=event, headers={"Authorization": f"Bearer {BRIDGE}"}
            )
            assert answer.status_code == 200 and answer.json()["accepted"], answer.text
        # the handler holds the heads of the three conversations when the server dies
        wait_for(lambda: len([ln for ln in lines(record) if ln.startswith("started")]) == 3, what="3 handlers running")
    finally:
        client.close()
        first.stop(signal.SIGKILL)
    assert not any(ln.startswith("handled") for ln in lines(record))

    second, client = serve(home, record, block=False)
    try:
        wait_for(
            lambda: sorted(ln.split()[1] for ln in lines(record) if ln.startswith("handled")) == ids,
            what="every accepted event handled after the restart",
        )
        # exactly once each after the restart, and every reply delivered through the plugin
        sent = home / "plugin-data" / "echo" / "sent.jsonl"
        wait_for(lambda: sent.exists() and len(sent.read_text().splitlines()) == len(ids), what="replies delivered")
        assert sorted(ln.split()[1] for ln in lines(record) if ln.startswith("handled")) == ids
        assert client.get("/api/deliveries?status=failed").json() == []
    finally:
        client.close()
        code, _, err = second.stop()
    assert code == 0, err
