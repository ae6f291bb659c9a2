"""A fake Feishu/Lark Open Platform: a real HTTP (and websocket) server on 127.0.0.1, scriptable per test.

Serves what the plugin calls, and records every call:
- accounts: `POST /oauth/v1/app/registration` (and `/lark/oauth/v1/app/registration`
  for the Lark host) with scripted `poll` answers;
- open-apis: tenant token, bot info, IM create and reply (with the platform's
  `uuid` dedupe), scripted failures for the next sends;
- long connection: `POST /callback/ws/endpoint` and a websocket at `/ws` that pushes
  `pbbp2.Frame`s (built with lark-oapi's own protobuf module) and records the acks.
"""

from __future__ import annotations

import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.support import eventually, free_port


@dataclass
class Answer:
    """A scripted answer: HTTP status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class SentMessage:
    message_id: str
    path: str
    receive_id_type: str | None
    body: dict[str, Any]
    token: str
    at: float = field(default_factory=time.monotonic)


class FakeOpenPlatform:
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.accounts_url = self.base_url
        self.lark_accounts_url = f"{self.base_url}/lark"
        self.apps: dict[str, str] = {}
        self.bot = {"open_id": "ou_bot0001", "app_name": "Fake Bot"}
        self.token_lifetime = 7200
        self.tokens: dict[str, str] = {}  # valid token -> app id
        self.calls: list[Call] = []
        self.messages: list[SentMessage] = []  # accepted messages, one per uuid
        self.send_attempts: list[SentMessage] = []  # every IM call, accepted or not
        self.send_script: list[Answer] = []  # answers for the next IM calls, in order
        self.token_script: list[Answer] = []
        # registration (device flow)
        self.init_answer = Answer(200, {"supported_auth_methods": ["client_secret"]})
        self.begin_answer = Answer(
            200,
            {
                "device_code": "dev_code_1",
                "verification_uri_complete": "https://accounts.example.test/verify?user_code=ABCD-EFGH",
                "user_code": "ABCD-EFGH",
                "interval": 0,
                "expires_in": 600,
            },
        )
        self.poll_script: list[Answer] = []
        self.lark_poll_script: list[Answer] = []
        # when set, every registration call is answered with this body, streamed (huge, endless, dripping)
        self.registration_stream: Callable[[], AsyncIterator[bytes]] | None = None
        # long connection
        self.ws_client_config = {"ReconnectCount": -1, "ReconnectInterval": 1, "ReconnectNonce": 0, "PingInterval": 120}
        self.ws_sockets: list[WebSocket] = []
        self.ws_connects = 0
        self.ws_acks: list[tuple[str, int]] = []  # (frame message_id, answered code)
        self._uuids: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._server: uvicorn.Server | None = None

    # ---------------------------------------------------------------- scripting

    def add_app(self, app_id: str = "cli_fake0001", secret: str | None = None) -> tuple[str, str]:
        secret = secret or f"sec-{secrets.token_hex(12)}"
        self.apps[app_id] = secret
        return app_id, secret

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def issued_tokens(self) -> list[Call]:
        return [c for c in self.calls if c.path.endswith("/tenant_access_token/internal")]

    def registration_polls(self, host: str = "feishu") -> list[Call]:
        prefix = "/lark/" if host == "lark" else "/oauth/"
        return [c for c in self.calls if c.path.startswith(prefix) and c.body.get("action") == "poll"]

    # ---------------------------------------------------------------- server

    @asynccontextmanager
    async def running(self) -> AsyncIterator[FakeOpenPlatform]:
        app = Starlette(
            routes=[
                Route("/oauth/v1/app/registration", self._registration_feishu, methods=["POST"]),
                Route("/lark/oauth/v1/app/registration", self._registration_lark, methods=["POST"]),
                Route("/open-apis/auth/v3/tenant_access_token/internal", self._token, methods=["POST"]),
                Route("/open-apis/bot/v3/info", self._bot_info, methods=["GET"]),
                Route("/open-apis/im/v1/messages", self._create, methods=["POST"]),
                Route("/open-apis/im/v1/messages/{message_id}/reply", self._reply, methods=["POST"]),
                Route("/callback/ws/endpoint", self._ws_endpoint, methods=["POST"]),
                WebSocketRoute("/ws", self._ws),
                Route("/_stats", self._stats, methods=["GET"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._server.serve)
            await eventually(lambda: self._server is not None and self._server.started)
            try:
                yield self
            finally:
                await self.drop_websockets()
                self._server.should_exit = True

    async def _record(self, request: Request) -> Call:
        raw = await request.body()
        content_type = request.headers.get("content-type", "")
        body: Any
        if "form" in content_type:
            form = await request.form()
            body = {k: str(v) for k, v in form.items()}
        else:
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                body = {"_raw": raw.decode(errors="replace")}
        call = Call(request.method, request.url.path, dict(request.query_params), dict(request.headers), body)
        self.calls.append(call)
        return call

    # ---------------------------------------------------------------- accounts

    async def _registration_feishu(self, request: Request) -> Response:
        return await self._registration(request, self.poll_script)

    async def _registration_lark(self, request: Request) -> Response:
        return await self._registration(request, self.lark_poll_script)

    async def _registration(self, request: Request, polls: list[Answer]) -> Response:
        call = await self._record(request)
        if self.registration_stream is not None:
            return StreamingResponse(self.registration_stream(), media_type="application/json")
        action = call.body.get("action")
        if action == "init":
            return _answer(self.init_answer)
        if action == "begin":
            return _answer(self.begin_answer)
        if action == "poll":
            if call.body.get("device_code") != self.begin_answer.body.get("device_code"):
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            if not polls:
                return JSONResponse({"error": "authorization_pending"}, status_code=400)
            return _answer(polls.pop(0))
        return JSONResponse({"error": "invalid_request"}, status_code=400)

    # ---------------------------------------------------------------- open-apis

    async def _token(self, request: Request) -> Response:
        call = await self._record(request)
        if self.token_script:
            return _answer(self.token_script.pop(0))
        app_id, secret = call.body.get("app_id"), call.body.get("app_secret")
        if app_id not in self.apps:
            return JSONResponse({"code": 10003, "msg": "invalid param: app_id not found"}, status_code=400)
        if self.apps[app_id] != secret:
            return JSONResponse({"code": 10014, "msg": "app secret invalid"}, status_code=400)
        token = f"t-{secrets.token_hex(16)}"
        self.tokens[token] = app_id
        return JSONResponse({"code": 0, "msg": "ok", "tenant_access_token": token, "expire": self.token_lifetime})

    def _authorized(self, call: Call) -> str | None:
        auth = call.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ")
        return token if token in self.tokens else None

    async def _bot_info(self, request: Request) -> Response:
        call = await self._record(request)
        if self._authorized(call) is None:
            return JSONResponse({"code": 99991663, "msg": "Invalid access token for authorization."}, status_code=400)
        return JSONResponse({"code": 0, "msg": "ok", "bot": dict(self.bot)})

    async def _create(self, request: Request) -> Response:
        call = await self._record(request)
        return self._message(call, call.query.get("receive_id_type"))

    async def _reply(self, request: Request) -> Response:
        call = await self._record(request)
        return self._message(call, None)

    def _message(self, call: Call, receive_id_type: str | None) -> Response:
        token = self._authorized(call)
        attempt = SentMessage("", call.path, receive_id_type, call.body, call.headers.get("authorization", ""))
        self.send_attempts.append(attempt)
        if token is None:
            return JSONResponse({"code": 99991663, "msg": "Invalid access token for authorization."}, status_code=400)
        if self.send_script:
            return _answer(self.send_script.pop(0))
        uuid = call.body.get("uuid")
        if uuid and len(uuid) > 50:
            return JSONResponse({"code": 230001, "msg": "uuid is longer than 50 characters"}, status_code=400)
        if uuid in self._uuids:  # the platform sends at most one message per uuid
            return JSONResponse({"code": 0, "msg": "ok", "data": {"message_id": self._uuids[uuid]}})
        message_id = f"om_fake{next(self._ids):06d}"
        if uuid:
            self._uuids[uuid] = message_id
        attempt.message_id = message_id
        self.messages.append(attempt)
        return JSONResponse({"code": 0, "msg": "ok", "data": {"message_id": message_id, "chat_id": "oc_x"}})

    async def _stats(self, request: Request) -> Response:
        return JSONResponse({"messages": len(self.messages), "attempts": len(self.send_attempts)})

    # ---------------------------------------------------------------- long connection

    async def _ws_endpoint(self, request: Request) -> Response:
        call = await self._record(request)
        app_id, secret = call.body.get("AppID"), call.body.get("AppSecret")
        if self.apps.get(app_id) != secret:
            return JSONResponse({"code": 10014, "msg": "app secret invalid"})
        url = f"ws://127.0.0.1:{self.port}/ws?device_id=dev{self.ws_connects + 1}&service_id=7&access_key=k-{secrets.token_hex(8)}"
        return JSONResponse({"code": 0, "msg": "ok", "data": {"URL": url, "ClientConfig": self.ws_client_config}})

    async def _ws(self, websocket: WebSocket) -> None:
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        await websocket.accept()
        self.ws_connects += 1
        self.ws_sockets.append(websocket)
        try:
            while True:
                data = await websocket.receive_bytes()
                frame = Frame()
                frame.ParseFromString(data)
                headers = {h.key: h.value for h in frame.headers}
                if frame.method == 0:  # control: answer a ping with a pong
                    if headers.get("type") == "ping":
                        pong = Frame()
                        pong.CopyFrom(frame)
                        del pong.headers[:]
                        header = pong.headers.add()
                        header.key, header.value = "type", "pong"
                        await websocket.send_bytes(pong.SerializeToString())
                    continue
                answer = json.loads(frame.payload or b"{}")
                self.ws_acks.append((headers.get("message_id", ""), int(answer.get("code", 0))))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if websocket in self.ws_sockets:
                self.ws_sockets.remove(websocket)

    async def push_event(self, payload: dict[str, Any], *, frame_id: str | None = None) -> str:
        """Send one event frame on the newest websocket; returns the frame's message id."""
        from lark_oapi.ws.pb.pbbp2_pb2 import Frame

        await eventually(lambda: self.ws_sockets)
        frame_id = frame_id or f"frame-{secrets.token_hex(6)}"
        frame = Frame()
        frame.SeqID = next(self._ids)
        frame.LogID = 0
        frame.service = 7
        frame.method = 1  # data
        for key, value in (("type", "event"), ("message_id", frame_id), ("sum", "1"), ("seq", "0"), ("trace_id", "tr")):
            header = frame.headers.add()
            header.key, header.value = key, value
        frame.payload = json.dumps(payload).encode()
        await self.ws_sockets[-1].send_bytes(frame.SerializeToString())
        return frame_id

    async def drop_websockets(self) -> None:
        for websocket in list(self.ws_sockets):
            try:
                await websocket.close()
            except RuntimeError:
                pass
        self.ws_sockets.clear()


def _answer(answer: Answer) -> Response:
    return JSONResponse(answer.body, status_code=answer.status, headers=answer.headers)


def main() -> None:
    """Run the fake on its own (the benchmark): `python -m tests.feishu_vendorcli.fake_platform PORT APP_ID SECRET`."""
    import sys

    port, app_id, secret = int(sys.argv[1]), sys.argv[2], sys.argv[3]

    async def serve() -> None:
        fake = FakeOpenPlatform()
        fake.port, fake.base_url = port, f"http://127.0.0.1:{port}"
        fake.add_app(app_id, secret)
        async with fake.running():
            await anyio.sleep_forever()

    anyio.run(serve)


if __name__ == "__main__":
    main()
