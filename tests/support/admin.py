"""Shared helpers of the admin API tests (no tests here): plugin zips, settings, an app with its lifespan."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette

from admin_api import create_app
from channel_runtime.settings import Settings
from plugin_host.host import PluginHost
from plugin_host.package import pack_directory

REPO = Path(__file__).resolve().parents[2]
ECHO_DIR = REPO / "plugins" / "echo"
ADMIN_TOKEN = "adm1n-Tok3n-for-tests-0123456789abcdefXYZ"
BRIDGE_TOKEN = "br1dge-Tok3n-for-tests-0123456789abcdefXYZ"
SECRET_CONFIG_VALUE = "sup3r-secret-config-value-42"

SECRET_SCHEMA = {
    "type": "object",
    "properties": {
        "apiToken": {"type": "string", "writeOnly": True},
        "signingKey": {"type": "string"},  # secret by its name alone (plugin_host.redact.is_secret_name)
        "retries": {"type": "integer", "minimum": 0},
    },
    "additionalProperties": False,
}

BROKEN_MAIN = "import sys\nsys.stderr.write('this version cannot start\\n')\nsys.exit(3)\n"


def plugin_source(
    tmp: Path, version: str = "1.0.0", *, broken: bool = False, plugin_id: str = "echo", **manifest: Any
) -> Path:
    """A copy of plugins/echo with another version (and optionally a main that exits at once)."""
    dest = tmp / f"src-{plugin_id}-{version}{'-broken' if broken else ''}"
    n = 1
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{dest.name.split('~')[0]}~{n}")
    shutil.copytree(ECHO_DIR, dest, ignore=shutil.ignore_patterns("__pycache__"))
    data = json.loads((dest / "plugin.json").read_text())
    data.update(version=version, id=plugin_id, **manifest)
    if plugin_id != "echo":
        data["connectors"] = [dict(c, kind=f"{plugin_id}_kind") for c in data["connectors"]]
    (dest / "plugin.json").write_text(json.dumps(data, indent=2))
    if broken:
        (dest / "echo_plugin" / "__main__.py").write_text(BROKEN_MAIN)
    return dest


def plugin_zip(tmp: Path, version: str = "1.0.0", **kwargs: Any) -> bytes:
    src = plugin_source(tmp, version, **kwargs)
    return pack_directory(src, tmp / f"{src.name}.zip").read_bytes()


def make_settings(home: Path, *, bridge: bool = True, metrics_open: bool = False) -> Settings:
    env = {"CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN_TOKEN}
    if bridge:
        env["CHANNEL_RUNTIME_BRIDGE_TOKEN"] = BRIDGE_TOKEN
    if metrics_open:
        env["CHANNEL_RUNTIME_METRICS_OPEN"] = "1"
    return Settings.load(env, home=home)


def make_app(home: Path, *, with_runtime: bool = False, **settings_kw: Any) -> Starlette:
    host = PluginHost(home)
    runtime = None
    if with_runtime:
        from channel_runtime.runtime import ChannelRuntime

        runtime = ChannelRuntime(store=f"sqlite:///{home / 'state.db'}", plugin_host=host, home=home)
    return create_app(host=host, runtime=runtime, settings=make_settings(home, **settings_kw))


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """Run the ASGI lifespan of `app` in a task of its own (httpx's ASGITransport does not)."""
    to_app_send, to_app_receive = anyio.create_memory_object_stream[dict](10)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[dict](10)

    async def run() -> None:
        await app(
            {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, to_app_receive.receive, from_app_send.send
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        await to_app_send.send({"type": "lifespan.startup"})
        message = await from_app_receive.receive()
        assert message["type"] == "lifespan.startup.complete", message
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await to_app_send.send({"type": "lifespan.shutdown"})
                message = await from_app_receive.receive()
                assert message["type"] == "lifespan.shutdown.complete", message


def client(app: Any, token: str | None = ADMIN_TOKEN) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers, timeout=30.0
    )


@asynccontextmanager
async def running(home: Path, **kw: Any) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    app = make_app(home, **kw)
    async with lifespan(app), client(app) as http:
        yield app, http


def assert_error_shape(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert isinstance(error["code"], str) and error["code"].replace("_", "").isalnum(), error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], dict)
    return error
