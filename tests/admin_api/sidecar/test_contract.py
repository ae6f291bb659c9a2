"""The seed's external-connector contract (SPEC 11), route by route, through the real app and echo plugin."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.support import eventually
from tests.support.admin import ADMIN_TOKEN, assert_error_shape
from tests.support.sidecar import (
    APP_BRIDGE_TOKEN,
    CONNECTOR_TOKEN,
    SESSION_BODY,
    SESSION_FIELDS,
    RecordingBridge,
    running_sidecar,
    send_body,
)

pytestmark = pytest.mark.anyio

CONNECTOR_CALLS = [
    ("GET", "/health"),
    ("GET", "/connectors"),
    ("POST", "/connector-sessions"),
    ("GET", "/connector-sessions/cs_x"),
    ("POST", "/connector-sessions/cs_x/cancel"),
    ("POST", "/connections/conn_app_0001/logout"),
    ("POST", "/send"),
]


def sent_lines(home: Path) -> list[dict]:
    path = home / "plugin-data" / "echo" / "sent.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def connect(http) -> dict:
    answer = await http.post("/connector-sessions", json=SESSION_BODY)
    assert answer.status_code == 200, answer.text
    return answer.json()


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize("token", [None, "wrong-token", CONNECTOR_TOKEN + "x", ADMIN_TOKEN, "", "Basic abc"])
async def test_every_connector_route_refuses_a_missing_or_wrong_token(tmp_path: Path, token: str | None) -> None:
    async with running_sidecar(tmp_path / "home") as (_, http):
        for method, path in CONNECTOR_CALLS:
            headers = {"Authorization": token if token and token.startswith("Basic") else f"Bearer {token}"}
            answer = await http.request(
                method, path, json={}, headers=headers if token is not None else {"Authorization": ""}
            )
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert assert_error_shape(answer)["code"] == "unauthorized"


async def test_with_no_connector_token_configured_every_request_is_refused(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home", token=None) as (_, http):
        for method, path in CONNECTOR_CALLS:
            for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
                answer = await http.request(method, path, json={}, headers=headers)
                assert answer.status_code == 401, (method, path)
                assert "CONNECTOR_API_TOKEN is not set" in assert_error_shape(answer)["message"]


async def test_the_connector_token_opens_no_admin_route_and_public_routes_stay_public(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (_, http):
        assert (await http.get("/api/plugins")).status_code == 401  # the connector token is not the admin token
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        plugins = await http.get("/api/plugins", headers=admin)
        assert plugins.status_code == 200 and [p["id"] for p in plugins.json()] == ["echo"]
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=admin)).status_code == 200
        for path in ("/healthz", "/admin"):
            assert (await http.get(path, headers={"Authorization": ""})).status_code == 200, path


# ---------------------------------------------------------------- health and connectors


async def test_health_lists_the_providers_and_the_forwarder(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (_, http):
        body = (await http.get("/health")).json()
    assert body["status"] == "ok"
    [provider] = body["providers"]
    assert provider["providerId"] == "echo" and provider["available"] and provider["kinds"] == ["echo"]
    assert body["forwarder"] == {
        "configured": False,
        "backlog": 0,
        "dead": 0,
        "delivered": 0,
        "failures": 0,
        "failing": False,
        "lastError": None,
        "lastErrorAt": None,
        "lastDeliveredAt": None,
    }


async def test_connectors_answer_exactly_the_seed_fields(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (_, http):
        answer = await http.get("/connectors")
    assert answer.status_code == 200
    assert answer.json() == [
        {
            "kind": "echo",
            "displayName": "Echo",
            "authType": "credentials",
            "providerId": "echo",
            "capabilities": ["receive_text", "send_text", "direct_messages"],
        }
    ]


# ---------------------------------------------------------------- sessions


async def test_a_session_with_the_seed_body_connects_the_applications_connection(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (sidecar, http):
        view = await connect(http)
        assert set(view) == SESSION_FIELDS
        assert view["kind"] == "echo" and view["status"] == "connected" and view["sessionId"].startswith("cs_")
        assert view["instructions"] == [] and view["metadata"] == {} and view["qrCode"] is None
        assert view["accountId"] == "echo_conn_app_0001" and view["displayName"] == "Support bot"
        again = await http.get(f"/connector-sessions/{view['sessionId']}")
        assert again.status_code == 200 and again.json() == view
        # the connection carries the application's ids, and its credentials are stored encrypted
        record = await sidecar.store.connections.get("conn_app_0001")
        assert record is not None and record.status == "connected" and record.channel_id == "chan_app_0001"
        assert record.has_credentials
        token = (await sidecar.store.connections.get_credentials("conn_app_0001"))["token"]
        raw = (tmp_path / "home" / "state.db").read_bytes()
        assert token.encode() not in raw
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        listed = (await http.get("/api/connections/conn_app_0001", headers=admin)).json()
        assert listed["status"] == "connected" and token not in json.dumps(listed)


async def test_a_second_session_for_the_same_connection_logs_it_in_again(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (sidecar, http):
        first = await connect(http)
        second = await connect(http)
        assert second["sessionId"] != first["sessionId"] and second["status"] == "connected"
        assert len(await sidecar.store.connections.list()) == 1
        other_kind = await http.post("/connector-sessions", json={**SESSION_BODY, "kind": "nope"})
        assert other_kind.status_code == 404 and assert_error_shape(other_kind)["code"] == "unknown_kind"


async def test_unknown_sessions_and_connections_are_404(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (_, http):
        for method, path in (
            ("GET", "/connector-sessions/cs_nope"),
            ("POST", "/connector-sessions/cs_nope/cancel"),
            ("POST", "/connections/conn_nope/logout"),
        ):
            answer = await http.request(method, path)
            assert answer.status_code == 404, (method, path)
            assert assert_error_shape(answer)["code"] in ("session_not_found", "connection_not_found")
        unknown = await http.post("/send", json=send_body("r1", connection_id="conn_nope"))
        assert unknown.status_code == 404 and assert_error_shape(unknown)["code"] == "unknown_connection"


async def test_cancel_of_a_finished_session_is_a_conflict(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (_, http):
        view = await connect(http)
        answer = await http.post(f"/connector-sessions/{view['sessionId']}/cancel")
        assert answer.status_code == 409 and assert_error_shape(answer)["code"] == "session_finished"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (json.dumps({**SESSION_BODY, "kind": ""}).encode(), 422, "invalid_field"),
        (json.dumps({k: v for k, v in SESSION_BODY.items() if k != "connectionId"}).encode(), 422, "invalid_field"),
        (json.dumps({**SESSION_BODY, "connectionId": "a/b"}).encode(), 422, "invalid_field"),
        (json.dumps({**SESSION_BODY, "connectionId": "a:b"}).encode(), 422, "invalid_field"),
        (json.dumps({**SESSION_BODY, "connectionId": 7}).encode(), 422, "invalid_field"),
        (json.dumps({**SESSION_BODY, "options": [1]}).encode(), 422, "invalid_field"),
        (json.dumps({**SESSION_BODY, "callbackBaseUrl": "ftp://x"}).encode(), 422, "invalid_field"),
        (json.dumps({**SESSION_BODY, "options": {"pad": "x" * (1024 * 1024)}}).encode(), 413, "payload_too_large"),
    ],
)
async def test_malformed_session_bodies_are_refused_clearly(tmp_path: Path, body: bytes, status: int, code: str):
    async with running_sidecar(tmp_path / "home") as (sidecar, http):
        answer = await http.post("/connector-sessions", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == status, answer.text
        assert assert_error_shape(answer)["code"] == code
        assert await sidecar.store.connections.list() == []


async def test_logout_revokes_and_sends_to_a_revoked_connection_are_404(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (sidecar, http):
        await connect(http)
        answer = await http.post("/connections/conn_app_0001/logout")
        assert answer.status_code == 200
        assert answer.json() == {"connectionId": "conn_app_0001", "status": "revoked"}
        record = await sidecar.store.connections.get("conn_app_0001")
        assert record is not None and record.status == "revoked" and not record.has_credentials
        refused = await http.post("/send", json=send_body("r-after-logout"))
        assert refused.status_code == 404
        assert sent_lines(tmp_path / "home") == []


# ---------------------------------------------------------------- send and its dedupe


async def test_send_delivers_once_and_a_duplicate_answers_the_original_result(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (_, http):
        await connect(http)
        first = await http.post("/send", json=send_body("req-1"))
        assert first.status_code == 200, first.text
        assert first.json()["duplicate"] is False and first.json()["providerMessageId"].startswith("echo_")
        again = await http.post("/send", json=send_body("req-1"))
        assert again.status_code == 200
        assert again.json() == {**first.json(), "duplicate": True}
        other = await http.post("/send", json=send_body("req-2"))
        assert other.json()["providerMessageId"] != first.json()["providerMessageId"]
    assert [line["request"]["requestId"] for line in sent_lines(tmp_path / "home")] == ["req-1", "req-2"]


async def test_a_send_in_progress_answers_409_then_a_stale_one_is_sent_again(tmp_path: Path) -> None:
    from plugin_host.clock import FakeClock

    clock = FakeClock(start=1_000_000.0)
    async with running_sidecar(tmp_path / "home", clock=clock) as (sidecar, http):
        await connect(http)
        # a sidecar that died mid-send left its record processing
        begun = await sidecar.store.send_dedupe.begin("conn_app_0001", "req-crashed")
        assert begun.outcome == "new"
        clock.advance(59)
        busy = await http.post("/send", json=send_body("req-crashed"))
        assert busy.status_code == 409
        assert busy.json() == {"retryAfterSeconds": 5} and busy.headers["retry-after"] == "5"
        assert sent_lines(tmp_path / "home") == []
        clock.advance(1)  # 60 s without an update: stale, sent again
        stale = await http.post("/send", json=send_body("req-crashed"))
        assert stale.status_code == 200 and stale.json()["duplicate"] is False
        record = await sidecar.store.send_dedupe.begin("conn_app_0001", "req-crashed")
        assert record.outcome == "duplicate" and record.record.delivery_attempts == 2
    assert [line["request"]["requestId"] for line in sent_lines(tmp_path / "home")] == ["req-crashed"]


async def test_a_failed_send_is_sent_again_on_the_next_delivery(tmp_path: Path) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with running_sidecar(tmp_path / "home") as (sidecar, http):
        await connect(http)
        assert (await http.post("/api/plugins/echo/disable", headers=admin)).status_code == 200
        down = await http.post("/send", json=send_body("req-f"))
        assert down.status_code == 503, down.text
        error = assert_error_shape(down)
        assert error["details"]["rpcCode"] == -32002 and down.headers["retry-after"] == "1"
        assert (await http.post("/api/plugins/echo/enable", headers=admin)).status_code == 200
        await eventually(lambda: sidecar.plugin_host.supervisor("echo") is not None)
        await eventually(lambda: sidecar.plugin_host.supervisor("echo").state == "running")
        up = await http.post("/send", json=send_body("req-f"))
        assert up.status_code == 200 and up.json()["duplicate"] is False, up.text
    assert [line["request"]["requestId"] for line in sent_lines(tmp_path / "home")] == ["req-f"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "invalid_json"),
        (json.dumps({**send_body("x"), "requestId": ""}).encode(), 422, "invalid_field"),
        (json.dumps({k: v for k, v in send_body("x").items() if k != "requestId"}).encode(), 422, "invalid_request"),
        (json.dumps({**send_body("x"), "target": "user_1"}).encode(), 422, "invalid_request"),
        (json.dumps([send_body("x")]).encode(), 422, "invalid_request"),
        (json.dumps({**send_body("x"), "content": "x" * (1024 * 1024)}).encode(), 413, "payload_too_large"),
    ],
)
async def test_malformed_send_bodies_are_refused_clearly(tmp_path: Path, body: bytes, status: int, code: str):
    async with running_sidecar(tmp_path / "home") as (_, http):
        await connect(http)
        answer = await http.post("/send", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == status, answer.text
        assert assert_error_shape(answer)["code"] == code
    assert sent_lines(tmp_path / "home") == []


# ---------------------------------------------------------------- inbound forwarding


async def test_plugin_and_webhook_events_are_forwarded_with_the_bridge_token(tmp_path: Path) -> None:
    async with RecordingBridge().serving() as bridge:
        async with running_sidecar(tmp_path / "home", bridge=bridge.base_url) as (_, http):
            await connect(http)
            # echoBack: the plugin sends the text back as an event.inbound
            assert (await http.post("/send", json=send_body("req-echo", echoBack=True))).status_code == 200
            hook = await http.post(
                "/webhooks/conn_app_0001",
                json={"peerId": "user_2", "text": "from the platform", "messageId": "pm_1"},
                headers={"Authorization": ""},
            )
            assert hook.status_code == 200 and hook.json() == {"ok": True}
            await eventually(lambda: len(bridge.received) == 2)
            health = (await http.get("/health")).json()["forwarder"]
    assert {auth for auth, _ in bridge.received} == {f"Bearer {APP_BRIDGE_TOKEN}"}
    by_peer = {event["peerId"]: event for event in bridge.events()}
    assert by_peer["user_1"]["content"] == "hello req-echo" and by_peer["user_1"]["deliveryAttempt"] == 1
    assert by_peer["user_2"]["eventId"] == "evt_pm_1" and by_peer["user_2"]["content"] == "from the platform"
    for event in bridge.events():
        assert event["connectionId"] == "conn_app_0001" and event["channelId"] == "chan_app_0001"
    assert health["delivered"] == 2 and health["backlog"] == 0 and health["configured"]


async def test_webhooks_of_unknown_connections_are_404(tmp_path: Path) -> None:
    async with running_sidecar(tmp_path / "home") as (_, http):
        answer = await http.post("/webhooks/conn_nope", json={}, headers={"Authorization": ""})
        assert answer.status_code == 404 and assert_error_shape(answer)["code"] == "unknown_connection"


async def test_no_secret_in_any_answer_or_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with RecordingBridge().serving() as bridge:
        async with running_sidecar(tmp_path / "home", bridge=bridge.base_url) as (sidecar, http):
            answers = [await connect(http)]
            answers.append((await http.post("/send", json=send_body("s1", echoBack=True))).json())
            await eventually(lambda: bridge.received)
            credentials = await sidecar.store.connections.get_credentials("conn_app_0001")
            for method, path in CONNECTOR_CALLS:  # the logout among them last
                answers.append((await http.request(method, path, json={})).json())
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            for path in ("/api/plugins", "/api/connections", "/api/plugins/echo/logs", "/health"):
                answers.append((await http.get(path, headers=admin)).json())
            metrics = (await http.get("/metrics", headers=admin)).text
    text = json.dumps(answers) + metrics + caplog.text
    for secret in (CONNECTOR_TOKEN, APP_BRIDGE_TOKEN, ADMIN_TOKEN, *credentials.values()):
        assert secret not in text
    assert "channel_runtime_sidecar_forwarded_total 1.0" in metrics


async def test_the_command_timeout_bounds_the_plugin_call_of_a_send(tmp_path: Path) -> None:
    """CONNECTOR_COMMAND_TIMEOUT_SECONDS: a plugin that does not answer in time is a 504.

    The plugin may still have sent it, so the next try within 60 s is told to wait (409), and the
    send goes again only once it is stale (SPEC 11's dedupe rules).
    """
    import io

    from plugin_host.clock import FakeClock
    from plugin_host.package import pack_directory
    from tests.support import REPO

    clock = FakeClock()
    async with running_sidecar(tmp_path / "home", command_timeout=0.5, clock=clock) as (sidecar, http):
        host = sidecar.plugin_host
        archive = pack_directory(REPO / "tests" / "plugins" / "sidecho", tmp_path / "sidecho.zip")
        await host.install(io.BytesIO(archive.read_bytes()))
        await host.enable("sidecho")
        await eventually(lambda: host.supervisor("sidecho") is not None)
        await eventually(lambda: host.supervisor("sidecho").state == "running")
        started = await http.post("/connector-sessions", json={**SESSION_BODY, "kind": "sidecho"})
        assert started.status_code == 200, started.text
        body = {**send_body("req-slow"), "kind": "sidecho"}
        slow = await http.post("/send", json={**body, "metadata": {"hang": True}})
        assert slow.status_code == 504, slow.text
        assert assert_error_shape(slow)["details"]["rpcCode"] == -32001
        busy = await http.post("/send", json=body)
        assert busy.status_code == 409 and busy.json() == {"retryAfterSeconds": 5}, busy.text
        clock.advance(60)
        again = await http.post("/send", json=body)  # stale: sent again
        assert again.status_code == 200 and again.json()["duplicate"] is False, again.text
        assert host.supervisor("sidecho").snapshot()["counters"]["timeouts"] == 1
