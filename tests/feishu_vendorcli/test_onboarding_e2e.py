"""Onboarding end to end: create by QR scan (every device-flow answer), link (good and wrong secret),
the vendor installer; through the admin API, its SSE stream and the real plugin process."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from tests.feishu_vendorcli.fake_platform import Answer
from tests.feishu_vendorcli.stack import PLUGIN_ID, Stack, assert_no_secret, log_text, running_stack
from tests.support import eventually

pytestmark = pytest.mark.anyio

PENDING = Answer(400, {"error": "authorization_pending"})
SLOW_DOWN = Answer(400, {"error": "slow_down"})


def success(app_id: str, secret: str, brand: str | None = None) -> Answer:
    user_info: dict[str, Any] = {"open_id": "ou_owner"}
    if brand:
        user_info["tenant_brand"] = brand
    return Answer(200, {"client_id": app_id, "client_secret": secret, "user_info": user_info})


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


async def sse_frames(s: Stack, session_id: str, into: list[dict[str, Any]]) -> None:
    async with s.client.stream("GET", f"/api/connector-sessions/{session_id}/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            s.answers.append(line)
            if line.startswith("data: "):
                into.append(json.loads(line[6:]))


async def test_create_by_scan_with_every_waiting_answer(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = stack
    s.fake.poll_script = [PENDING, SLOW_DOWN, PENDING]  # then pending until the test lets it succeed
    session_id, connection_id = await s.start_session({"mode": "create"}, display_name="My bot")
    frames: list[dict[str, Any]] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(sse_frames, s, session_id, frames)
        await eventually(lambda: any(f["session"]["status"] == "qr_ready" for f in frames))
        qr = next(f["session"] for f in frames if f["session"]["status"] == "qr_ready")
        assert qr["qrCode"] == s.fake.begin_answer.body["verification_uri_complete"]
        assert qr["qrImage"].startswith("data:image/svg+xml")
        assert any("ABCD-EFGH" in line for line in qr["instructions"])
        await eventually(lambda: len(s.fake.registration_polls()) >= 4)  # slow_down did not stop the flow
        app_id, secret = s.fake.add_app("cli_created1")
        s.fake.poll_script.append(success(app_id, secret))
        await eventually(lambda: frames and frames[-1]["session"]["status"] == "connected")
    view = await s.session(session_id)
    assert view["session"]["accountId"] == "cli_created1" and view["session"]["displayName"] == "My bot"
    assert view["connection"]["status"] == "connected"
    intervals = [
        f["session"]["metadata"].get("pollIntervalSeconds") for f in frames if f["session"]["status"] == "qr_ready"
    ]
    assert max(i for i in intervals if i is not None) > min(i for i in intervals if i is not None)  # slow_down added
    statuses = [f["session"]["status"] for f in frames]
    assert statuses.index("qr_ready") < statuses.index("confirmed") < statuses.index("connected")
    # validated with the token endpoint before connected, and then served over the long connection
    assert any(c.body.get("app_id") == "cli_created1" for c in s.fake.issued_tokens())
    await eventually(lambda: s.fake.ws_connects >= 1, 30)
    await s.wait_served(connection_id)
    assert_no_secret(s, log_text(caplog))


@pytest.mark.parametrize(
    ("answer", "status", "message"),
    [
        (
            Answer(400, {"error": "access_denied", "error_description": "the user declined"}),
            "error",
            "the user declined",
        ),
        (Answer(400, {"error": "expired_token"}), "expired", "expired"),
    ],
)
async def test_create_ends_on_a_refusal_or_expiry(stack: Stack, answer: Answer, status: str, message: str) -> None:
    s = stack
    s.fake.poll_script = [PENDING, answer]
    session_id, _ = await s.start_session({"mode": "create"})
    view = await s.wait_session(session_id, status)
    assert message in view["session"]["error"]
    assert view["connection"]["status"] == "error" and view["session"].get("qrCode") is None


async def test_create_on_a_lark_tenant_switches_host_once(stack: Stack) -> None:
    s = stack
    app_id, secret = s.fake.add_app("cli_lark1")
    s.fake.poll_script = [Answer(400, {"error": "authorization_pending", "user_info": {"tenant_brand": "lark"}})]
    s.fake.lark_poll_script = [PENDING, success(app_id, secret, "lark")]
    session_id, connection_id = await s.start_session({"mode": "create"})
    view = await s.wait_session(session_id, "connected", "error")
    assert view["session"]["status"] == "connected", view
    assert view["session"]["metadata"]["domain"] == "lark"
    assert len(s.fake.registration_polls("feishu")) == 1 and len(s.fake.registration_polls("lark")) == 2
    assert view["connection"]["options"] == {"mode": "create"}


async def test_link_validates_credentials(stack: Stack) -> None:
    s = stack
    app_id, secret = s.fake.add_app("cli_linked1")
    session_id, connection_id = await s.start_session(
        {
            "mode": "link",
            "appId": app_id,
            "appSecret": secret,
            "domain": "feishu",
            "connection": "webhook",
            "verificationToken": "vt-1",
        }
    )
    view = await s.wait_session(session_id, "connected", "error")
    assert view["session"]["status"] == "connected", view
    assert view["session"]["displayName"] == s.fake.bot["app_name"]  # from the bot info
    assert view["connection"]["accountId"] == app_id
    assert view["connection"]["options"] == {
        "mode": "link",
        "appId": app_id,
        "domain": "feishu",
        "connection": "webhook",
    }
    token_calls = [c for c in s.fake.issued_tokens() if c.body.get("app_id") == app_id]
    assert token_calls and token_calls[0].body["app_secret"] == secret
    assert_no_secret(s)


async def test_link_with_a_wrong_secret_ends_in_error_with_the_platforms_message(stack: Stack) -> None:
    s = stack
    app_id, _ = s.fake.add_app("cli_linked2")
    session_id, connection_id = await s.start_session(
        {
            "mode": "link",
            "appId": app_id,
            "appSecret": "not-the-secret-000",
            "domain": "feishu",
            "connection": "websocket",
        }
    )
    view = await s.wait_session(session_id, "error", "connected")
    assert view["session"]["status"] == "error"
    assert "app secret invalid" in view["session"]["error"] and "10014" in view["session"]["error"]
    assert view["connection"]["status"] == "error"
    health = await s.host.client(PLUGIN_ID).health()
    assert connection_id not in (health.connections or {})
    assert "not-the-secret-000" not in s.seen_text()


async def test_link_a_webhook_without_key_or_token_is_refused(stack: Stack) -> None:
    s = stack
    app_id, secret = s.fake.add_app("cli_linked3")
    session_id, _ = await s.start_session(
        {"mode": "link", "appId": app_id, "appSecret": secret, "connection": "webhook"}
    )
    view = await s.wait_session(session_id, "error")
    assert "encryptKey or a verificationToken" in view["session"]["error"]


async def test_bad_options_are_refused_at_start(stack: Stack) -> None:
    s = stack
    r = await s.api("POST", "/api/connector-sessions", json={"kind": "feishu", "options": {"mode": "teleport"}})
    assert r.status_code >= 400 and "create, link or vendor_cli" in r.text
    r = await s.api(
        "POST", "/api/connector-sessions", json={"kind": "feishu", "options": {"mode": "link", "appId": "x"}}
    )
    assert r.status_code >= 400 and "appSecret" in r.text


async def test_cancel_stops_the_flow(stack: Stack) -> None:
    s = stack
    session_id, _ = await s.start_session({"mode": "create"})
    await s.wait_session(session_id, "qr_ready")
    r = await s.api("POST", f"/api/connector-sessions/{session_id}/cancel")
    assert r.status_code == 200
    polls = len(s.fake.registration_polls())
    await anyio.sleep(0.3)
    assert len(s.fake.registration_polls()) <= polls + 1  # at most one poll already in flight
    assert (await s.session(session_id))["session"]["status"] == "cancelled"


VENDOR_SCRIPT = """
import json, os, sys, time

def wait_for(name):
    deadline = time.monotonic() + 20
    while not os.path.exists(name) and time.monotonic() < deadline:
        time.sleep(0.02)

print("Installing the Feishu bot...", flush=True)
print("Open https://accounts.example.test/verify?user_code=VEND-0001 to continue", flush=True)
wait_for("go-scanned")
print(json.dumps({"status": "scanned", "message": "Scanned: confirm on the phone"}), flush=True)
wait_for("go-done")
json.dump({"appId": sys.argv[1], "appSecret": sys.argv[2], "domain": "feishu"}, open("feishu-app.json", "w"))
print("done", flush=True)
"""


async def test_vendor_cli_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the vendor CLI must be visible inside the plugin's sandbox: the plugin's own data folder is
    # (a real one is installed system-wide; /tmp is private to the sandbox)
    script = tmp_path / "home" / "plugin-data" / PLUGIN_ID / "vendor_install.py"
    # the plugin sees the manifest's env names that the host has set
    monkeypatch.setenv(
        "FEISHU_VENDOR_INSTALL_COMMAND", json.dumps([sys.executable, str(script), "cli_vendor1", "vendor-secret-77"])
    )
    async with running_stack(tmp_path) as s:
        assert script.parent == s.home / "plugin-data" / PLUGIN_ID
        script.write_text(VENDOR_SCRIPT)
        s.fake.add_app("cli_vendor1", "vendor-secret-77")
        session_id, connection_id = await s.start_session({"mode": "vendor_cli"})
        frames: list[dict[str, Any]] = []
        state_dir = s.home / "plugin-data" / PLUGIN_ID
        async with anyio.create_task_group() as tg:
            tg.start_soon(sse_frames, s, session_id, frames)
            await eventually(lambda: frames and frames[-1]["session"]["status"] == "qr_ready")
            assert frames[-1]["session"]["qrCode"] == "https://accounts.example.test/verify?user_code=VEND-0001"
            (state_dir / "go-scanned").touch()
            await eventually(lambda: frames[-1]["session"]["status"] == "scanned")
            assert frames[-1]["session"]["instructions"] == ["Scanned: confirm on the phone"]
            (state_dir / "go-done").touch()
            await eventually(lambda: frames[-1]["session"]["status"] in ("connected", "error"))
        statuses = [f["session"]["status"] for f in frames]
        assert statuses[-1] == "connected", frames[-1]
        assert "installing" in statuses
        assert frames[-1]["session"]["accountId"] == "cli_vendor1"
        assert not os.path.exists(s.home / "plugin-data" / PLUGIN_ID / "feishu-app.json")  # read, then removed
        assert_no_secret(s)


async def test_vendor_cli_mode_not_configured(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    s = stack
    session_id, _ = await s.start_session({"mode": "vendor_cli"})
    view = await s.wait_session(session_id, "error")
    assert "FEISHU_VENDOR_INSTALL_COMMAND" in view["session"]["error"]


async def test_the_connect_form_is_described_with_secrets_write_only(stack: Stack) -> None:
    import jsonschema

    r = await stack.api("GET", "/api/connectors")
    [feishu] = [c for c in r.json() if c["kind"] == "feishu"]
    schema = feishu["optionsSchema"]
    properties = schema["properties"]
    assert {name for name, field in properties.items() if field.get("writeOnly")} == {
        "appSecret",
        "encryptKey",
        "verificationToken",
    }
    assert properties["mode"]["enum"] == ["create", "link", "vendor_cli"]
    assert properties["connection"]["enum"] == ["websocket", "webhook"]
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid({"mode": "create"})
    assert validator.is_valid({"mode": "link", "appId": "cli_1", "appSecret": "s", "domain": "https://open.example"})
    assert not validator.is_valid({"mode": "link", "appId": "cli_1"})  # link needs the secret
    assert not validator.is_valid({"mode": "link", "appId": "cli_1", "appSecret": "s", "domain": "elsewhere"})
