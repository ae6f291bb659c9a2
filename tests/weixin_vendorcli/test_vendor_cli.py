"""`vendor_cli` mode end to end: the real plugin under the real host runs a fake vendor command.

The fake vendor command (`fake_vendor.py`) reads the plugin's JSON request on
stdin, makes the iLink call against the fake platform and writes the answer to
the answer file, as a real vendor wrapper would; its requests are told apart by
their `base_info.channel_version` ("fake-vendor").
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

from tests.support import REPO, eventually
from tests.weixin_vendorcli.fake_ilink import FakeIlink, running_fake
from tests.weixin_vendorcli.stack import PLUGIN_ID, all_log_text, fast_config, weixin_stack

pytestmark = pytest.mark.anyio

FAKE_VENDOR = str(REPO / "tests" / "weixin_vendorcli" / "fake_vendor.py")
TOKEN = "vendorTOKENabcdefghijklmnop1234567890"


def vendor_env(monkeypatch: pytest.MonkeyPatch, *, receive_fails: bool = False) -> None:
    for name in ("LOGIN", "RECEIVE", "SEND", "LOGOUT"):
        argv = [sys.executable, FAKE_VENDOR, "{op}"]
        if name == "RECEIVE" and receive_fails:
            argv.append("--fail")
        monkeypatch.setenv(f"WEIXIN_VENDOR_{name}_COMMAND", json.dumps(argv))


async def test_login_receive_send_logout_through_vendor_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    vendor_env(monkeypatch)
    async with running_fake(FakeIlink(hold=0.2)) as (fake, [server]):
        config = fast_config(server.url, mode="vendor_cli", qrPollIntervalMs=100)
        async with weixin_stack(tmp_path / "home", config) as s:
            connection_id, _ = await s.login(fake, TOKEN, "v@im.bot")
            message = fake.message("alice@im.wechat", "via vendor")
            fake.deliver(TOKEN, message)
            await eventually(lambda: fake.sent_to("alice@im.wechat"), 20)
            sent = fake.sent_to("alice@im.wechat")[0]["msg"]
            assert sent["item_list"][0]["text_item"]["text"] == "echo: via vendor"
            assert sent["context_token"] == message["context_token"]
            assert [m.content for m in s.seen] == ["via vendor"]
            await s.post(f"/api/connections/{connection_id}/logout", None, 200)
            await eventually(lambda: fake.of("notifystop"))
            logs = await s.get(f"/api/plugins/{PLUGIN_ID}/logs?tail=1000")
        # every bot call went through the vendor command, none straight from the plugin
        for path in ("getupdates", "sendmessage"):
            calls = fake.of(path)
            assert calls and all(r.body["base_info"] == {"channel_version": "fake-vendor"} for r in calls)
        assert fake.of("get_bot_qrcode") and fake.of("get_qrcode_status")
        assert not fake.of("notifystart")  # the contract has no start command
        # the vendor printed the token on stdout and stderr: redacted before anyone saw it
        assert TOKEN not in "\n".join([*s.bodies, all_log_text(caplog), str(logs)])
        assert not list((tmp_path / "home" / "plugin-data" / PLUGIN_ID / "vendor-answers").iterdir())


async def test_a_failing_vendor_command_is_retried_and_never_kills_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vendor_env(monkeypatch, receive_fails=True)
    async with running_fake(FakeIlink(hold=0.2)) as (fake, [server]):
        config = fast_config(server.url, mode="vendor_cli", backoffMs=100)
        async with weixin_stack(tmp_path / "home", config) as s:
            session_id, connection_id = await s.start_login()
            await s.session_status(session_id, "qr_ready")
            fake.push_status("confirmed", bot_token=TOKEN, ilink_bot_id="v@im.bot")
            await s.connection_status(connection_id, "connected")
            pid = s.plugin_pid()

            async def retried() -> bool:
                lines = await s.get(f"/api/plugins/{PLUGIN_ID}/logs?tail=1000")
                return sum("failed with exit code 3" in line for line in lines) >= 4

            await eventually(retried, 20)
            info = await s.get(f"/api/plugins/{PLUGIN_ID}")
            assert info["state"] == "running" and info["restarts"] == 0 and s.plugin_pid() == pid
            assert (await s.connection(connection_id))["status"] == "connected"
            assert fake.of("getupdates") == []


async def test_vendor_mode_without_commands_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("LOGIN", "RECEIVE", "SEND", "LOGOUT"):
        monkeypatch.delenv(f"WEIXIN_VENDOR_{name}_COMMAND", raising=False)
    async with running_fake(FakeIlink(hold=0.2)) as (fake, [server]):
        async with weixin_stack(tmp_path / "home", fast_config(server.url, mode="vendor_cli")) as s:
            response = await s.post("/api/connector-sessions", {"kind": "weixin"})
            assert response.status_code == 502
            assert "WEIXIN_VENDOR_LOGIN_COMMAND is not set" in response.json()["error"]["message"]
        assert fake.requests == []
