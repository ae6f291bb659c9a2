"""Racer: a connector whose timing is chosen by the test through the session options.

- `session.start` reports `scanned` in a `session.update` BEFORE answering `qr_ready` (an
  answer older than the update it follows); options `{"connectAt": "start"}` connect at once.
- `session.input` connects (credentials in the update).
- `on_connect` sends `options.flood` log notifications first (a plugin chatty while it is
  handed a connection), then records the hand-over in host state (`handedOver`).
- No `connection.logout` handler (-32601); `on_disconnect` records `released` in plugin-wide state.
"""

from __future__ import annotations

import anyio

from plugin_host.protocol import SessionInputParams, SessionStartParams
from plugin_host.sdk import ConnectionInfo, ConnectorSessionView, Context, Plugin, SessionUpdate

plugin = Plugin()
options: dict[str, dict] = {}  # connection id -> session options


def view(params_session: str, kind: str, status: str) -> ConnectorSessionView:
    return ConnectorSessionView(
        session_id=params_session, kind=kind, status=status, instructions=[], metadata={}, qr_code="racer-qr"
    )


async def update(ctx: Context, connection_id: str, v: ConnectorSessionView, credentials: dict | None = None) -> None:
    await ctx.host.session_update(
        SessionUpdate(
            session_id=v.session_id,
            kind=v.kind,
            status=v.status,
            instructions=v.instructions,
            metadata=v.metadata,
            qr_code=v.qr_code,
            account_id=v.account_id,
            display_name=v.display_name,
            error=v.error,
            connection_id=connection_id,
            credentials=credentials,
        )
    )


@plugin.method("session.start")
async def start(ctx: Context, params: SessionStartParams) -> ConnectorSessionView:
    options[params.connection_id] = dict(params.options)
    await update(ctx, params.connection_id, view(params.session_id, params.kind, "scanned"))
    await anyio.sleep(0.3)  # the host applies the update before this answer arrives
    return view(params.session_id, params.kind, "qr_ready")


@plugin.method("session.input")
async def session_input(ctx: Context, params: SessionInputParams) -> ConnectorSessionView:
    connection_id = str(params.input)
    connected = view(params.session_id, "racer", "connected")
    await update(ctx, connection_id, connected, credentials={"token": "racer-tok-0123456789"})
    return connected


@plugin.on_connect
async def connect(ctx: Context, info: ConnectionInfo) -> None:
    for n in range(int(options.get(info.connection_id, {}).get("flood", 0))):
        await ctx.host.log("info", f"busy {n}")
    await ctx.state.put("handedOver", True, connection_id=info.connection_id)


@plugin.on_disconnect
async def disconnect(ctx: Context, connection_id: str) -> None:
    await ctx.state.put("released", connection_id)


if __name__ == "__main__":
    plugin.run()
