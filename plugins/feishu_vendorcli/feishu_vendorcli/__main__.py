"""Feishu / Lark connector (SPEC 9): the handlers of the plugin process.

- `session.start`: `mode` create (QR scan, the app-registration device flow),
  link (an existing app) or vendor_cli (the vendor installer); see onboarding.py.
- `on_connect` / `on_disconnect`: start and stop serving a connection (the long
  connection for `connection: websocket`).
- `webhook.handle`: verified, decrypted, mapped events (webhook.py, events.py).
- `message.send`: IM create or reply, `uuid` from the requestId, split text (outbound.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec

from plugin_host.errors import INVALID_PARAMS
from plugin_host.protocol import ConnectionRef, SessionInputParams, SessionRef, SessionStartParams
from plugin_host.sdk import (
    ConnectionInfo,
    ConnectorSessionView,
    Context,
    HealthResult,
    InitializeParams,
    Plugin,
    RpcError,
    SendRequest,
    SendResult,
    WebhookParams,
    WebhookResponse,
    WebhookResult,
)

from . import onboarding
from .connector import Feishu
from .onboarding import CreateOptions, LinkOptions, Session
from .openapi import PlatformError
from .outbound import plan, receive_id_type, rpc_error

log = logging.getLogger("feishu_vendorcli")

SESSIONS_KEPT = 200
_JSON = {"content-type": "application/json; charset=utf-8"}

plugin = Plugin()
feishu = Feishu(plugin)
sessions: dict[str, Session] = {}


@plugin.on_initialize
async def initialize(ctx: Context, params: InitializeParams) -> None:
    feishu.configure(params.config)


@plugin.on_connect
async def connect(ctx: Context, info: ConnectionInfo) -> None:
    await feishu.serve(info)


@plugin.on_disconnect
async def disconnect(ctx: Context, connection_id: str) -> None:
    await feishu.stop_serving(connection_id)


@plugin.on_shutdown
async def shutdown(ctx: Context) -> None:
    await feishu.aclose()


# ---------------------------------------------------------------- sessions


@plugin.method("session.start")
async def start_session(ctx: Context, params: SessionStartParams) -> ConnectorSessionView:
    options = onboarding.options_for(params)
    session = Session(feishu, params)
    if len(sessions) >= SESSIONS_KEPT:  # finished sessions are kept a while for session.get, not forever
        for session_id in [sid for sid, s in sessions.items() if s.finished][: SESSIONS_KEPT // 2]:
            del sessions[session_id]
    sessions[params.session_id] = session
    flow: Callable[..., Awaitable[None]]
    args: tuple[Any, ...]
    if isinstance(options, LinkOptions):
        flow, args = onboarding.link, (session, options)
    elif isinstance(options, CreateOptions):
        flow, args = onboarding.create, (session, options)
    else:
        flow, args = onboarding.vendor_install, (session,)
    session.scope = plugin.start_background(_drive, flow, args, name=f"session {params.session_id}")
    return session.view


async def _drive(flow: Callable[..., Awaitable[None]], args: tuple[Any, ...]) -> None:
    session: Session = args[0]
    try:
        await flow(*args)
    except anyio.get_cancelled_exc_class():
        raise  # cancelled or shutting down: the host knows what it asked for
    except Exception as exc:
        log.exception("session %s failed", session.params.session_id)
        await session.fail(f"the session failed: {type(exc).__name__}")
    if not session.finished:
        await session.fail("the session ended without a result")


@plugin.method("session.get")
async def get_session(ctx: Context, params: SessionRef) -> ConnectorSessionView:
    return _session(params.session_id).view


@plugin.method("session.input")
async def session_input(ctx: Context, params: SessionInputParams) -> ConnectorSessionView:
    return _session(params.session_id).view  # nothing to type in: the phone confirms


@plugin.method("session.cancel")
async def cancel_session(ctx: Context, params: SessionRef) -> dict:
    session = _session(params.session_id)
    if session.scope is not None:
        session.scope.cancel()
    if not session.finished:
        session.view = msgspec.structs.replace(session.view, status="cancelled", qr_code=None, qr_image=None)
    return {}


def _session(session_id: str) -> Session:
    session = sessions.get(session_id)
    if session is None:
        raise RpcError(INVALID_PARAMS, f"unknown session {session_id}")
    return session


# ---------------------------------------------------------------- connections


@plugin.method("connection.logout")
async def logout(ctx: Context, params: ConnectionRef) -> dict:
    if await feishu.forget(params.connection_id):
        await ctx.host.connection_status(params.connection_id, "revoked")
    return {}


@plugin.method("health")
async def health(ctx: Context, params: object) -> HealthResult:
    statuses = {cid: app.status for cid, app in feishu.apps.items()}
    degraded = any(status != "connected" for status in statuses.values())
    return HealthResult(status="degraded" if degraded else "ok", detail=None, connections=statuses)


# ---------------------------------------------------------------- inbound and outbound


@plugin.method("webhook.handle")
async def webhook(ctx: Context, params: WebhookParams) -> WebhookResult:
    app = feishu.apps.get(params.connection_id)
    if app is None:
        # not (yet) handed to this process, e.g. just after a restart: the platform delivers again
        log.warning("webhook refused for %s: the connection is not served here (yet)", params.connection_id)
        body = '{"error":"the connection is not served here yet"}'
        return WebhookResult(WebhookResponse(503, {"retry-after": "5", **_JSON}, body), [])
    outcome = app.verifier.handle(params, app.route, feishu.clock.time())
    if outcome.refusal is not None:
        log.warning("webhook refused for %s: %s", params.connection_id, feishu.redact(outcome.refusal))
    elif outcome.challenge:
        log.info("webhook %s: URL verification answered", params.connection_id)
    feishu.note(app, notice=outcome.notice)
    await app.remember_threads(outcome.events)
    return WebhookResult(outcome.response, outcome.events)


@plugin.method("message.send", idempotent=True)
async def send(ctx: Context, params: SendRequest) -> SendResult:
    app = feishu.app(params.connection_id)
    target = params.target
    id_type = receive_id_type(target.peer_id, target.peer_type, params.metadata.get("receiveIdType"))
    thread_root = await app.thread_root(target.thread_id) if not target.reply_to_message_id else None
    parts = list(plan(params, limit_bytes=feishu.config.text_limit_bytes, thread_root=thread_root))
    first: str | None = None
    try:
        for part in parts:
            body = {"msg_type": "text", "content": part.content, "uuid": part.uuid}
            if part.reply_to:
                message_id = await feishu.api.reply_message(
                    app.connection_id,
                    app.base_url,
                    app.account,
                    message_id=part.reply_to,
                    body={**body, "reply_in_thread": part.in_thread},
                )
            else:
                message_id = await feishu.api.create_message(
                    app.connection_id,
                    app.base_url,
                    app.account,
                    receive_id=target.peer_id,
                    receive_id_type=id_type,
                    body=body,
                )
            first = first or message_id
    except PlatformError as exc:
        error = rpc_error(exc)
        log.warning("send %s failed: %s", params.request_id, feishu.redact(error.message))
        raise error from None
    return SendResult(duplicate=False, provider_message_id=first)


if __name__ == "__main__":
    plugin.run()
