"""serve onboarding through a remote sidecar (SPEC 11's application side): the sidecar app in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from channel_runtime.remote import REMOTE_PROVIDER, SidecarClient
from tests.support import free_port
from tests.support.admin import assert_error_shape, lifespan, make_app
from tests.support.admin import client as admin_client
from tests.support.sidecar import CONNECTOR_TOKEN, running_sidecar

pytestmark = pytest.mark.anyio


async def test_serve_onboards_a_kind_it_lacks_through_the_sidecar_and_logs_it_out(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "sidecar") as (sidecar, side_http):
        serve = make_app(tmp_path / "serve", with_runtime=True)
        remote = SidecarClient("http://sidecar", CONNECTOR_TOKEN, transport=side_http._transport)
        serve.state.runtime.connections.remote = remote
        async with lifespan(serve), admin_client(serve) as http:
            started = await http.post("/api/connector-sessions", json={"kind": "echo", "displayName": "Far"})
            assert started.status_code == 201, started.text
            body = started.json()
            connection_id = body["connection"]["connectionId"]
            assert body["session"]["status"] == "connected" and body["connection"]["pluginId"] == REMOTE_PROVIDER
            # one session id on both sides; the sidecar's connection carries serve's ids
            record = await sidecar.store.connections.get(connection_id)
            assert record is not None and record.status == "connected" and record.channel_id == connection_id
            assert (await http.get(f"/api/connector-sessions/{body['session']['sessionId']}")).status_code == 200
            [channel] = [c for c in (await http.get("/api/channels")).json() if c["channelId"] == connection_id]
            assert channel["kind"] == "external_connector" and channel["state"] == "running"

            unknown = await http.post("/api/connector-sessions", json={"kind": "nope"})
            assert unknown.status_code == 404 and assert_error_shape(unknown)["code"] == "unknown_kind"

            out = await http.post(f"/api/connections/{connection_id}/logout")
            assert out.status_code == 200 and out.json()["status"] == "revoked"
            assert (await sidecar.store.connections.get(connection_id)).status == "revoked"  # type: ignore[union-attr]


async def test_an_unreachable_sidecar_is_a_clear_503_and_the_connection_records_it(tmp_path: Path) -> None:
    serve = make_app(tmp_path / "serve", with_runtime=True)
    serve.state.runtime.connections.remote = SidecarClient(f"http://127.0.0.1:{free_port()}", CONNECTOR_TOKEN)
    async with lifespan(serve), admin_client(serve) as http:
        answer = await http.post("/api/connector-sessions", json={"kind": "weixin"})
        assert answer.status_code == 503
        error = assert_error_shape(answer)
        assert error["code"] == "sidecar_unavailable" and CONNECTOR_TOKEN not in answer.text
        [connection] = (await http.get("/api/connections")).json()
        assert connection["status"] == "error" and "could not be reached" in connection["error"]


async def test_a_remote_session_moves_on_in_serve_without_anyone_asking(tmp_path: Path) -> None:
    """The sidecar's session progresses (the phone scans); serve follows it on its own, so an
    admin who closed the page, or an SSE stream, sees `scanned` without a GET."""
    import io

    from plugin_host.package import pack_directory
    from tests.support import REPO, eventually

    async with running_sidecar(tmp_path / "sidecar") as (sidecar, side_http):
        host = sidecar.plugin_host
        archive = pack_directory(REPO / "tests" / "plugins" / "qrdemo", tmp_path / "qrdemo.zip")
        await host.install(io.BytesIO(archive.read_bytes()))
        await host.enable("qrdemo")
        await eventually(lambda: host.supervisor("qrdemo") is not None and host.supervisor("qrdemo").state == "running")
        serve = make_app(tmp_path / "serve", with_runtime=True)
        serve.state.runtime.connections.remote = SidecarClient(
            "http://sidecar", CONNECTOR_TOKEN, transport=side_http._transport
        )
        async with lifespan(serve), admin_client(serve) as http:
            started = (await http.post("/api/connector-sessions", json={"kind": "qrdemo"})).json()
            session_id, connection_id = started["session"]["sessionId"], started["connection"]["connectionId"]
            assert started["session"]["status"] == "qr_ready"
            scanned = await side_http.post(f"/webhooks/{connection_id}", json={"action": "scan"})
            assert scanned.status_code == 200, scanned.text
            store = serve.state.runtime.store

            async def followed() -> bool:
                session = await store.sessions.get(session_id)
                return session is not None and session.status == "scanned"

            await eventually(followed, timeout=20)
