"""Accepted events are never lost: SIGKILL the real server with events in the inbox, restart, all handled."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
ADMIN = "crash-admin-token-0123456789"
BRIDGE = "crash-bridge-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Server:
    def __init__(self, home: Path, record: Path, *, block: bool) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHANNEL_RUNTIME_")}
        env.update(
            CHANNEL_RUNTIME_ADMIN_TOKEN=ADMIN, CHANNEL_RUNTIME_BRIDGE_TOKEN=BRIDGE,
            CRASH_RECORD=str(record), CRASH_BLOCK="1" if block else "0",
        )
        self.log = open(home.parent / f"server-{self.port}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "channel_runtime.cli", "serve", "--home", str(home), "--port", str(self.port),
             "--handler", "tests.crash_handler:handle"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10,
                                   headers={"Authorization": f"Bearer {ADMIN}"})
        wait_for(self._ready, what="server ready")

    def _ready(self) -> bool:
        assert self.proc.poll() is None, "server exited during start"
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def close(self, sig: int = signal.SIGTERM) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=30)
        self.log.close()


def lines(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def test_events_in_the_inbox_survive_sigkill(tmp_path: Path) -> None:
    home = tmp_path / "home"
    record = tmp_path / "record.txt"
    first = Server(home, record, block=True)
    try:
        started = first.client.post("/api/connector-sessions", json={"kind": "echo"})
        assert started.status_code == 201, started.text
        connection_id = started.json()["connection"]["connectionId"]
        wait_for(lambda: first.client.get(f"/api/connections/{connection_id}").json()["status"] == "connected",
                 what="connection connected")
        ids = [f"m{i}" for i in range(6)]
        for i, message_id in enumerate(ids):
            event = {
                "eventId": f"e{i}", "timestamp": "2026-06-02T09:30:00Z", "deliveryAttempt": 1,
                "connectionId": connection_id, "channelId": "", "kind": "echo", "accountId": "a",
                # three conversations, two messages each: some claimed, some waiting behind them
                "peerId": f"p{i % 3}", "peerType": "dm", "messageId": message_id, "messageType": "text",
                "content": f"text {i}", "metadata": {},
            }
            answer = first.client.post("/api/channel-connector-bridge/events", json=event,
                                       headers={"Authorization": f"Bearer {BRIDGE}"})
            assert answer.status_code == 200 and answer.json()["accepted"], answer.text
        # the handler holds the heads of the three conversations when the server dies
        wait_for(lambda: len([ln for ln in lines(record) if ln.startswith("started")]) == 3, what="3 handlers running")
    finally:
        first.close(signal.SIGKILL)
    assert not any(ln.startswith("handled") for ln in lines(record))

    second = Server(home, record, block=False)
    try:
        wait_for(lambda: sorted(ln.split()[1] for ln in lines(record) if ln.startswith("handled")) == ids,
                 what="every accepted event handled after the restart")
        assert second.client.get("/api/deliveries?status=failed").json() == []
    finally:
        second.close()
    assert second.proc.returncode == 0
