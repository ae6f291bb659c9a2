"""QR demo: a connector whose platform is the test itself, written with the SDK.

The test plays the user's phone and the platform through the connection's
webhook (`POST /webhooks/{connectionId}` with a JSON `{"action": ...}`):

- `scan`: the QR code was scanned (session `qr_ready` → `scanned`);
- `confirm`: the login was confirmed on the phone and asks for a verify code
  (`waiting_for_user`); `session.input` with `VERIFY_CODE` connects;
- `expire`: the platform ended the account's session (`connection.status` error
  `session_expired`);
- `message {peerId, text, messageId}`: an inbound message;
- `failSends {on}`: while on, `message.send` is refused (-32012, not retried);
- `log {level, text}`: a stderr line at that level.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec

from plugin_host.errors import INVALID_PARAMS, UNKNOWN_CONNECTION, UNSUPPORTED
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

VERIFY_CODE = "246810"

plugin = Plugin()
sessions: dict[str, ConnectorSessionView] = {}
session_of_connection: dict[str, str] = {}
pairing: dict[str, SessionStartParams] = {}
connections: dict[str, ConnectionInfo] = {}
fail_sends = False
sent = 0


@plugin.on_initialize
async def resume(ctx: Context, params: InitializeParams) -> None:
    connections.update((c.connection_id, c) for c in params.connections)
    safe = {k: v for k, v in params.config.items() if k != "apiKey"}
    plugin.log.info("qrdemo started with config %s and %d connection(s)", safe, len(params.connections))


@plugin.method("session.start")
async def start_session(ctx: Context, params: SessionStartParams) -> ConnectorSessionView:
    view = ConnectorSessionView(
        session_id=params.session_id,
        kind=params.kind,
        status="qr_ready",
        qr_code=f"https://qrdemo.invalid/login/{params.session_id}",
        instructions=["Open the QR demo app on your phone.", "Scan this code, then confirm the login."],
        metadata={},
        display_name=params.display_name or None,
    )
    sessions[params.session_id] = view
    session_of_connection[params.connection_id] = params.session_id
    pairing[params.session_id] = params
    plugin.log.info(
        "session %s started for %s (region %s)", params.session_id, params.connection_id, params.options.get("region")
    )
    return view


@plugin.method("session.get")
async def get_session(ctx: Context, params: SessionRef) -> ConnectorSessionView:
    return _session(params.session_id)


@plugin.method("session.input")
async def session_input(ctx: Context, params: SessionInputParams) -> ConnectorSessionView:
    view = _session(params.session_id)
    if view.status != "waiting_for_user":
        raise RpcError(INVALID_PARAMS, f"session {params.session_id} is not waiting for input")
    if str(params.input).strip() != VERIFY_CODE:
        plugin.log.warning("wrong verify code for session %s", params.session_id)
        return _set(view, error="That code is not the one on your phone: try again.")
    start = pairing[params.session_id]
    account_id = f"qr_{start.connection_id[-8:]}"
    name = start.display_name or "QR demo user"
    info = ConnectionInfo(
        connection_id=start.connection_id,
        channel_id=start.channel_id,
        kind=start.kind,
        account_id=account_id,
        display_name=name,
        options=start.options,
        credentials={"token": f"qrdemo-{start.connection_id}"},
    )
    connections[start.connection_id] = info
    view = _set(view, status="connected", account_id=account_id, display_name=name, error=None, instructions=[])
    await ctx.host.session_update(
        SessionUpdate(**msgspec.structs.asdict(view), connection_id=start.connection_id, credentials=info.credentials)
    )
    plugin.log.info("connection %s connected as %s", start.connection_id, account_id)
    return view


@plugin.method("session.cancel")
async def cancel_session(ctx: Context, params: SessionRef) -> dict[str, Any]:
    _set(_session(params.session_id), status="cancelled")
    plugin.log.info("session %s cancelled", params.session_id)
    return {}


@plugin.method("connection.logout")
async def logout(ctx: Context, params: ConnectionRef) -> dict[str, Any]:
    if connections.pop(params.connection_id, None) is not None:
        await ctx.host.connection_status(params.connection_id, "revoked")
    return {}


@plugin.method("message.send", idempotent=True)
async def send(ctx: Context, params: SendRequest) -> SendResult:
    global sent
    if params.connection_id not in connections:
        raise RpcError(UNKNOWN_CONNECTION, f"unknown connection {params.connection_id}")
    if fail_sends:
        plugin.log.error("send %s refused: the demo platform is failing sends", params.request_id)
        raise RpcError(UNSUPPORTED, "the demo platform refuses sends right now")
    sent += 1
    plugin.log.info("sent %s to %s", params.request_id, params.target.peer_id)
    return SendResult(duplicate=False, provider_message_id=f"qrdemo_{sent}")


@plugin.method("webhook.handle")
async def webhook(ctx: Context, params: WebhookParams) -> WebhookResult:
    global fail_sends
    try:
        body = msgspec.json.decode(base64.b64decode(params.body))
        action = body["action"]
    except (ValueError, KeyError, TypeError, msgspec.DecodeError):
        return _answer(400, "expected JSON {action: ...}")
    connection_id = params.connection_id
    events: list[BridgeEvent] = []
    if action in ("scan", "confirm"):
        session_id = session_of_connection.get(connection_id)
        if session_id is None:
            return _answer(404, "no session for this connection")
        view = _session(session_id)
        if action == "scan":
            view = _set(view, status="scanned", instructions=["Confirm the login on your phone."])
        else:
            view = _set(
                view, status="waiting_for_user", instructions=[f"Enter the code {VERIFY_CODE} shown on your phone."]
            )
        await ctx.host.session_update(SessionUpdate(**msgspec.structs.asdict(view), connection_id=connection_id))
    elif action == "expire":
        await ctx.host.connection_status(connection_id, "error", "session_expired")
        plugin.log.warning("the platform ended the session of %s", connection_id)
    elif action == "message":
        info = connections.get(connection_id)
        if info is None:
            return _answer(404, "connection not connected")
        events.append(
            BridgeEvent(
                event_id=f"evt_{body['messageId']}",
                timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                delivery_attempt=1,
                connection_id=connection_id,
                channel_id=info.channel_id,
                kind=info.kind,
                account_id=info.account_id,
                peer_id=str(body.get("peerId", "peer_1")),
                peer_type="dm",
                message_id=str(body["messageId"]),
                message_type="text",
                content=str(body.get("text", "")),
                metadata={},
            )
        )
    elif action == "failSends":
        fail_sends = bool(body.get("on"))
        plugin.log.warning("failing sends: %s", fail_sends)
    elif action == "log":
        getattr(plugin.log, str(body.get("level", "info")).lower(), plugin.log.info)("%s", body.get("text", ""))
    else:
        return _answer(400, f"unknown action {action!r}")
    response = WebhookResponse(status=200, headers={"content-type": "application/json"}, body='{"ok":true}')
    return WebhookResult(response=response, events=events)


@plugin.method("health")
async def health(ctx: Context, params: object) -> HealthResult:
    return HealthResult("ok", connections={cid: "connected" for cid in connections})


def _session(session_id: str) -> ConnectorSessionView:
    view = sessions.get(session_id)
    if view is None:
        raise RpcError(INVALID_PARAMS, f"unknown session {session_id}")
    return view


def _set(view: ConnectorSessionView, **changes: Any) -> ConnectorSessionView:
    view = msgspec.structs.replace(view, **changes)
    sessions[view.session_id] = view
    return view


def _answer(status: int, text: str) -> WebhookResult:
    return WebhookResult(response=WebhookResponse(status=status, headers={}, body=text), events=[])


if __name__ == "__main__":
    plugin.run()
