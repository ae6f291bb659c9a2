"""The plugin as a process: `plugin check`, and its raw stderr never holding the bot token.

The host redacts a plugin's stderr before anyone sees it, so the end-to-end
tests cannot tell whether the plugin itself printed a token. Here the plugin
runs under the SDK's harness (host state in memory), which keeps stderr as the
plugin wrote it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import msgspec
import pytest
from weixin_vendorcli.accounts import CONTEXT_BUCKETS, CONTEXT_PREFIX

from plugin_host.errors import INTERNAL_ERROR, SESSION_EXPIRED, RpcError
from plugin_host.protocol import (
    ConnectionInfo,
    ConnectorSessionView,
    SendRequest,
    SendResult,
    SessionStartParams,
    Target,
)
from plugin_host.sdk.buckets import bucket_key
from plugin_host.sdk.testing import PluginHarness
from tests.support import REPO, eventually, serve_command
from tests.weixin_vendorcli.fake_ilink import FakeIlink, Raw, running_fake
from tests.weixin_vendorcli.stack import PLUGIN_DIR, fast_config

pytestmark = pytest.mark.anyio

TOKEN = "rawTOKENabcdefghijklmnopqrstuv0123456789"


def test_plugin_check_passes() -> None:
    result = subprocess.run(
        [*serve_command(), "plugin", "check", str(PLUGIN_DIR)], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: the plugin conforms to protocol v1" in result.stdout
    assert "FAIL" not in result.stdout


async def test_the_plugins_own_stderr_never_holds_the_token(tmp_path: Path) -> None:
    async with running_fake(FakeIlink(hold=0.1)) as (fake, [server]):
        config = fast_config(server.url, backoffMs=100)
        (tmp_path / "state").mkdir()
        async with PluginHarness.subprocess(PLUGIN_DIR, config=config, state_dir=tmp_path / "state") as h:
            start = SessionStartParams("cs_1", "weixin", "conn_1", "ch_1", "", {})
            view = await h.call("session.start", start, result_type=ConnectorSessionView)
            assert view.status == "qr_ready"
            fake.push_status("confirmed", bot_token=TOKEN, ilink_bot_id="raw@im.bot", baseurl=server.url)
            update = await h.wait_for_notification("session.update", lambda p: p["status"] == "connected")
            assert update["credentials"]["botToken"] == TOKEN  # the one place it goes: to the host, to be encrypted
            credentials = update["credentials"]
            info = ConnectionInfo("conn_1", "ch_1", "weixin", "raw@im.bot", "Raw", {}, credentials)
            await h.call("connection.resume", info)
            fake.deliver(TOKEN, fake.message("alice@im.wechat", "hi"))
            events = await h.wait_for_inbound(1)
            assert events[0].content == "hi"
            bucket = h.state.value(
                bucket_key(CONTEXT_PREFIX, "alice@im.wechat", CONTEXT_BUCKETS), connection_id="conn_1"
            )
            assert bucket["alice@im.wechat"][0] == fake.bots[TOKEN].log[0]["context_token"]
            await eventually(lambda: h.state.value("cursor", connection_id="conn_1"))
            # failures that carry the token back: garbage quoting it, an errmsg naming it
            fake.script_updates(TOKEN, Raw(f'{{"echo": "{TOKEN}", "ret": -1, "errmsg": "{TOKEN}"}}'))
            fake.script_updates(TOKEN, Raw(f"<html>{TOKEN}</html>", status=500, content_type="text/html"))
            await eventually(lambda: not fake.bots[TOKEN].answers)
            fake.send_answers.append({"ret": -3, "errmsg": f"token {TOKEN} refused"})
            send = SendRequest("req-1", "conn_1", "ch_1", "weixin", Target("alice@im.wechat", "dm"), "x", "text", {})
            with pytest.raises(RpcError) as refused:
                await h.call("message.send", send, result_type=SendResult)
            assert refused.value.code == INTERNAL_ERROR and TOKEN not in refused.value.message
            fake.expire(TOKEN)
            await h.wait_for_notification("connection.status", lambda p: p["status"] == "error")
            with pytest.raises(RpcError) as expired:
                await h.call("message.send", send, result_type=SendResult)
            assert expired.value.code == SESSION_EXPIRED
            assert await h.call("connection.logout", {"connectionId": "conn_1"}) == {}
            stderr = list(h.stderr_lines)
    assert any("session expired" in line for line in stderr)  # it did log, at INFO and above
    assert any("HTTP 500" in line for line in stderr) and any("answered -1" in line for line in stderr)
    text = "\n".join(stderr)
    assert TOKEN not in text and TOKEN[:12] not in text
    others = [params for method, params in h.notifications if method != "session.update"]
    assert TOKEN not in msgspec.json.encode(others).decode()
    assert TOKEN not in msgspec.json.encode([p for m, p in h.calls]).decode()
