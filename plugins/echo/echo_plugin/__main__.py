"""Echo: the example connector written with `plugin_host.sdk`.

- `session.start` connects at once (no QR, no platform) and hands the host a
  random token as the connection's credentials.
- `message.send` is idempotent through the SDK store, appends each message to
  `<stateDir>/sent.jsonl`, and with metadata `{"echoBack": true}` sends the text
  back as an inbound message, so end-to-end tests can loop messages through.
- `webhook.handle` turns a JSON POST `{peerId, text, messageId}` into an event.

Name, version and connectors come from `plugin.json` (the host sets PLUGIN_DIR).
"""

from __future__ import annotations

import base64
import os
import time

import msgspec

from plugin_host.errors import INVALID_PARAMS, UNKNOWN_CONNECTION
from plugin_host.protocol import ConnectionRef, SessionInputParams, SessionRef, SessionStartParams
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
sessions: dict[str, ConnectorSessionView] = {}


class WebhookBody(msgspec.Struct, rename="camel"):
    peer_id: str
    text: str
    message_id: str


@plugin.on_initialize
async def resume(ctx: Context, params: InitializeParams) -> None:
    connections.clear()
    connections.update((c.connection_id, c) for c in params.connections)


@plugin.method("session.start")
async def start_session(ctx: Context, params: SessionStartParams) -> ConnectorSessionView:
    display_name = params.display_name or "Echo"
    view = ConnectorSessionView(
        session_id=params.session_id,
        kind=params.kind,
        status="connected",
        account_id=f"echo_{params.connection_id}",
        display_name=display_name,
    )
    credentials = {"token": _random_id(24)}
    sessions[params.session_id] = view
    connections[params.connection_id] = ConnectionInfo(
        connection_id=params.connection_id,
        channel_id=params.channel_id,
        kind=params.kind,
        account_id=view.account_id or "",
        display_name=display_name,
        options=params.options,
        credentials=credentials,
    )
    await ctx.host.session_update(
        SessionUpdate(**msgspec.structs.asdict(view), connection_id=params.connection_id, credentials=credentials)
    )
    return view


@plugin.method("session.get")
async def get_session(ctx: Context, params: SessionRef) -> ConnectorSessionView:
    return _session(params.session_id)


@plugin.method("session.input")
async def session_input(ctx: Context, params: SessionInputParams) -> ConnectorSessionView:
    return _session(params.session_id)  # nothing to type in: echo connects at once


@plugin.method("session.cancel")
async def cancel_session(ctx: Context, params: SessionRef) -> dict:
    _session(params.session_id)
    return {}


@plugin.method("connection.logout")
async def logout(ctx: Context, params: ConnectionRef) -> dict:
    if connections.pop(params.connection_id, None) is not None:
        await ctx.host.connection_status(params.connection_id, "revoked")
    return {}


@plugin.method("message.send", idempotent=True)
async def send(ctx: Context, params: SendRequest) -> SendResult:
    connection = _connection(params.connection_id)
    message_id = f"echo_{_random_id()}"
    record = {"providerMessageId": message_id, "request": params}
    with open(os.path.join(ctx.state_dir, "sent.jsonl"), "ab") as sent:
        sent.write(msgspec.json.encode(record) + b"\n")
    if params.metadata.get("echoBack"):
        # after the answer, so the host sees the send complete before the echo arrives
        plugin.start_background(echo_back, connection, params)
    return SendResult(provider_message_id=message_id)


async def echo_back(connection: ConnectionInfo, params: SendRequest) -> None:
    event = BridgeEvent(
        event_id=f"evt_{_random_id()}",
        timestamp=_now(),
        connection_id=connection.connection_id,
        channel_id=params.channel_id or connection.channel_id,
        kind=connection.kind,
        account_id=connection.account_id,
        peer_id=params.target.peer_id,
        peer_type=params.target.peer_type,
        thread_id=params.target.thread_id,
        message_id=f"in_{_random_id()}",
        content=params.content,
        metadata={"echoOf": params.request_id},
    )
    ack = await plugin.host.inbound(event)
    if not ack.accepted:
        plugin.log.warning("host did not accept echo of %s", params.request_id)


@plugin.method("webhook.handle")
async def webhook(ctx: Context, params: WebhookParams) -> WebhookResult:
    connection = _connection(params.connection_id)
    try:
        body = msgspec.json.decode(base64.b64decode(params.body), type=WebhookBody)
    except (ValueError, msgspec.DecodeError):
        return WebhookResult(response=WebhookResponse(status=400, body="expected JSON {peerId, text, messageId}"))
    event = BridgeEvent(
        event_id=f"evt_{body.message_id}",  # stable across redeliveries, so the host dedupes them
        timestamp=_now(),
        connection_id=connection.connection_id,
        channel_id=connection.channel_id,
        kind=connection.kind,
        account_id=connection.account_id,
        peer_id=body.peer_id,
        peer_type="dm",
        message_id=body.message_id,
        content=body.text,
    )
    return WebhookResult(
        response=WebhookResponse(status=200, headers={"content-type": "application/json"}, body='{"ok":true}'),
        events=[event],
    )


@plugin.method("health")
async def health(ctx: Context, params: object) -> HealthResult:
    return HealthResult("ok", connections={cid: "connected" for cid in connections})


def _connection(connection_id: str) -> ConnectionInfo:
    connection = connections.get(connection_id)
    if connection is None:
        raise RpcError(UNKNOWN_CONNECTION, f"unknown connection {connection_id}")
    return connection


def _session(session_id: str) -> ConnectorSessionView:
    view = sessions.get(session_id)
    if view is None:
        raise RpcError(INVALID_PARAMS, f"unknown session {session_id}")
    return view


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(plugin.clock.time()))


def _random_id(size: int = 8) -> str:
    return os.urandom(size).hex()  # os.urandom, not `secrets`: it keeps start-up fast


if __name__ == "__main__":
    plugin.run()
