"""The long connection: lark-oapi's real client in our child process, against the fake platform's websocket.

Frames are real `pbbp2.Frame`s; the fake records the client's answers, so an
acknowledged event (code 200) and one the plugin did not accept (500: the
platform delivers it again) are both seen from the platform's side.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from feishu_vendorcli.longconn import MISSING_MESSAGE, LongConnection, child_environment

from plugin_host.clock import SystemClock
from tests.feishu_vendorcli import samples
from tests.feishu_vendorcli.fake_platform import FakeOpenPlatform
from tests.support import eventually

pytestmark = pytest.mark.anyio


class Recorder:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        self.statuses: list[tuple[str, str | None]] = []
        self.accept = True

    async def on_event(self, payload: bytes) -> bool:
        self.payloads.append(json.loads(payload))
        return self.accept

    async def on_status(self, status: str, error: str | None) -> None:
        self.statuses.append((status, error))

    def connected(self) -> int:
        return sum(1 for s, _ in self.statuses if s == "connected")


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenPlatform]:
    platform = FakeOpenPlatform()
    async with platform.running():
        yield platform


async def run_connection(fake: FakeOpenPlatform, recorder: Recorder, secret: str | None = None, **kw: Any):
    app_id, real_secret = fake.add_app()
    connection = LongConnection(
        app_id=app_id,
        app_secret=secret or real_secret,
        base_url=fake.base_url,
        clock=SystemClock(),
        on_event=recorder.on_event,
        on_status=recorder.on_status,
        redact=lambda text: text.replace(real_secret, "[REDACTED]"),
        initial_backoff=0.05,
        max_backoff=0.2,
        ack_timeout=kw.pop("ack_timeout", 1.0),
    )
    return connection


async def test_events_are_forwarded_and_acknowledged(fake: FakeOpenPlatform) -> None:
    recorder = Recorder()
    connection = await run_connection(fake, recorder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(connection.run)
        await eventually(recorder.connected)
        frame = await fake.push_event(samples.message_event(event_id="ev_ws_1"))
        await eventually(lambda: (frame, 200) in fake.ws_acks)
        assert recorder.payloads[0]["header"]["event_id"] == "ev_ws_1"
        endpoint = next(c for c in fake.calls if c.path == "/callback/ws/endpoint")
        assert endpoint.body["AppID"] == "cli_fake0001"
        tg.cancel_scope.cancel()


async def test_an_event_not_accepted_is_answered_with_a_failure(fake: FakeOpenPlatform) -> None:
    recorder = Recorder()
    recorder.accept = False
    connection = await run_connection(fake, recorder, ack_timeout=0.3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(connection.run)
        await eventually(recorder.connected)
        frame = await fake.push_event(samples.message_event())
        await eventually(lambda: any(f == frame for f, _ in fake.ws_acks))
        assert (frame, 500) in fake.ws_acks
        tg.cancel_scope.cancel()


async def test_the_client_reconnects_after_the_platform_drops_it(fake: FakeOpenPlatform) -> None:
    recorder = Recorder()
    connection = await run_connection(fake, recorder)
    async with anyio.create_task_group() as tg:
        tg.start_soon(connection.run)
        await eventually(recorder.connected)
        await fake.drop_websockets()
        await eventually(lambda: fake.ws_connects >= 2 and fake.ws_sockets, timeout=20)
        frame = await fake.push_event(samples.message_event(event_id="ev_after"))
        await eventually(lambda: (frame, 200) in fake.ws_acks)
        assert recorder.payloads[-1]["header"]["event_id"] == "ev_after"
        tg.cancel_scope.cancel()


async def test_a_dead_client_process_is_restarted_with_backoff(fake: FakeOpenPlatform) -> None:
    recorder = Recorder()
    connection = await run_connection(fake, recorder, secret="wrong-secret")  # the endpoint refuses: the child exits
    async with anyio.create_task_group() as tg:
        tg.start_soon(connection.run)
        await eventually(lambda: connection.restarts >= 2, timeout=30)
        disconnected = [e for s, e in recorder.statuses if s == "disconnected"]
        assert disconnected and all("reconnecting in" in (e or "") for e in disconnected)
        assert all("app secret invalid" in (e or "") for e in disconnected)
        assert recorder.connected() == 0
        tg.cancel_scope.cancel()


async def test_a_missing_lark_oapi_is_reported_once_without_restarts(fake: FakeOpenPlatform) -> None:
    recorder = Recorder()
    app_id, secret = fake.add_app()
    connection = LongConnection(
        app_id=app_id,
        app_secret=secret,
        base_url=fake.base_url,
        clock=SystemClock(),
        on_event=recorder.on_event,
        on_status=recorder.on_status,
        redact=str,
        python=[sys.executable, "-S"],  # an interpreter without site-packages: no lark-oapi
    )
    with anyio.fail_after(30):
        await connection.run()  # returns: nothing to retry
    assert recorder.statuses == [("error", MISSING_MESSAGE)] and connection.restarts == 0
    assert "pip install 'channel-runtime[feishu]'" in MISSING_MESSAGE


def test_the_child_reports_a_missing_lark_oapi() -> None:
    # -S: no site-packages, so lark-oapi cannot be imported (the child itself needs only the stdlib)
    result = subprocess.run(
        [sys.executable, "-S", "-m", "feishu_vendorcli.longconn_child"],
        input=json.dumps({"appId": "a", "appSecret": "b", "domain": "http://x"}) + "\n",
        capture_output=True,
        text=True,
        env=child_environment(),
        timeout=30,
    )
    assert result.returncode == 3
    message = json.loads(result.stdout.strip().splitlines()[-1])
    assert message["type"] == "missing" and "lark" in message["message"]


def test_the_child_exits_when_its_stdin_closes() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "feishu_vendorcli.longconn_child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_environment(),
    )
    assert proc.stdin is not None
    proc.stdin.close()  # before the settings line
    assert proc.wait(timeout=30) == 0
    assert os.environ.get("PYTHONPATH", "") in child_environment()["PYTHONPATH"]


async def test_a_connected_client_exits_when_the_plugin_goes_away(fake: FakeOpenPlatform) -> None:
    # the child has its own session, so a plugin killed outright cannot take it down by group:
    # the end of its stdin must
    app_id, secret = fake.add_app()
    process = await anyio.open_process(
        [sys.executable, "-m", "feishu_vendorcli.longconn_child"],
        env=child_environment(),
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    async with process:
        assert process.stdin is not None and process.stdout is not None
        settings = {"appId": app_id, "appSecret": secret, "domain": fake.base_url}
        await process.stdin.send((json.dumps(settings) + "\n").encode())
        received = b""
        with anyio.fail_after(30):
            while b"\n" not in received:
                received += await process.stdout.receive()
        assert json.loads(received.split(b"\n")[0]) == {"type": "status", "status": "connected"}
        await process.stdin.aclose()
        with anyio.fail_after(30):
            assert await process.wait() == 0


async def test_an_unreadable_line_is_logged_masked_whole_then_cut(caplog: pytest.LogCaptureFixture) -> None:
    from plugin_host.redact import redact

    secret = "lcsecret-Zq81-mWx0"
    recorder = Recorder()
    connection = LongConnection(
        app_id="cli_x",
        app_secret=secret,
        base_url="http://127.0.0.1:9",
        clock=SystemClock(),
        on_event=recorder.on_event,
        on_status=recorder.on_status,
        redact=lambda text: redact(text, [secret]),
    )
    caplog.set_level("WARNING")
    line = ("x" * 190 + secret).encode()  # the secret straddles the 200th character
    assert await connection._on_line(None, line) is None  # type: ignore[arg-type]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "unreadable line" in logged and secret[:6] not in logged


def test_the_childs_error_report_masks_the_secret_before_cutting() -> None:
    from feishu_vendorcli.longconn_child import error_message

    secret = "childsecret-Zq81-mWx0"
    message = error_message(RuntimeError("x" * 480 + secret), secret)
    assert len(message) <= 500 and secret[:6] not in message
