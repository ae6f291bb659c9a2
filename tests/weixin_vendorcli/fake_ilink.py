"""A fake iLink bot API: a real HTTP server on 127.0.0.1, scripted per test (a third-party fake).

It keeps what the platform keeps: QR handles with their pending statuses, bot
tokens, each bot's message log behind a cursor (`get_updates_buf` names a
position in it, so a client that does not advance its cursor gets the same
messages again, and one that restarts with its last cursor gets only the new
ones), and the messages bots sent. Every request is recorded with its headers
and JSON body. Tests script it through methods (same event loop) or, from
another process, through `/_fake/*` routes (the benchmark does).

Run alone: `python -m tests.weixin_vendorcli.fake_ilink --port 9999`.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support import eventually, free_port

BIG_ID_BASE = 7_400_000_000_000_000_000  # message ids above 2^53, as the platform sends them


@dataclass
class Raw:
    """A scripted answer sent as is (HTML, truncated JSON, an error status, ...)."""

    body: bytes | str
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    port: int


@dataclass
class Bot:
    token: str
    bot_id: str
    log: list[dict[str, Any]] = field(default_factory=list)  # every message ever queued for this bot
    answers: deque[Any] = field(default_factory=deque)  # scripted getupdates answers, before the log
    expired: bool = False
    polls: int = 0


class FakeIlink:
    def __init__(self, *, hold: float = 0.2, batch: int = 100, record: bool = True) -> None:
        self.hold = hold  # how long an empty long poll is held
        self.batch = batch
        self.record = record  # off in the benchmark: the log grows with every request
        self.requests: list[Recorded] = []
        self.qrcodes: list[str] = []
        self.statuses: dict[str, deque[dict[str, Any] | Raw]] = {}
        self.bots: dict[str, Bot] = {}
        self.sent: list[dict[str, Any]] = []
        self.send_answers: deque[dict[str, Any] | Raw] = deque()
        self.qrcode_answers: deque[dict[str, Any] | Raw] = deque()
        self._ids = itertools.count(1)
        self._changed = anyio.Event()
        self.app = Starlette(routes=self._routes())

    # ---------------------------------------------------------------- scripting

    def add_bot(self, token: str, bot_id: str) -> Bot:
        bot = self.bots[token] = Bot(token, bot_id)
        return bot

    def push_status(self, status: str | Raw, qrcode: str | None = None, **fields: Any) -> None:
        """The next answer to a status poll of `qrcode` (the newest one by default)."""
        handle = qrcode or self.qrcodes[-1]
        answer: dict[str, Any] | Raw = status if isinstance(status, Raw) else {"status": status, **fields}
        if isinstance(answer, dict) and status == "confirmed" and fields.get("bot_token"):
            self.add_bot(fields["bot_token"], fields.get("ilink_bot_id", "bot@im.bot"))
        self.statuses.setdefault(handle, deque()).append(answer)
        self._wake()

    def message(
        self, sender: str, text: str | None = None, *, items: list[dict[str, Any]] | None = None, **fields: Any
    ) -> dict[str, Any]:
        n = next(self._ids)
        msg = {
            "seq": n,
            "message_id": BIG_ID_BASE + n,
            "from_user_id": sender,
            "to_user_id": "bot@im.bot",
            "client_id": f"cli-{n}",
            "create_time_ms": 1_780_000_000_000 + n,
            "session_id": f"sess-{sender}",
            "message_type": 1,
            "message_state": 2,
            "item_list": items if items is not None else [{"type": 1, "text_item": {"text": text or ""}}],
            "context_token": f"ctx-{sender}-{n}",
        }
        msg.update(fields)
        return msg

    def deliver(self, token: str, *messages: dict[str, Any]) -> None:
        """Queue messages behind the bot's cursor (a message queued twice is a redelivery)."""
        self.bots[token].log.extend(messages)
        self._wake()

    def script_updates(self, token: str, *answers: dict[str, Any] | Raw) -> None:
        """Answers to the bot's next polls, before anything of its log."""
        self.bots[token].answers.extend(answers)
        self._wake()

    def expire(self, token: str) -> None:
        self.bots[token].expired = True
        self._wake()

    def of(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path.endswith(path)]

    def sent_to(self, peer: str) -> list[dict[str, Any]]:
        return [m for m in self.sent if m["msg"]["to_user_id"] == peer]

    # ---------------------------------------------------------------- the API

    def _routes(self) -> list[Route]:
        return [
            Route("/ilink/bot/get_bot_qrcode", self._get_bot_qrcode, methods=["POST"]),
            Route("/ilink/bot/get_qrcode_status", self._get_qrcode_status, methods=["GET"]),
            Route("/ilink/bot/getupdates", self._getupdates, methods=["POST"]),
            Route("/ilink/bot/sendmessage", self._sendmessage, methods=["POST"]),
            Route("/ilink/bot/msg/{event}", self._notify, methods=["POST"]),
            Route("/_fake/bots", self._ctl_bots, methods=["POST"]),
            Route("/_fake/deliver", self._ctl_deliver, methods=["POST"]),
            Route("/_fake/status", self._ctl_status, methods=["POST"]),
            Route("/_fake/stats", self._ctl_stats, methods=["GET"]),
        ]

    async def _record(self, request: Request) -> Recorded:
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = raw.decode("utf-8", "replace")
        entry = Recorded(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            port=request.url.port or 0,
        )
        if self.record:
            self.requests.append(entry)
        return entry

    async def _get_bot_qrcode(self, request: Request) -> Response:
        await self._record(request)
        if self.qrcode_answers:
            return _answer(self.qrcode_answers.popleft())
        handle = f"qr{len(self.qrcodes) + 1}-{os.urandom(6).hex()}"
        self.qrcodes.append(handle)
        return JSONResponse(
            {"qrcode": handle, "qrcode_img_content": f"https://liteapp.weixin.qq.com/q/{handle}?bot_type=3"}
        )

    async def _get_qrcode_status(self, request: Request) -> Response:
        entry = await self._record(request)
        queue = self.statuses.setdefault(entry.query.get("qrcode", ""), deque())
        with anyio.move_on_after(self.hold):
            while not queue:
                await self._wait()
        return _answer(queue.popleft()) if queue else JSONResponse({"status": "wait"})

    async def _getupdates(self, request: Request) -> Response:
        entry = await self._record(request)
        bot = self._bot(entry)
        if bot is not None:
            bot.polls += 1  # every poll with this token, answered or refused
        if bot is None or bot.expired:
            return JSONResponse({"errcode": -14, "errmsg": "session timeout"})
        position = _position(entry.body.get("get_updates_buf", "") if isinstance(entry.body, dict) else "")
        with anyio.move_on_after(self.hold):
            while not bot.answers and position >= len(bot.log) and not bot.expired:
                await self._wait()
        if bot.expired:
            return JSONResponse({"errcode": -14, "errmsg": "session timeout"})
        if bot.answers:
            return _answer(bot.answers.popleft())
        msgs = bot.log[position : position + self.batch]
        return JSONResponse({"ret": 0, "msgs": msgs, "get_updates_buf": _cursor(position + len(msgs))})

    async def _sendmessage(self, request: Request) -> Response:
        entry = await self._record(request)
        bot = self._bot(entry)
        if bot is None or bot.expired:
            return JSONResponse({"ret": -14, "errmsg": "session timeout"})
        if self.send_answers:
            answer = self.send_answers.popleft()
            if isinstance(answer, Raw) or answer.get("ret"):
                return _answer(answer)
        self.sent.append({"token": bot.token, "msg": entry.body.get("msg", {}), "at": time.monotonic()})
        self._wake()
        return JSONResponse({"ret": 0, "message_id": BIG_ID_BASE + 500_000 + len(self.sent)})

    async def _notify(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"ret": 0})

    def _bot(self, entry: Recorded) -> Bot | None:
        token = entry.headers.get("authorization", "").removeprefix("Bearer ")
        return self.bots.get(token)

    # ---------------------------------------------------------------- control routes (other processes)

    async def _ctl_bots(self, request: Request) -> Response:
        body = await request.json()
        self.add_bot(body["token"], body["botId"])
        return JSONResponse({})

    async def _ctl_deliver(self, request: Request) -> Response:
        body = await request.json()
        peers = max(1, int(body.get("peers", 1)))
        messages = [self.message(f"u{i % peers}@im.wechat", f"m{i}") for i in range(int(body["count"]))]
        self.deliver(body["token"], *messages)
        return JSONResponse({"queued": len(messages)})

    async def _ctl_status(self, request: Request) -> Response:
        body = await request.json()
        self.push_status(body.pop("status"), **body)
        return JSONResponse({})

    async def _ctl_stats(self, request: Request) -> Response:
        return JSONResponse({"sent": len(self.sent), "polls": sum(b.polls for b in self.bots.values())})

    # ---------------------------------------------------------------- waiting

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _wait(self) -> None:
        await self._changed.wait()

    async def wait_for(self, check: Any, timeout: float = 15.0) -> Any:
        return await eventually(check, timeout)


def _answer(answer: dict[str, Any] | Raw) -> Response:
    if isinstance(answer, Raw):
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type, headers=answer.headers)
    return JSONResponse(answer)


class JSONResponse(Response):
    """JSON through msgspec (integers above 2^53 written exactly, and fast enough for the benchmark)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


def _cursor(position: int) -> str:
    return base64.b64encode(f"fake-cursor:{position}:{'x' * 24}".encode()).decode()


def _position(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        return int(base64.b64decode(cursor).decode().split(":")[1])
    except (ValueError, IndexError):
        return 0


class FakeServer:
    """`FakeIlink` under uvicorn on 127.0.0.1, in the caller's task group; stop/start keep the port."""

    def __init__(self, fake: FakeIlink, port: int | None = None) -> None:
        self.fake = fake
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._done: anyio.Event | None = None

    async def start(self, tg: anyio.abc.TaskGroup) -> None:
        config = uvicorn.Config(self.fake.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        server = self._server = uvicorn.Server(config)
        done = self._done = anyio.Event()

        async def serve() -> None:
            try:
                await server.serve()
            finally:
                done.set()

        tg.start_soon(serve)
        await eventually(lambda: server.started or done.is_set())
        if not server.started:
            raise RuntimeError(f"the fake iLink server did not start on port {self.port}")

    async def stop(self) -> None:
        if self._server is not None and self._done is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # long polls in progress end with the server
            await self._done.wait()
            self._server = None


@asynccontextmanager
async def running_fake(
    fake: FakeIlink | None = None, *, servers: int = 1
) -> AsyncIterator[tuple[FakeIlink, list[FakeServer]]]:
    """The fake on `servers` ports (the second one plays the redirect host)."""
    fake = fake or FakeIlink()
    async with anyio.create_task_group() as tg:
        started = []
        for _ in range(servers):
            server = FakeServer(fake)
            await server.start(tg)
            started.append(server)
        try:
            yield fake, started
        finally:
            for server in started:
                await server.stop()
            tg.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description="a fake iLink bot API on 127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hold", type=float, default=0.2)
    parser.add_argument("--no-record", action="store_true", help="keep no request log (the benchmark)")
    args = parser.parse_args()
    fake = FakeIlink(hold=args.hold, record=not args.no_record)
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning", lifespan="off")


if __name__ == "__main__":
    main()
