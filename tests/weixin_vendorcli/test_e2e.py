"""The Weixin plugin end to end: real host, runtime, HTTP server and plugin process; a fake platform."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support import eventually
from tests.weixin_vendorcli.fake_ilink import FakeIlink, running_fake
from tests.weixin_vendorcli.stack import fast_config, weixin_stack

pytestmark = pytest.mark.anyio

TOKEN = "wxbot-Token-abcdefghijklmnop-1234567890"


async def test_login_receive_reply(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_fake(FakeIlink(hold=0.2), servers=2) as (fake, servers):
        async with weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
            connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
            fake.deliver(TOKEN, fake.message("alice@im.wechat", "hello"))
            await eventually(lambda: fake.sent_to("alice@im.wechat"))
            sent = fake.sent_to("alice@im.wechat")[0]["msg"]
            assert sent["item_list"] == [{"type": 1, "text_item": {"text": "echo: hello"}}]
            assert sent["context_token"] == fake.bots[TOKEN].log[0]["context_token"]
            assert [m.content for m in s.seen] == ["hello"]
