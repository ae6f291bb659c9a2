"""The Weixin plugin end to end: real host, runtime, SQLite, HTTP server and plugin process.

Only the platform is fake (`fake_ilink`, a real HTTP server on 127.0.0.1). The
plugin's timeouts are configured in tens of milliseconds, so nothing here waits
for real minutes; no test asserts on wall time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from channel_runtime import InboundMessage, OutboundMessage
from plugin_host.errors import INTERNAL_ERROR, REPLY_WINDOW_CLOSED, SESSION_EXPIRED, UNKNOWN_CONNECTION, RpcError
from plugin_host.protocol import SendRequest, Target
from tests.support import eventually
from tests.weixin_vendorcli.fake_ilink import FakeIlink, FakeServer, Raw, running_fake
from tests.weixin_vendorcli.stack import PLUGIN_ID, Stack, all_log_text, fast_config, weixin_stack

pytestmark = pytest.mark.anyio

# letters and digits, as real bot tokens are; long enough for any generic pattern to matter
TOKEN = "wxbotTOKENabcdefghijklmnop1234567890"
TOKEN_2 = "wxbotSECONDqrstuvwxyzABCDEF0987654321"


@asynccontextmanager
async def platform(hold: float = 0.2) -> AsyncIterator[tuple[FakeIlink, list[FakeServer]]]:
    async with running_fake(FakeIlink(hold=hold), servers=2) as (fake, servers):
        yield fake, servers


def request(connection_id: str, channel_id: str, peer: str, text: str, request_id: str) -> SendRequest:
    return SendRequest(
        request_id=request_id,
        connection_id=connection_id,
        channel_id=channel_id,
        kind="weixin",
        target=Target(peer_id=peer, peer_type="dm"),
        content=text,
        content_type="text",
        metadata={},
    )


async def send(s: Stack, req: SendRequest) -> Any:
    return await s.host.client(PLUGIN_ID).send(req)


async def plugin_info(s: Stack) -> dict[str, Any]:
    return await s.get(f"/api/plugins/{PLUGIN_ID}")  # type: ignore[no-any-return]


class SseFrames:
    """Every frame of a session's event stream, read in the background."""

    def __init__(self) -> None:
        self.text = ""

    async def read(self, client: httpx.AsyncClient, session_id: str) -> None:
        async with client.stream("GET", f"/api/connector-sessions/{session_id}/events") as response:
            async for chunk in response.aiter_text():
                self.text += chunk


# ---------------------------------------------------------------- login


async def test_qr_login_through_every_status(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        assert [c["kind"] for c in await s.get("/api/connectors")] == ["weixin"]
        session_id, connection_id = await s.start_login("Shop bot")
        frames = SseFrames()
        async with anyio.create_task_group() as tg:
            tg.start_soon(frames.read, s.client, session_id)
            view = await s.session_status(session_id, "qr_ready")
            assert view["qrCode"] == f"https://liteapp.weixin.qq.com/q/{fake.qrcodes[0]}?bot_type=3"
            assert view["qrImage"].startswith("data:image/svg+xml")  # rendered by the host from qrCode
            assert view["instructions"]
            assert (await s.connection(connection_id))["status"] == "pairing"

            fake.push_status("wait")
            fake.push_status("scaned")
            await s.session_status(session_id, "scanned")
            fake.push_status("need_verifycode")
            view = await s.session_status(session_id, "waiting_for_user")
            assert view["metadata"]["input"] == "verifyCode"
            # a wrong code: the platform asks again
            fake.push_status("need_verifycode")
            await s.post(f"/api/connector-sessions/{session_id}/input", {"input": "1234"}, 200)
            await eventually(lambda: any(p.query.get("verify_code") == "1234" for p in fake.of("get_qrcode_status")))
            view = await eventually(lambda: _wrong_code(s, session_id))
            # too many wrong codes: a new QR
            fake.push_status("verify_code_blocked")
            await s.post(f"/api/connector-sessions/{session_id}/input", {"input": "5678"}, 200)
            await eventually(lambda: len(fake.qrcodes) == 2)
            view = await eventually(lambda: _refreshes(s, session_id, 1))
            assert view["status"] == "qr_ready" and fake.qrcodes[1] in view["qrCode"]
            # that one expires: another new QR
            fake.push_status("expired")
            await eventually(lambda: len(fake.qrcodes) == 3)
            await eventually(lambda: _refreshes(s, session_id, 2))
            # scanned in another data centre: polling moves to the redirect host
            fake.push_status("scaned_but_redirect", redirect_host=f"127.0.0.1:{servers[1].port}")
            await eventually(lambda: any(p.port == servers[1].port for p in fake.of("get_qrcode_status")))
            fake.push_status("need_verifycode")
            await s.session_status(session_id, "waiting_for_user")
            fake.push_status("scaned")
            await s.post(f"/api/connector-sessions/{session_id}/input", {"input": "2468"}, 200)
            await s.session_status(session_id, "scanned")
            fake.push_status(
                "confirmed",
                bot_token=TOKEN,
                ilink_bot_id="shop@im.bot",
                baseurl=servers[0].url,
                ilink_user_id="owner@im.wechat",
            )
            view = await s.session_status(session_id, "connected")
            assert view["accountId"] == "shop@im.bot" and view["displayName"] == "Shop bot"
            await eventually(lambda: "connected" in frames.text)
            tg.cancel_scope.cancel()
        connection = await s.connection_status(connection_id, "connected")
        assert connection["accountId"] == "shop@im.bot" and connection["hasCredentials"] is True
        # the host resumed the connection in the plugin: it polls with the new token
        await eventually(
            lambda: any(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in fake.of("getupdates"))
        )
        polls = fake.of("get_qrcode_status")
        redirected = [p.port for p in polls][[p.port for p in polls].index(servers[1].port) :]
        assert set(redirected) == {servers[1].port}
        assert any(p.query.get("verify_code") == "2468" for p in polls)
        for text in [*s.bodies, frames.text]:
            assert TOKEN not in text
            assert fake.qrcodes[0] not in text.replace(f"q/{fake.qrcodes[0]}", "")  # the polling handle is never shown


def _wrong_code(s: Stack, session_id: str) -> Any:
    async def check() -> Any:
        view = await s.session(session_id)
        return view if view["status"] == "waiting_for_user" and view["metadata"].get("wrongCode") else None

    return check()


def _refreshes(s: Stack, session_id: str, n: int) -> Any:
    async def check() -> Any:
        view = await s.session(session_id)
        return view if view["metadata"].get("qrRefreshes") == n and view["status"] == "qr_ready" else None

    return check()


async def test_qr_expiring_three_times_ends_the_session(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        session_id, connection_id = await s.start_login()
        await s.session_status(session_id, "qr_ready")
        for n in (1, 2):
            fake.push_status("expired")
            await eventually(lambda n=n: _refreshes(s, session_id, n))
        fake.push_status("expired")
        view = await s.session_status(session_id, "expired")
        assert "expired" in view["error"] and len(fake.qrcodes) == 3
        connection = await s.connection_status(connection_id, "error")
        assert connection["error"]


async def test_the_login_time_limit_and_cancel(tmp_path: Path) -> None:
    async with platform() as (fake, servers):
        config = fast_config(servers[0].url, loginTimeoutMs=1000)
        async with weixin_stack(tmp_path / "home", config) as s:
            session_id, _ = await s.start_login()
            view = await s.session_status(session_id, "expired", timeout=15)
            assert "1 s" in view["error"]
            session_id, connection_id = await s.start_login()
            await s.session_status(session_id, "qr_ready")
            await s.post(f"/api/connector-sessions/{session_id}/cancel", None, 200)
            assert (await s.session(session_id))["status"] == "cancelled"
            handle = fake.qrcodes[-1]
            await anyio.sleep(0.3)
            before = len([p for p in fake.of("get_qrcode_status") if p.query["qrcode"] == handle])
            await anyio.sleep(0.3)
            assert len([p for p in fake.of("get_qrcode_status") if p.query["qrcode"] == handle]) == before


async def test_no_qr_code_from_the_platform_fails_the_session_clearly(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        fake.qrcode_answers.append(Raw("<html>busy</html>", status=503, content_type="text/html"))
        response = await s.post("/api/connector-sessions", {"kind": "weixin"})
        assert response.status_code == 502
        assert "QR code" in response.json()["error"]["message"]


# ---------------------------------------------------------------- receive and reply


async def test_headers_and_base_info_of_the_real_plugin(tmp_path: Path) -> None:
    async with platform() as (fake, servers):
        config = fast_config(servers[0].url, botAgent="acme-agent/2.1")
        async with weixin_stack(tmp_path / "home", config) as s:
            await s.login(fake, TOKEN, "b1@im.bot")
            fake.deliver(TOKEN, fake.message("alice@im.wechat", "hi"))
            await eventually(lambda: fake.sent_to("alice@im.wechat"))
    posts = [r for r in fake.requests if r.method == "POST" and "get_bot_qrcode" not in r.path]
    assert {r.path for r in posts} >= {"/ilink/bot/getupdates", "/ilink/bot/sendmessage", "/ilink/bot/msg/notifystart"}
    for r in posts:
        assert r.headers["authorization"] == f"Bearer {TOKEN}"
        assert r.headers["authorizationtype"] == "ilink_bot_token"
        assert r.headers["content-type"] == "application/json"
        assert r.headers["ilink-app-id"] == "bot" and r.headers["ilink-app-clientversion"] == str(0x020409)
        assert r.headers["x-wechat-uin"]
        assert r.body["base_info"] == {"channel_version": "2.4.9", "bot_agent": "acme-agent/2.1"}
    assert len({r.headers["x-wechat-uin"] for r in posts}) > len(posts) // 2
    qr = fake.of("get_bot_qrcode")[0]
    assert qr.query == {"bot_type": "3"} and "base_info" not in qr.body and "authorization" not in qr.headers
    for poll in fake.of("get_qrcode_status"):
        assert "authorization" not in poll.headers and poll.headers["ilink-app-id"] == "bot"


async def test_receive_handler_reply_with_each_peers_latest_context_token(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
        a1 = fake.message("alice@im.wechat", "one")
        b1 = fake.message("bob@im.wechat", "two")
        fake.deliver(TOKEN, a1, b1)
        await eventually(lambda: fake.sent_to("alice@im.wechat") and fake.sent_to("bob@im.wechat"))
        assert fake.sent_to("alice@im.wechat")[0]["msg"]["context_token"] == a1["context_token"]
        assert fake.sent_to("bob@im.wechat")[0]["msg"]["context_token"] == b1["context_token"]
        a2 = fake.message("alice@im.wechat", "three")
        fake.deliver(TOKEN, a2)
        await eventually(lambda: len(fake.sent_to("alice@im.wechat")) == 2)
        reply = fake.sent_to("alice@im.wechat")[1]["msg"]
        assert (
            reply["context_token"] == a2["context_token"]
            and reply["item_list"][0]["text_item"]["text"] == "echo: three"
        )
        assert reply["message_type"] == 2 and reply["message_state"] == 2 and reply["from_user_id"] == ""
        assert len({m["msg"]["client_id"] for m in fake.sent}) == 3
        # what the handler saw
        by_content = {m.content: m for m in s.seen}
        one = by_content["one"]
        assert (one.peer_id, one.peer_type, one.kind, one.message_id) == (
            "alice@im.wechat",
            "dm",
            "weixin",
            str(a1["message_id"]),
        )
        assert one.session_id == "weixin:dm:alice@im.wechat"
        assert one.metadata["seq"] == a1["seq"] and "contextToken" not in one.metadata
        # the token is kept per (account, peer) by the host: a send with no inbound in this process uses it
        result = await send(s, request(connection_id, channel_id, "bob@im.wechat", "later", "req-later"))
        assert result.provider_message_id and not result.duplicate
        assert fake.sent_to("bob@im.wechat")[-1]["msg"]["context_token"] == b1["context_token"]
        # the same requestId again: answered from the idempotency store, nothing sent twice
        again = await send(s, request(connection_id, channel_id, "bob@im.wechat", "later", "req-later"))
        assert again.duplicate and again.provider_message_id == result.provider_message_id
        assert len(fake.sent_to("bob@im.wechat")) == 2


async def test_typed_items_reach_the_handler(tmp_path: Path) -> None:
    async def quiet(message: InboundMessage) -> OutboundMessage | None:
        return None

    async with platform() as (fake, servers):
        async with weixin_stack(tmp_path / "home", fast_config(servers[0].url), handler=quiet) as s:
            await s.login(fake, TOKEN, "b1@im.bot")
            voice = {"type": 3, "voice_item": {"text": "see you at six", "playtime": 1800}}
            image = {
                "type": 2,
                "image_item": {"media": {"encrypt_query_param": "eqp-1", "aes_key": "a2V5"}, "mid_size": 99},
            }
            file = {
                "type": 4,
                "file_item": {"media": {"full_url": "https://cdn.example/f"}, "file_name": "a.pdf", "len": "10"},
            }
            fake.deliver(
                TOKEN,
                fake.message("carol@im.wechat", items=[voice]),
                fake.message("carol@im.wechat", items=[image]),
                fake.message("carol@im.wechat", items=[file]),
                fake.message("carol@im.wechat", items=[{"type": 99}]),
            )
            await eventually(lambda: len(s.seen) == 4)
    kinds = [(m.message_type, m.content) for m in s.seen]
    assert kinds == [("voice", "see you at six"), ("image", "[image]"), ("file", "[file: a.pdf]"), ("unknown", "")]
    assert s.seen[1].metadata["media"][0]["media"]["encryptQueryParam"] == "eqp-1"
    assert s.seen[2].metadata["media"][0]["media"]["fullUrl"] == "https://cdn.example/f"
    assert s.seen[3].metadata["items"] == [{"type": 99}]


async def test_oversized_tokens_long_peer_ids_and_many_items_never_stall_the_account(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        await s.login(fake, TOKEN, "b1@im.bot")
        long_peer = "p" * 300 + "@im.wechat"
        huge_token = "t" * 70_000  # over the host's 64 KiB value limit
        many = [{"type": 2, "image_item": {"url": f"https://cdn.example/{i}"}} for i in range(400)]
        fake.deliver(
            TOKEN,
            fake.message(long_peer, "from a long id"),
            fake.message("frank@im.wechat", "huge token", context_token=huge_token),
            fake.message("gina@im.wechat", items=many),
            fake.message("alice@im.wechat", "after them"),
        )
        await eventually(lambda: len(fake.sent) == 4)
        assert fake.sent_to(long_peer) and fake.sent_to("alice@im.wechat")
        assert fake.sent_to("frank@im.wechat")[0]["msg"]["context_token"] == huge_token  # kept in memory
        gina = next(m for m in s.seen if m.peer_id == "gina@im.wechat")
        assert len(gina.metadata["media"]) == 50 and gina.metadata["mediaOmitted"] == 350


async def test_a_redelivered_message_is_answered_once(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        await s.login(fake, TOKEN, "b1@im.bot")
        first = fake.message("alice@im.wechat", "only once")
        fake.deliver(TOKEN, first, dict(first))  # twice in one batch
        await eventually(lambda: fake.sent_to("alice@im.wechat"))
        fake.deliver(TOKEN, dict(first))  # and again a moment later
        follow = fake.message("alice@im.wechat", "next")
        fake.deliver(TOKEN, follow)
        await eventually(lambda: len(fake.sent_to("alice@im.wechat")) == 2)
        await anyio.sleep(0.3)
        texts = [m["msg"]["item_list"][0]["text_item"]["text"] for m in fake.sent_to("alice@im.wechat")]
        assert texts == ["echo: only once", "echo: next"]
        assert [m.content for m in s.seen] == ["only once", "next"]


async def test_cursor_and_dedupe_survive_a_host_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    async with platform() as (fake, servers):
        config = fast_config(servers[0].url)
        async with weixin_stack(home, config) as s:
            await s.login(fake, TOKEN, "b1@im.bot")
            m1 = fake.message("alice@im.wechat", "before")
            fake.deliver(TOKEN, m1)
            await eventually(lambda: fake.sent_to("alice@im.wechat"))
            await eventually(lambda: fake.of("getupdates")[-1].body["get_updates_buf"] != "")
            last_cursor = fake.of("getupdates")[-1].body["get_updates_buf"]
        polls_before_restart = len(fake.of("getupdates"))
        m2 = fake.message("alice@im.wechat", "while down")
        fake.deliver(TOKEN, dict(m1), m2)  # the platform redelivers m1 too
        async with weixin_stack(home, config) as s2:
            await eventually(lambda: len(fake.sent_to("alice@im.wechat")) == 2)
            first_poll = fake.of("getupdates")[polls_before_restart]
            assert first_poll.body["get_updates_buf"] == last_cursor  # resumed from the host-kept cursor
            await anyio.sleep(0.3)
            texts = [m["msg"]["item_list"][0]["text_item"]["text"] for m in fake.sent_to("alice@im.wechat")]
            assert texts == ["echo: before", "echo: while down"]
            assert [m.content for m in s2.seen] == ["while down"]
            # the reply after the restart used the newest context token, from host state
            assert fake.sent_to("alice@im.wechat")[1]["msg"]["context_token"] == m2["context_token"]


async def test_long_replies_are_split_and_a_partial_failure_resumes(tmp_path: Path) -> None:
    long_text = ("word " * 1000) + ("x" * 3000) + "\n\n" + ("tail " * 300)

    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
        fake.deliver(TOKEN, fake.message("dave@im.wechat", "start"))
        await eventually(lambda: fake.sent_to("dave@im.wechat"))
        fake.sent.clear()
        fake.send_answers.extend([{"ret": 0}, Raw("oops", status=500, content_type="text/plain")])
        with pytest.raises(RpcError) as failed:
            await send(s, request(connection_id, channel_id, "dave@im.wechat", long_text, "req-long"))
        assert failed.value.code == INTERNAL_ERROR and "part 2 of 3" not in failed.value.message
        assert len(fake.sent) == 1
        result = await send(s, request(connection_id, channel_id, "dave@im.wechat", long_text, "req-long"))
        assert not result.duplicate
    parts = [m["msg"]["item_list"][0]["text_item"]["text"] for m in fake.sent]
    assert len(parts) == 3 and "".join(parts) == long_text
    assert all(len(p) <= 4000 for p in parts)
    client_ids = [m["msg"]["client_id"] for m in fake.sent]
    assert client_ids[0].endswith("-0") and client_ids[1].endswith("-1") and client_ids[2].endswith("-2")


# ---------------------------------------------------------------- platform refusals and failures


async def test_stale_context_is_32016_and_other_refusals_fail_with_the_platforms_message(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
        fake.send_answers.append({"ret": -2, "errmsg": "context expired"})
        with pytest.raises(RpcError) as stale:
            await send(s, request(connection_id, channel_id, "erin@im.wechat", "hello", "req-stale"))
        assert stale.value.code == REPLY_WINDOW_CLOSED and "context expired" in stale.value.message
        fake.send_answers.append({"ret": -5, "errmsg": "content rejected by policy"})
        with pytest.raises(RpcError) as refused:
            await send(s, request(connection_id, channel_id, "erin@im.wechat", "hello", "req-refused"))
        assert refused.value.code == INTERNAL_ERROR and "content rejected by policy" in refused.value.message
        assert refused.value.data == {"ret": -5}
        assert fake.sent == []  # nothing the platform refused counts as sent
        # a refused requestId is not stored as done: the host's retry sends it
        result = await send(s, request(connection_id, channel_id, "erin@im.wechat", "hello", "req-stale"))
        assert not result.duplicate and len(fake.sent) == 1
        assert "context_token" not in fake.sent[0]["msg"]  # erin never wrote: no token to send
        with pytest.raises(RpcError) as unknown:
            await send(s, request("conn_nope", channel_id, "erin@im.wechat", "hello", "req-x"))
        assert unknown.value.code == UNKNOWN_CONNECTION


async def test_session_expired_pauses_the_account_without_a_hot_loop_or_a_restart(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
        pid = s.plugin_pid()
        fake.expire(TOKEN)
        connection = await s.connection_status(connection_id, "error")
        assert connection["error"] == "session_expired"
        polls = fake.bots[TOKEN].polls
        await anyio.sleep(1.0)
        assert fake.bots[TOKEN].polls == polls  # paused: not one more poll
        with pytest.raises(RpcError) as expired:
            await send(s, request(connection_id, channel_id, "alice@im.wechat", "hello", "req-exp"))
        assert expired.value.code == SESSION_EXPIRED
        assert fake.of("sendmessage") == []  # answered without bothering the platform
        info = await plugin_info(s)
        assert info["state"] == "running" and info["restarts"] == 0 and s.plugin_pid() == pid
        health = await s.host.client(PLUGIN_ID).health()
        assert health.connections == {connection_id: "error"}


async def test_the_same_token_is_tried_again_after_the_pause(tmp_path: Path) -> None:
    async with platform() as (fake, servers):
        async with weixin_stack(tmp_path / "home", fast_config(servers[0].url, sessionPauseMs=1500)) as s:
            connection_id, _ = await s.login(fake, TOKEN, "b1@im.bot")
            fake.expire(TOKEN)
            await s.connection_status(connection_id, "error")
            polls = fake.bots[TOKEN].polls
            fake.bots[TOKEN].expired = False  # the platform takes the token back
            await s.connection_status(connection_id, "connected", timeout=20)
            assert fake.bots[TOKEN].polls > polls
            fake.deliver(TOKEN, fake.message("alice@im.wechat", "welcome back"))
            await eventually(lambda: fake.sent_to("alice@im.wechat"))


async def test_session_expired_on_a_send_is_32017_and_pauses_polling(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
        fake.send_answers.append({"ret": -14, "errmsg": "session timeout"})
        with pytest.raises(RpcError) as expired:
            await send(s, request(connection_id, channel_id, "alice@im.wechat", "hello", "req-exp-send"))
        assert expired.value.code == SESSION_EXPIRED
        connection = await s.connection_status(connection_id, "error")
        assert connection["error"] == "session_expired"
        polls = fake.bots[TOKEN].polls
        await anyio.sleep(1.0)
        assert fake.bots[TOKEN].polls <= polls + 1  # at most the poll that was in flight


async def test_relogin_after_expiry_resumes_receiving(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        connection_id, _ = await s.login(fake, TOKEN, "b1@im.bot")
        fake.expire(TOKEN)
        await s.connection_status(connection_id, "error")
        response = await s.client.post(f"/api/connections/{connection_id}/relogin")
        assert response.status_code in (200, 201), response.text
        session_id = response.json()["session"]["sessionId"]
        await s.session_status(session_id, "qr_ready")
        fake.push_status("confirmed", bot_token=TOKEN_2, ilink_bot_id="b1@im.bot")
        await s.connection_status(connection_id, "connected")
        fake.deliver(TOKEN_2, fake.message("alice@im.wechat", "back"))
        await eventually(lambda: fake.sent_to("alice@im.wechat"))
        assert fake.sent_to("alice@im.wechat")[0]["token"] == TOKEN_2


async def test_network_errors_and_garbage_never_stop_the_loop(tmp_path: Path) -> None:
    async with platform() as (fake, servers):
        config = fast_config(servers[0].url, backoffMs=1500)
        async with weixin_stack(tmp_path / "home", config) as s:
            await s.login(fake, TOKEN, "b1@im.bot")
            pid = s.plugin_pid()
            garbage = [
                Raw("<html><body>502 Bad Gateway</body></html>", status=502, content_type="text/html"),
                Raw('{"ret": 0, "msgs": [{"seq": 1, "item_li'),
                Raw("internal error", status=500, content_type="text/plain"),
            ]
            fake.script_updates(TOKEN, *garbage)
            await eventually(lambda: not fake.bots[TOKEN].answers)
            polls = fake.bots[TOKEN].polls
            await anyio.sleep(0.5)
            assert fake.bots[TOKEN].polls == polls  # three failures in a row: backing off, not retrying
            fake.script_updates(TOKEN, {"ret": -1, "errmsg": "system busy"}, Raw("", status=200), Raw("[1, 2]"))
            # the platform is unreachable for a while
            await servers[0].stop()
            await anyio.sleep(0.5)
            async with anyio.create_task_group() as tg:
                await servers[0].start(tg)
                fake.deliver(TOKEN, fake.message("alice@im.wechat", "still here"))
                await eventually(lambda: fake.sent_to("alice@im.wechat"), 20)
                info = await plugin_info(s)
                assert info["state"] == "running" and info["restarts"] == 0 and s.plugin_pid() == pid
                await servers[0].stop()
                tg.cancel_scope.cancel()


# ---------------------------------------------------------------- accounts


async def test_two_accounts_at_once(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        one, _ = await s.login(fake, TOKEN, "one@im.bot", "One")
        two, _ = await s.login(fake, TOKEN_2, "two@im.bot", "Two")
        assert one != two
        fake.deliver(TOKEN, fake.message("alice@im.wechat", "to one"))
        fake.deliver(TOKEN_2, fake.message("alice@im.wechat", "to two"))
        await eventually(lambda: len(fake.sent_to("alice@im.wechat")) == 2)
        by_token = {m["token"]: m["msg"]["item_list"][0]["text_item"]["text"] for m in fake.sent}
        assert by_token == {TOKEN: "echo: to one", TOKEN_2: "echo: to two"}
        channels = {m.content: m.channel_id for m in s.seen}
        assert channels["to one"] != channels["to two"]
        # one account expiring leaves the other alone
        fake.expire(TOKEN)
        await s.connection_status(one, "error")
        fake.deliver(TOKEN_2, fake.message("bob@im.wechat", "still two"))
        await eventually(lambda: fake.sent_to("bob@im.wechat"))
        assert (await s.connection(two))["status"] == "connected"


async def test_logout_stops_the_account_and_answers_even_when_the_platform_is_down(tmp_path: Path) -> None:
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        one, _ = await s.login(fake, TOKEN, "one@im.bot")
        two, _ = await s.login(fake, TOKEN_2, "two@im.bot")
        fake.deliver(TOKEN, fake.message("alice@im.wechat", "hi"))
        await eventually(lambda: fake.sent_to("alice@im.wechat"))
        await s.post(f"/api/connections/{one}/logout", None, 200)
        assert (await s.connection(one))["status"] == "revoked"
        assert any(
            r.path.endswith("notifystop") and r.headers["authorization"] == f"Bearer {TOKEN}" for r in fake.requests
        )
        polls = fake.bots[TOKEN].polls
        await anyio.sleep(0.6)
        assert fake.bots[TOKEN].polls == polls
        # the platform is unreachable: logout still answers
        await servers[0].stop()
        await s.post(f"/api/connections/{two}/logout", None, 200)
        assert (await s.connection(two))["status"] == "revoked"
        info = await plugin_info(s)
        assert info["state"] == "running"


# ---------------------------------------------------------------- secrets


async def test_the_bot_token_appears_in_no_answer_frame_or_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with platform() as (fake, servers), weixin_stack(tmp_path / "home", fast_config(servers[0].url)) as s:
        session_id, connection_id = await s.start_login()
        frames = SseFrames()
        async with anyio.create_task_group() as tg:
            tg.start_soon(frames.read, s.client, session_id)
            await s.session_status(session_id, "qr_ready")
            fake.push_status("confirmed", bot_token=TOKEN, ilink_bot_id="b1@im.bot", ilink_user_id="owner@im.wechat")
            await s.session_status(session_id, "connected")
            await eventually(lambda: '"connected"' in frames.text)
            tg.cancel_scope.cancel()
        channel_id = (await s.connection_status(connection_id, "connected"))["channelId"]
        fake.deliver(TOKEN, fake.message("alice@im.wechat", "hi"))
        await eventually(lambda: fake.sent_to("alice@im.wechat"))
        fake.script_updates(TOKEN, Raw(f'{{"ret": 0, "echo": "{TOKEN}", "msgs": [tru'))  # a garbage answer quoting it
        fake.send_answers.append({"ret": -3, "errmsg": f"bad token {TOKEN}"})
        with pytest.raises(RpcError) as failed:
            await send(s, request(connection_id, channel_id, "alice@im.wechat", "x", "req-secret"))
        fake.expire(TOKEN)
        await s.connection_status(connection_id, "error")
        for path in (
            "/api/connections",
            f"/api/connections/{connection_id}",
            f"/api/connector-sessions/{session_id}",
            "/api/plugins",
            f"/api/plugins/{PLUGIN_ID}",
            f"/api/plugins/{PLUGIN_ID}/logs?tail=1000",
            "/api/channels",
        ):
            await s.get(path)
        logs = await s.get(f"/api/plugins/{PLUGIN_ID}/logs?tail=1000")
        assert logs  # the plugin did log
        everything = "\n".join([*s.bodies, frames.text, all_log_text(caplog), str(failed.value.message), str(logs)])
        assert TOKEN not in everything
        assert TOKEN[:16] not in everything
