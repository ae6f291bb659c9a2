"""The long connection (`connection: websocket`): a supervised child process per app.

`LongConnection.run()` starts `longconn_child`, feeds each event it forwards to
`on_event` (the same mapping as the webhook), acknowledges the accepted ones,
and restarts the child with exponential backoff (jittered, reset after a stable
minute) when it exits. It runs until cancelled; cancelling kills the child's
process group.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import anyio
import msgspec

from plugin_host.clock import Clock
from plugin_host.sdk import GroupProcess, LaunchPlan, spawn

MAX_LINE_BYTES = 2 * 1024 * 1024
STABLE_AFTER_SECONDS = 60.0
MISSING_MESSAGE = (
    "the long connection needs lark-oapi, which is not installed: pip install 'channel-runtime[feishu]'"
    " (or link the app with connection: webhook)"
)

log = logging.getLogger(__name__)

EventSink = Callable[[bytes], Awaitable[bool]]
StatusSink = Callable[[str, str | None], Awaitable[None]]


class _ChildMessage(msgspec.Struct, forbid_unknown_fields=False):
    type: str
    seq: int | None = None
    payload: str | None = None
    status: str | None = None
    message: str | None = None


def lark_oapi_installed() -> bool:
    return importlib.util.find_spec("lark_oapi") is not None


class LongConnection:
    def __init__(
        self,
        *,
        app_id: str,
        app_secret: str,
        base_url: str,
        clock: Clock,
        on_event: EventSink,
        on_status: StatusSink,
        redact: Callable[[str], str],
        initial_backoff: float = 1.0,
        max_backoff: float = 60.0,
        ack_timeout: float = 2.5,
        name: str = "",
        python: Sequence[str] = (),
    ) -> None:
        self.app_id = app_id
        self._app_secret = app_secret
        self.base_url = base_url
        self.clock = clock
        self.on_event = on_event
        self.on_status = on_status
        self.redact = redact
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.ack_timeout = ack_timeout
        self.name = name or app_id
        self.python = list(python) or [sys.executable]  # the interpreter (and its flags) of the child
        self.restarts = 0

    async def run(self) -> None:
        if not lark_oapi_installed():
            await self.on_status("error", MISSING_MESSAGE)
            return
        failures = 0
        while True:
            started = self.clock.monotonic()
            outcome = await self._run_child()
            if outcome == "missing":
                await self.on_status("error", MISSING_MESSAGE)
                return
            if self.clock.monotonic() - started >= STABLE_AFTER_SECONDS:
                failures = 0
            failures += 1
            self.restarts += 1
            delay = min(self.initial_backoff * 2 ** (failures - 1), self.max_backoff) * random.uniform(0.8, 1.2)
            await self.on_status("disconnected", f"long connection lost ({outcome}); reconnecting in {delay:.1f} s")
            await self.clock.sleep(delay)

    async def _run_child(self) -> str:
        settings = {
            "appId": self.app_id,
            "appSecret": self._app_secret,
            "domain": self.base_url,
            "ackTimeout": self.ack_timeout,
        }
        plan = LaunchPlan((*self.python, "-m", "feishu_vendorcli.longconn_child"), child_environment(), Path.cwd())
        process = await spawn(plan)
        outcome = "exited"
        try:
            assert process.stdin is not None
            await process.stdin.send(msgspec.json.encode(settings) + b"\n")
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._forward_stderr, process)
                outcome = await self._read_events(process)
                tg.cancel_scope.cancel()
        finally:
            try:
                await process.kill_group()  # the client never exits by itself; shielded inside
            finally:
                await process.aclose()
        code = process.returncode
        return outcome if outcome != "exited" else f"exit code {code}"

    async def _read_events(self, process: GroupProcess) -> str:
        assert process.stdout is not None and process.stdin is not None
        buffer = b""
        async for chunk in process.stdout:
            buffer += chunk
            if len(buffer) > MAX_LINE_BYTES and b"\n" not in buffer:
                log.warning("long connection %s: a line over %d bytes was dropped", self.name, MAX_LINE_BYTES)
                buffer = b""
                continue
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                outcome = await self._on_line(process, line)
                if outcome is not None:
                    return outcome
        return "exited"

    async def _on_line(self, process: GroupProcess, line: bytes) -> str | None:
        try:
            message = msgspec.json.decode(line, type=_ChildMessage)
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning(
                "long connection %s: unreadable line from the client: %s",
                self.name,
                self.redact(line.decode("utf-8", "replace"))[:200],  # masked whole, then cut
            )
            return None
        if message.type == "missing":
            return "missing"
        if message.type == "error":
            return self.redact(message.message or "the client failed")
        if message.type == "status" and message.status:
            await self.on_status("connected" if message.status == "connected" else "disconnected", None)
            return None
        if message.type == "event" and message.seq is not None and message.payload is not None:
            try:
                accepted = await self.on_event(message.payload.encode("utf-8"))
            except Exception:
                log.exception("long connection %s: an event could not be handled", self.name)
                accepted = False
            if accepted:
                assert process.stdin is not None
                try:
                    await process.stdin.send(msgspec.json.encode({"ack": message.seq}) + b"\n")
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return "exited"
        return None

    async def _forward_stderr(self, process: GroupProcess) -> None:
        assert process.stderr is not None
        buffer = b""
        async for chunk in process.stderr:
            buffer = (buffer + chunk)[-MAX_LINE_BYTES:]
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                text = line.decode("utf-8", "replace").strip()
                if text:
                    log.warning("long connection %s: %s", self.name, self.redact(_strip_queries(text))[:2000])


def _strip_queries(text: str) -> str:
    """The websocket URL's query carries access tickets: never log it."""
    out = []
    for word in text.split(" "):
        if "://" in word and "?" in word:
            word = word.split("?", 1)[0] + "?[REDACTED]"
        out.append(word)
    return " ".join(out)


def child_environment() -> dict[str, str]:
    """The plugin's own environment, with this package importable however the plugin was started."""
    env = dict(os.environ)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        env["PYTHONPATH"] = os.pathsep.join([here, *paths])
    return env
