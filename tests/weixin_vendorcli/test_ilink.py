"""The iLink HTTP client against the fake platform: headers, base_info, bounded and lossless answers."""

from __future__ import annotations

import base64

import pytest
from weixin_vendorcli.accounts import Credentials
from weixin_vendorcli.backend import TransportError
from weixin_vendorcli.config import load_config
from weixin_vendorcli.ilink import IlinkHttp, client_version_number
from weixin_vendorcli.wire import as_id, decode_message, text_message

from tests.weixin_vendorcli.fake_ilink import BIG_ID_BASE, FakeIlink, Raw, running_fake

pytestmark = pytest.mark.anyio

TOKEN = "bot-token-for-ilink-tests"


def test_client_version_is_packed_in_bytes() -> None:
    assert client_version_number("2.4.9") == (2 << 16) | (4 << 8) | 9
    assert client_version_number("1.0.11") == 65547


async def test_headers_and_base_info_on_every_call() -> None:
    async with running_fake(FakeIlink(hold=0.05)) as (fake, [server]):
        fake.add_bot(TOKEN, "b1@im.bot")
        api = IlinkHttp(load_config({"baseUrl": server.url, "botAgent": "tests/1.0"}))
        account = Credentials(TOKEN, "b1@im.bot", server.url)
        try:
            qr = await api.get_qrcode(server.url, [])
            assert (await api.qrcode_status(server.url, qr.qrcode, "123456")).status == "wait"
            await api.get_updates(account, "", 1.0)
            await api.send_message(account, text_message("u@im.wechat", "cid-1", "hi", "ctx-1"))
            await api.notify(account, "notifystart")
        finally:
            await api.aclose()
        qr_post, status_get, poll, send, notify = fake.requests
        uins = set()
        for entry in (qr_post, poll, send, notify):
            h = entry.headers
            assert h["content-type"] == "application/json"
            assert h["authorizationtype"] == "ilink_bot_token"
            assert h["ilink-app-id"] == "bot"
            assert h["ilink-app-clientversion"] == str((2 << 16) | (4 << 8) | 9)
            assert base64.b64decode(h["x-wechat-uin"]).decode().isdigit()
            uins.add(h["x-wechat-uin"])
        assert len(uins) >= 3  # random per request
        # the QR calls carry no token and no base_info; the bot calls carry both
        assert "authorization" not in qr_post.headers
        assert qr_post.body == {"local_token_list": []}
        assert qr_post.query == {"bot_type": "3"}
        assert set(status_get.headers) & {"authorization", "authorizationtype", "x-wechat-uin"} == set()
        assert status_get.headers["ilink-app-id"] == "bot"
        assert status_get.query == {"qrcode": qr.qrcode, "verify_code": "123456"}
        for entry in (poll, send, notify):
            assert entry.headers["authorization"] == f"Bearer {TOKEN}"
            assert entry.body["base_info"] == {"channel_version": "2.4.9", "bot_agent": "tests/1.0"}
        assert poll.body["get_updates_buf"] == ""
        assert send.body["msg"] == {
            "to_user_id": "u@im.wechat",
            "client_id": "cid-1",
            "item_list": [{"type": 1, "text_item": {"text": "hi"}}],
            "from_user_id": "",
            "message_type": 2,
            "message_state": 2,
            "context_token": "ctx-1",
        }
        assert notify.path == "/ilink/bot/msg/notifystart"


async def test_uint64_ids_are_kept_exactly() -> None:
    async with running_fake(FakeIlink(hold=0.05)) as (fake, [server]):
        fake.add_bot(TOKEN, "b1@im.bot")
        fake.deliver(TOKEN, fake.message("u@im.wechat", "x", message_id=18_446_744_073_709_551_615))
        api = IlinkHttp(load_config({"baseUrl": server.url}))
        try:
            updates = await api.get_updates(Credentials(TOKEN, "b1@im.bot", server.url), "", 1.0)
            answer = await api.send_message(
                Credentials(TOKEN, "b1@im.bot", server.url), text_message("u", "c", "t", None)
            )
        finally:
            await api.aclose()
        assert as_id(decode_message(updates.msgs[0]).message_id) == "18446744073709551615"
        assert as_id(answer.message_id) == str(BIG_ID_BASE + 500_001)


@pytest.mark.parametrize(
    "raw",
    [
        Raw("<html><body>502 Bad Gateway</body></html>", status=502, content_type="text/html"),
        Raw("<html>maintenance</html>", content_type="text/html"),
        Raw('{"ret": 0, "msgs": [{"seq": 1, "item_li'),
        Raw("", status=200),
        Raw('["not", "an", "object"]'),
        Raw('{"ret": 0, "msgs": "not a list"}'),
        Raw("internal error", status=500, content_type="text/plain"),
    ],
)
async def test_garbage_answers_are_transport_errors_without_the_body(raw: Raw) -> None:
    async with running_fake(FakeIlink(hold=0.05)) as (fake, [server]):
        fake.add_bot(TOKEN, "b1@im.bot")
        fake.script_updates(TOKEN, raw)
        api = IlinkHttp(load_config({"baseUrl": server.url}))
        try:
            with pytest.raises(TransportError) as caught:
                await api.get_updates(Credentials(TOKEN, "b1@im.bot", server.url), "", 1.0)
        finally:
            await api.aclose()
        assert "getupdates" in caught.value.message or "Updates" in caught.value.message
        assert "maintenance" not in caught.value.message and "item_li" not in caught.value.message


async def test_unreachable_platform_is_a_transport_error() -> None:
    async with running_fake(FakeIlink(hold=0.05)) as (fake, [server]):
        url = server.url
    api = IlinkHttp(load_config({"baseUrl": url}))
    try:
        with pytest.raises(TransportError):
            await api.send_message(Credentials(TOKEN, "b1@im.bot", url), text_message("u", "c", "t", None))
    finally:
        await api.aclose()


async def test_a_long_poll_that_outlasts_the_client_is_an_empty_answer() -> None:
    async with running_fake(FakeIlink(hold=3.0)) as (fake, [server]):
        fake.add_bot(TOKEN, "b1@im.bot")
        api = IlinkHttp(load_config({"baseUrl": server.url}))
        try:
            updates = await api.get_updates(Credentials(TOKEN, "b1@im.bot", server.url), "cursor-1", 0.2)
        finally:
            await api.aclose()
        assert updates.code == 0 and updates.msgs == [] and updates.get_updates_buf == "cursor-1"
