"""Sidecar echo: the test connector of the sidecar tests and benchmark (SDK, no platform).

- `session.start` connects at once; the credentials are a random token.
- `initialize.connections` and `connection.resume` are recorded in `<stateDir>/resumed.jsonl`
  (one line per connection handed over), so a test can see an account resumed without a login.
- `message.send` appends each try to `<stateDir>/attempts.jsonl`; with SIDECHO_FLAKY=1 the
  first try of each requestId fails (-32603), the next succeeds; sends land in `sent.jsonl`;
  metadata `{"hang": true}` never answers (until the host cancels the call).
- `webhook.handle`: `{peerId, text, messageId}` is one event; `{burst: N, peers: K, prefix}`
  answers 202 at once and emits N `event.inbound` calls (K conversations) in the background.
"""

from __future__ import annotations

import base64
import os
import time

import anyio
import msgspec

from plugin_host.errors import INTERNAL_ERROR, UNKNOWN_CONNECTION
from plugin_host.protocol import SessionStartParams
from plugin_host.sdk import (
    BridgeEvent,
    ConnectionInfo,
    ConnectorSessionView,
    Context,
    HealthResult,
    InitializeParams,
    Plugin,
    RpcError,
    SendRequest,
    SendResult,
    SessionUpdate,
    WebhookParams,
    WebhookResponse,
    WebhookResult,
)

plugin = Plugin()
connections: dict[str, ConnectionInfo] = {}
failed_once: set[str] = set()
BURST_CONCURRENCY = 32


def _append(name: str, record: object) -> None:
    with open(os.path.join(plugin.state_dir, name), "ab") as f:
        f.write(msgspec.json.encode(record) + b"\n")


def _take(info: ConnectionInfo, how: str) -> None:
    connections[info.connection_id] = info
    _append("resumed.jsonl", {"connectionId": info.connection_id, "how": how, "hasCredentials": bool(info.credentials)})


@plugin.on_initialize
async def initialize(ctx: Context, params: InitializeParams) -> None:
    for info in params.connections:
        _take(info, "initialize")


@plugin.on_connect
async def connect(ctx: Context, info: ConnectionInfo) -> None:
    # every hand-over (initialize's connections, then each connection.resume); initialize's are also recorded above
    _take(info, "connect")


@plugin.method("session.start")
async def start_session(ctx: Context, params: SessionStartParams) -> ConnectorSessionView:
    view = ConnectorSessionView(
        session_id=params.session_id,
        kind=params.kind,
        status="connected",
        instructions=[],
        metadata={},
        account_id=f"acct_{params.connection_id}",
        display_name=params.display_name or "Sidecar echo",
    )
    credentials = {"token": os.urandom(16).hex()}
    connections[params.connection_id] = ConnectionInfo(
        connection_id=params.connection_id,
        channel_id=params.channel_id,
        kind=params.kind,
        account_id=view.account_id or "",
        display_name=view.display_name or "",
        options={},
        credentials=credentials,
    )
    await ctx.host.session_update(
        SessionUpdate(**msgspec.structs.asdict(view), connection_id=params.connection_id, credentials=credentials)
    )
    return view


@plugin.method("connection.logout")
async def logout(ctx: Context, params: dict) -> dict:
    connections.pop(str(params.get("connectionId")), None)
    return {}


@plugin.method("message.send")
async def send(ctx: Context, params: SendRequest) -> SendResult:
    if params.connection_id not in connections:
        raise RpcError(UNKNOWN_CONNECTION, f"unknown connection {params.connection_id}")
    _append("attempts.jsonl", {"requestId": params.request_id, "content": params.content})
    if params.metadata.get("hang"):
        await anyio.sleep_forever()
    if os.environ.get("SIDECHO_FLAKY") == "1" and params.request_id not in failed_once:
        failed_once.add(params.request_id)
        raise RpcError(INTERNAL_ERROR, "sidecho: the first try of every send fails (SIDECHO_FLAKY=1)")
    message_id = f"sc_{os.urandom(6).hex()}"
    _append("sent.jsonl", {"providerMessageId": message_id, "request": params})
    return SendResult(duplicate=False, provider_message_id=message_id)


def _event(connection: ConnectionInfo, peer_id: str, message_id: str, text: str) -> BridgeEvent:
    return BridgeEvent(
        event_id=f"evt_{message_id}",
        timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        delivery_attempt=1,
        connection_id=connection.connection_id,
        channel_id=connection.channel_id,
        kind=connection.kind,
        account_id=connection.account_id,
        peer_id=peer_id,
        peer_type="dm",
        message_id=message_id,
        message_type="text",
        content=text,
        metadata={},
        user_id=None,
        thread_id=None,
    )


async def _burst(connection: ConnectionInfo, count: int, peers: int, prefix: str) -> None:
    numbers = iter(range(count))

    async def worker() -> None:  # BURST_CONCURRENCY calls in flight, each one awaiting its ack
        for n in numbers:
            await plugin.host.inbound(_event(connection, f"peer_{n % peers}", f"{prefix}{n}", f"burst {n}"))

    async with anyio.create_task_group() as tg:
        for _ in range(min(BURST_CONCURRENCY, count)):
            tg.start_soon(worker)


@plugin.method("webhook.handle")
async def webhook(ctx: Context, params: WebhookParams) -> WebhookResult:
    connection = connections.get(params.connection_id)
    if connection is None:
        raise RpcError(UNKNOWN_CONNECTION, f"unknown connection {params.connection_id}")
    body = msgspec.json.decode(base64.b64decode(params.body) or b"{}")
    if "burst" in body:
        count, peers = int(body["burst"]), max(int(body.get("peers", 1)), 1)
        plugin.start_background(_burst, connection, count, peers, str(body.get("prefix", "b")))
        return WebhookResult(response=WebhookResponse(status=202, headers={}, body="burst started"), events=[])
    event = _event(connection, str(body["peerId"]), str(body["messageId"]), str(body["text"]))
    return WebhookResult(response=WebhookResponse(status=200, headers={}, body="ok"), events=[event])


@plugin.method("health")
async def health(ctx: Context, params: object) -> HealthResult:
    return HealthResult("ok", detail=None, connections={cid: "connected" for cid in connections})


if __name__ == "__main__":
    plugin.run()
