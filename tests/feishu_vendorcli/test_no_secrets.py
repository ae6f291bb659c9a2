"""No app secret, encrypt key, verification token or tenant token in any API answer, SSE frame or log line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import anyio
import pytest

from tests.feishu_vendorcli import samples
from tests.feishu_vendorcli.fake_platform import Answer
from tests.feishu_vendorcli.platform_requests import platform_request
from tests.feishu_vendorcli.stack import ENCRYPT_KEY, PLUGIN_ID, assert_no_secret, log_text, running_stack
from tests.feishu_vendorcli.test_onboarding_e2e import sse_frames
from tests.support import eventually

pytestmark = pytest.mark.anyio


async def test_no_secret_anywhere(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_stack(tmp_path) as s:
        # a linked webhook app that receives and answers, with a refused request and a failed send on the way
        connection_id = await s.link()
        body, headers = platform_request(
            samples.message_event(content={"text": "secret-free"}), encrypt_key=ENCRYPT_KEY
        )
        assert (await s.webhook(connection_id, body, headers)).status_code == 200
        headers["X-Lark-Signature"] = "f" * 64
        assert (await s.webhook(connection_id, body, headers)).status_code == 401
        await eventually(lambda: s.fake.messages)
        s.fake.send_script = [Answer(400, {"code": 230002, "msg": "Bot is not in the chat"})]
        body, headers = platform_request(
            samples.message_event(event_id="e2", message_id="om_2"), encrypt_key=ENCRYPT_KEY
        )
        await s.webhook(connection_id, body, headers)
        # a created app, followed on the SSE stream
        app_id, secret = s.fake.add_app("cli_created9")
        s.fake.poll_script = [Answer(200, {"client_id": app_id, "client_secret": secret, "user_info": {}})]
        session_id, created = await s.start_session({"mode": "create"})
        frames: list[dict] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(sse_frames, s, session_id, frames)
            await eventually(lambda: frames and frames[-1]["session"]["status"] == "connected")
        # a wrong secret, whose error names the platform's message
        wrong = await s.start_session({"mode": "link", "appId": app_id, "appSecret": "wrong-secret-123456"})
        await s.wait_session(wrong[0], "error")
        await s.wait_served(created)
        for path in (
            "/api/connections",
            f"/api/connections/{connection_id}",
            f"/api/connections/{created}",
            "/api/connectors",
            "/api/plugins",
            f"/api/plugins/{PLUGIN_ID}",
            f"/api/plugins/{PLUGIN_ID}/logs?tail=1000",
            "/api/channels",
            "/api/deliveries?status=failed",
            "/metrics",
            f"/api/connector-sessions/{session_id}",
        ):
            r = await s.api("GET", path)
            assert r.status_code == 200, (path, r.text)
        logs = (await s.api("GET", f"/api/plugins/{PLUGIN_ID}/logs?tail=1000")).text
        assert "webhook refused" in logs  # the log is there, and is clean
        assert len(s.fake.tokens) >= 2
        assert_no_secret(s, log_text(caplog))
        assert "wrong-secret-123456" not in s.seen_text() + log_text(caplog)


VENDOR_TALKING_SECRETS = """
import json
print(json.dumps({"status": "installing", "message": "x" * 287 + " appSecret=SUdontshowme42"}), flush=True)
"""


async def test_vendor_progress_is_masked_before_it_is_cut(tmp_path: Path) -> None:
    """A secret named at the 300-character cut: masked whole, never left half-shown (the plugin's own output)."""
    from plugin_host.protocol import SessionStartParams
    from plugin_host.sdk import ConnectorSessionView
    from plugin_host.sdk.testing import PluginHarness
    from tests.support import REPO

    script = tmp_path / "vendor.py"
    script.write_text(VENDOR_TALKING_SECRETS)
    (tmp_path / "state").mkdir()
    env = {"FEISHU_VENDOR_INSTALL_COMMAND": f'["{sys.executable}", "{script}"]'}
    async with PluginHarness.subprocess(REPO / "plugins" / PLUGIN_ID, state_dir=tmp_path / "state", env=env) as h:
        params = SessionStartParams("cs_v", "feishu", "conn_v", "ch_v", "", {"mode": "vendor_cli"})
        await h.call("session.start", params, result_type=ConnectorSessionView)
        update = await h.wait_for_notification(
            "session.update",
            lambda p: p["status"] == "installing" and p["instructions"] and "x" * 50 in p["instructions"][0],
        )
        await h.wait_for_notification("session.update", lambda p: p["status"] == "error")
    shown = update["instructions"][0]
    assert len(shown) <= 300 and "SU" not in shown.split("appSecret=")[-1]
