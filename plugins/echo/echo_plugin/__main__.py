"""Echo: the example connector written with `plugin_host.sdk`.

- `session.start` connects at once (no QR, no platform) and hands the host a
  random token as the connection's credentials.
- The host then hands the connection over (`connection.resume`, or
  `initialize.connections` after a restart): `on_connect` runs, and counts the
  hand-overs in host-kept state (`ctx.state`), which survives restarts and new
  versions. `on_disconnect` runs on release, logout or fencing.
- `message.send` is idempotent through the SDK (records in host-kept state),
  appends each message to `<stateDir>/sent.jsonl`, and with metadata
  `{"echoBack": true}` sends the text back as an inbound message, so end-to-end
  tests can loop messages through.
- `webhook.handle` turns a JSON POST `{peerId, text, messageId}` into an event.

Every Struct is built with all its fields: what the SDK sends carries every
field of its shape (SPEC 3.1), optional ones as null.

Name, version and connectors come from `plugin.json` (the host sets PLUGIN_DIR).
"""

from __future__ import annotations

import base64
import os
import time

import msgspec

from plugin_host.errors import INVALID_PARAMS, UNKNOWN_CONNECTION
from plugin_host.sdk import (
    BridgeEvent,
    ConnectionInfo,
    ConnectionRef,
    ConnectorSessionView,
    Context,
    HealthResult,
    Plugin,
    RpcError,
    SendRequest,
    SendResult,
    SessionInputParams,
    SessionRef,
    SessionStartParams,
    SessionUpdate,
    WebhookParams,
    WebhookResponse,
    WebhookResult,
)

plugin = Plugin()

onboarded: dict[str, ConnectionInfo] = {}  # connected by session.start here, usable before the host's resume
sessions: dict[str, ConnectorSessionView] = {}


class WebhookBody(msgspec.Struct, rename="camel"):
    peer_id: str
    text: str
    message_id: str


@plugin.on_connect
async def connected(ctx: Context, info: ConnectionInfo) -> None:
    # a real connector starts the account's receive loop here: plugin.start_background(poll, info)
    handovers = await ctx.state.get("handovers", connection_id=info.connection_id, type=int) or 0
    await ctx.state.put("handovers", handovers + 1, connection_id=info.connection_id)
    onboarded.pop(info.connection_id, None)


@plugin.on_disconnect
async def disconnected(ctx: Context, connection_id: str) -> None:
    ctx.log.info("connection %s is no longer served here", connection_id)  # ... and stops its receive loop


@plugin.method("session.start")
async def start_session(ctx: Context, params: SessionStartParams) -> ConnectorSessionView:
    display_name = params.display_name or "Echo"
    view = ConnectorSessionView(
        session_id=params.session_id,
        kind=params.kind,
        status="connected",
        instructions=[],
        metadata={},
        account_id=f"echo_{params.connection_id}",
        display_name=display_name,
    )
    credentials = {"token": _random_id(24)}
    sessions[params.session_id] = view
    onboarded[params.connection_id] = ConnectionInfo(
        connection_id=params.connection_id,
        channel_id=params.channel_id,
        kind=params.kind,
        account_id=view.account_id or "",
        display_name=display_name,
        options=params.options,
        credentials=credentials,
    )
    update = SessionUpdate(**msgspec.structs.asdict(view), connection_id=params.connection_id, credentials=credentials)
    await ctx.host.session_update(update)
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
    # the SDK runs on_disconnect once this returns
    known = onboarded.pop(params.connection_id, None) or plugin.connections.get(params.connection_id)
    if known is not None:
        await ctx.state.delete("handovers", connection_id=params.connection_id)
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
    return SendResult(duplicate=False, provider_message_id=message_id)


async def echo_back(connection: ConnectionInfo, params: SendRequest) -> None:
    event = BridgeEvent(
        event_id=f"evt_{_random_id()}",
        timestamp=_now(),
        delivery_attempt=1,
        connection_id=connection.connection_id,
        channel_id=params.channel_id or connection.channel_id,
        kind=connection.kind,
        account_id=connection.account_id,
        peer_id=params.target.peer_id,
        peer_type=params.target.peer_type,
        user_id=None,
        thread_id=params.target.thread_id,
        message_id=f"in_{_random_id()}",
        message_type="text",
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
        response = WebhookResponse(status=400, headers={}, body="expected JSON {peerId, text, messageId}")
        return WebhookResult(response=response, events=[])
    event = BridgeEvent(
        event_id=f"evt_{body.message_id}",  # stable across redeliveries, so the host dedupes them
        timestamp=_now(),
        delivery_attempt=1,
        connection_id=connection.connection_id,
        channel_id=connection.channel_id,
        kind=connection.kind,
        account_id=connection.account_id,
        peer_id=body.peer_id,
        peer_type="dm",
        user_id=body.peer_id,
        thread_id=None,
        message_id=body.message_id,
        message_type="text",
        content=body.text,
        metadata={},
    )
    return WebhookResult(
        response=WebhookResponse(status=200, headers={"content-type": "application/json"}, body='{"ok":true}'),
        events=[event],
    )


@plugin.method("health")
async def health(ctx: Context, params: object) -> HealthResult:
    served = {cid: "connected" for cid in [*plugin.connections, *onboarded]}
    return HealthResult("ok", detail=None, connections=served)


def _connection(connection_id: str) -> ConnectionInfo:
    connection = plugin.connections.get(connection_id) or onboarded.get(connection_id)
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
