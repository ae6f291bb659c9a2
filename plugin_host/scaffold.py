"""`channel-runtime plugin new NAME`: a working SDK plugin folder to start from.

    NAME/plugin.json                 the manifest (id NAME, runtime python, one connector)
    NAME/NAME_plugin/__init__.py
    NAME/NAME_plugin/__main__.py     handlers written with `plugin_host.sdk.Plugin`
    NAME/tests/test_NAME.py          tests with the SDK's PluginHarness
    NAME/README.md

A fresh scaffold passes `plugin validate` and `plugin check`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
KIND_PATTERN = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")


class ScaffoldError(Exception):
    """The scaffold cannot be written (bad name, folder exists)."""


def _manifest(name: str, kind: str, module: str) -> str:
    title = name.replace("_", " ").title()
    manifest = {
        "manifestVersion": 1,
        "id": name,
        "name": title,
        "version": "0.1.0",
        "description": f"{title} connector",
        "protocolVersion": 1,
        "runtime": {"type": "python", "module": module},
        "connectors": [
            {
                "kind": kind,
                "displayName": title,
                "authType": "credentials",
                "capabilities": ["receive_text", "send_text", "direct_messages"],
            }
        ],
        "configSchema": {
            "type": "object",
            "properties": {
                "greeting": {"type": "string", "default": "hello"},
            },
            "additionalProperties": False,
        },
    }
    return json.dumps(manifest, indent=2) + "\n"


_MAIN = '''"""{title}: a connector written with `plugin_host.sdk`.

Replace the bodies below with calls to the platform. The host starts this module
with `python -m {module}`; name, version and connectors come from plugin.json.

Life of a connection: `session.start` onboards an account and reports the
credentials (`session.update`); the host then hands the connection over with
`connection.resume` (after a restart: `initialize.connections`) and the SDK calls
`on_connect`, where the account's receive loop starts. `on_disconnect` stops it.
Anything that must survive a restart (cursors, tokens) goes to `ctx.state`.
"""
from __future__ import annotations

import secrets

import anyio

from plugin_host.errors import INVALID_PARAMS, UNKNOWN_CONNECTION
from plugin_host.sdk import (
    ConnectionInfo,
    ConnectionRef,
    ConnectorSessionView,
    Context,
    HealthResult,
    Plugin,
    RpcError,
    SendRequest,
    SendResult,
    SessionRef,
    SessionStartParams,
    SessionUpdate,
)

plugin = Plugin()

sessions: dict[str, ConnectorSessionView] = {{}}
receivers: dict[str, anyio.CancelScope] = {{}}


@plugin.on_connect
async def connect(ctx: Context, info: ConnectionInfo) -> None:
    """Serve one account: start its receive loop (a long poll, a socket...)."""
    receivers[info.connection_id] = plugin.start_background(receive, info)


@plugin.on_disconnect
async def disconnect(ctx: Context, connection_id: str) -> None:
    scope = receivers.pop(connection_id, None)
    if scope is not None:
        scope.cancel()


async def receive(info: ConnectionInfo) -> None:
    """The account's receive loop: fetch from the platform, `await plugin.host.inbound(event)` each message."""
    cursor = await plugin.state.get("cursor", connection_id=info.connection_id, type=str)
    while True:
        await anyio.sleep(30)  # replace with a call to the platform, from `cursor` on
        await plugin.state.put("cursor", cursor, connection_id=info.connection_id)


@plugin.method("session.start")
async def start_session(ctx: Context, params: SessionStartParams) -> ConnectorSessionView:
    """Onboarding: this template connects at once; a real connector shows a QR code or asks for input."""
    view = ConnectorSessionView(
        session_id=params.session_id,
        kind=params.kind,
        status="connected",
        instructions=[],
        metadata={{}},
        account_id=f"{name}_{{params.connection_id}}",
        display_name=params.display_name or "{title}",
    )
    credentials = {{"token": secrets.token_urlsafe(24)}}
    sessions[params.session_id] = view
    await ctx.host.session_update(
        SessionUpdate(
            session_id=view.session_id,
            kind=view.kind,
            status=view.status,
            instructions=view.instructions,
            metadata=view.metadata,
            account_id=view.account_id,
            display_name=view.display_name,
            connection_id=params.connection_id,
            credentials=credentials,
        )
    )
    return view


@plugin.method("session.get")
async def get_session(ctx: Context, params: SessionRef) -> ConnectorSessionView:
    view = sessions.get(params.session_id)
    if view is None:
        raise RpcError(INVALID_PARAMS, f"unknown session {{params.session_id}}")
    return view


@plugin.method("connection.logout")
async def logout(ctx: Context, params: ConnectionRef) -> dict:
    """Log the account out at the platform; the SDK then calls on_disconnect."""
    if params.connection_id in plugin.connections:
        await ctx.host.connection_status(params.connection_id, "revoked")
    return {{}}


@plugin.method("message.send", idempotent=True)
async def send(ctx: Context, params: SendRequest) -> SendResult:
    """Deliver one message; the SDK dedupes retries of the same requestId (SPEC 3.6)."""
    if params.connection_id not in plugin.connections:
        raise RpcError(UNKNOWN_CONNECTION, f"unknown connection {{params.connection_id}}")
    ctx.log.info("send to %s: %d characters", params.target.peer_id, len(params.content))
    return SendResult(duplicate=False, provider_message_id=f"{name}_{{secrets.token_hex(8)}}")


@plugin.method("health")
async def health(ctx: Context, params: object) -> HealthResult:
    return HealthResult("ok", detail=None, connections={{cid: "connected" for cid in plugin.connections}})


if __name__ == "__main__":
    plugin.run()
'''

_TEST = '''"""Tests of the {title} plugin with the SDK's harness: `python -m pytest tests` in the plugin folder."""
from __future__ import annotations

import sys
from pathlib import Path

import anyio

PLUGIN_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PLUGIN_DIR))

from plugin_host.sdk import (  # noqa: E402
    ConnectionInfo,
    ConnectorSessionView,
    PluginHarness,
    SendRequest,
    SendResult,
    SessionStartParams,
    Target,
)


def test_connect_and_send_in_process() -> None:
    from {module}.__main__ import plugin

    async def scenario() -> None:
        async with PluginHarness.in_process(plugin, plugin_id="{name}", version="0.1.0") as h:
            view = await h.call(
                "session.start",
                SessionStartParams("cs_1", "{kind}", "conn_1", "ch_1", "Me", {{}}),
                result_type=ConnectorSessionView,
            )
            assert view.status == "connected"
            [update] = h.session_updates
            await h.resume(ConnectionInfo("conn_1", "ch_1", "{kind}", "", "Me", {{}}, update.credentials or {{}}))
            assert "conn_1" in plugin.connections
            request = SendRequest("req_1", "conn_1", "ch_1", "{kind}", Target("peer_1", "dm"), "hi", "text", {{}})
            first = await h.call("message.send", request, result_type=SendResult)
            again = await h.call("message.send", request, result_type=SendResult)
            assert again.duplicate and again.provider_message_id == first.provider_message_id
            await h.release("conn_1")
            assert "conn_1" not in plugin.connections

    anyio.run(scenario)


def test_health_as_a_child_process() -> None:
    async def scenario() -> None:
        async with PluginHarness.subprocess(PLUGIN_DIR) as h:
            health = await h.call("health", {{}})
            assert health == {{"status": "ok", "detail": None, "connections": {{}}}}

    anyio.run(scenario)
'''

_README = """# {title}

A channel-runtime connector plugin (kind `{kind}`), written with `plugin_host.sdk`.

    channel-runtime plugin validate .      # manifest and package rules
    channel-runtime plugin check .         # protocol conformance, as a child process
    python -m pytest tests                 # your own tests, with the SDK's PluginHarness
    channel-runtime plugin pack . -o {name}.zip
"""


def scaffold_plugin(name: str, parent: Path, *, kind: str | None = None) -> Path:
    """Write the plugin folder `parent/name`; returns it."""
    if not ID_PATTERN.match(name):
        raise ScaffoldError(
            f"plugin name {name!r} must be a plugin id: 2-64 characters, a lower-case letter first, "
            "then lower-case letters, digits or _"
        )
    kind = kind or name
    if not KIND_PATTERN.match(kind):
        raise ScaffoldError(f"connector kind {kind!r} must be lower-case letters, digits, _, . or -")
    folder = Path(parent) / name
    if folder.exists():
        raise ScaffoldError(f"{folder} already exists")
    module = f"{name}_plugin"
    title = name.replace("_", " ").title()
    values = {"name": name, "kind": kind, "module": module, "title": title}
    files = {
        "plugin.json": _manifest(name, kind, module),
        f"{module}/__init__.py": f'"""{title} plugin. See `__main__.py`."""\n',
        f"{module}/__main__.py": _MAIN.format(**values),
        f"tests/test_{name}.py": _TEST.format(**values),
        "README.md": _README.format(**values),
    }
    for rel, text in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return folder
