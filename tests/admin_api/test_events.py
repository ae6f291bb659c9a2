"""`GET /api/events` through a real server: frames, `Last-Event-ID` resume, heartbeat, slow readers, bounds."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn

from admin_api import create_app
from admin_api.routes import events as events_route
from channel_runtime import ChannelConfig
from channel_runtime.runtime import ChannelRuntime
from plugin_host.host import PluginHost
from tests.support import eventually, free_port
from tests.support.admin import ADMIN_TOKEN, make_settings

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


class Server:
    def __init__(self, runtime: ChannelRuntime, base: str) -> None:
        self.runtime = runtime
        self.base = base


@pytest.fixture
async def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Server]:
    monkeypatch.setattr(events_route, "HEARTBEAT_SECONDS", 0.2)
    home = tmp_path / "home"
    host = PluginHost(home)
    runtime = ChannelRuntime(None, "memory://", plugin_host=host, home=home)
    app = create_app(host=host, runtime=runtime, settings=make_settings(home))
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve)
        await eventually(lambda: uv.started)
        yield Server(runtime, f"http://127.0.0.1:{port}")
        uv.should_exit = True


class Frames:
    """The frames of one event stream (event or comment), parsed; one line iterator per response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, count: int) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        current: dict[str, Any] = {}
        async for line in self._lines:
            if line == "":
                if current:
                    frames.append(current)
                    current = {}
                if len(frames) == count:
                    return frames
            elif line.startswith(":"):
                current["comment"] = line[1:].strip()
            else:
                field, _, value = line.partition(": ")
                current[field] = json.loads(value) if field == "data" else value
        return frames

    async def rest(self) -> list[str]:
        return [line async for line in self._lines]


async def test_frames_resume_and_heartbeat(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base, headers=AUTH) as client:
        async with client.stream("GET", "/api/events", timeout=10) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            frames = Frames(response)
            [hello] = await frames.next(1)
            assert hello == {"retry": "3000"}
            await server.runtime.add_channel("a", ChannelConfig(kind="memory"))
            starting, running = await frames.next(2)
            assert starting["event"] == running["event"] == "channel.state"
            assert starting["data"]["channelId"] == "a" and starting["data"]["state"] == "starting"
            assert running["data"]["state"] == "running" and isinstance(running["data"]["time"], float)
            [beat] = await frames.next(1)  # nothing happens: a heartbeat comment
            assert beat == {"comment": "heartbeat"}
        # events while away, then a reconnect with the last id seen: exactly what was missed
        await server.runtime.remove_channel("a")
        headers = {"Last-Event-ID": starting["id"]}
        async with client.stream("GET", "/api/events", headers=headers, timeout=10) as response:
            _, missed_running, removed = await Frames(response).next(3)
            run, seq = running["id"].split("-")
            assert missed_running["id"] == running["id"] and removed["id"] == f"{run}-{int(seq) + 1}"
            assert removed["data"]["state"] == "removed"
        async with client.stream("GET", "/api/events", params={"lastEventId": "other-1"}, timeout=10) as response:
            _, reset = await Frames(response).next(2)
            assert reset["event"] == "reset"


async def test_a_slow_reader_is_dropped_without_slowing_the_host(server: Server) -> None:
    hub = server.runtime.events
    big = "x" * 16_384  # a fat frame fills the socket buffers sooner
    async with httpx.AsyncClient(base_url=server.base, headers=AUTH) as client:
        async with client.stream("GET", "/api/events", timeout=30) as response:
            frames = Frames(response)
            await frames.next(1)  # subscribed
            assert hub.subscribers == 1
            published = 0
            with anyio.fail_after(30):
                while hub.dropped == 0:  # this reader reads nothing meanwhile
                    for _ in range(50):
                        hub.publish("test.filler", {"n": published, "blob": big})
                        published += 1
                    await anyio.sleep(0.001)  # the server writes what the socket takes
            assert hub.subscribers == 0
            # what it gets now: a prefix of the events, in order, then the end of the stream
            seen = [json.loads(line[6:])["n"] for line in await frames.rest() if line.startswith("data: ")]
            assert seen == list(range(len(seen))) and len(seen) < published
        # it comes back and resumes; a reader that keeps up stays
        async with client.stream("GET", "/api/events", timeout=30) as response:
            frames = Frames(response)
            await frames.next(1)
            for n in range(300):
                hub.publish("test.small", {"n": n})
                if n % 50 == 0:
                    await anyio.sleep(0.01)
            assert [f["data"]["n"] for f in await frames.next(300)] == list(range(300))
            assert hub.dropped == 1 and hub.subscribers == 1


async def test_subscribers_are_bounded(server: Server) -> None:
    hub = server.runtime.events
    hub.max_subscribers = 2
    async with httpx.AsyncClient(base_url=server.base, headers=AUTH) as client:
        async with (
            client.stream("GET", "/api/events", timeout=10) as one,
            client.stream("GET", "/api/events", timeout=10) as two,
        ):
            await Frames(one).next(1)
            await Frames(two).next(1)
            refused = await client.get("/api/events")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
            assert refused.json()["error"]["code"] == "too_many_subscribers"
        await eventually(lambda: hub.subscribers == 0)  # closed streams give their places back
        async with client.stream("GET", "/api/events", timeout=10) as again:
            assert again.status_code == 200
