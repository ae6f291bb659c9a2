"""The Weixin plugin against hostile or broken input, end to end: real host, SQLite, plugin process.

Each test is one way the platform (or the host's own limits) could stop an account
for good: an answer the decoder cannot take, a token that cannot go in a header, a
malformed message in a batch, the per-connection key limit, oversized media
references, odd `Retry-After` values, -14 behind an HTTP error status. Only the
platform is fake (`fake_ilink`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from weixin_vendorcli.accounts import CONTEXT_BUCKETS, CONTEXT_PREFIX
from weixin_vendorcli.text import TRUNCATED

from channel_runtime import InboundMessage, OutboundMessage
from plugin_host.errors import INTERNAL_ERROR, RATE_LIMITED, SESSION_EXPIRED, RpcError
from plugin_host.protocol import ConnectionInfo, SendRequest, Target
from plugin_host.sdk.buckets import bucket_key
from plugin_host.sdk.testing import PluginHarness
from tests.support import eventually
from tests.weixin_vendorcli.fake_ilink import FakeIlink, FakeServer, Raw, running_fake
from tests.weixin_vendorcli.stack import PLUGIN_DIR, PLUGIN_ID, Stack, fast_config, weixin_stack

pytestmark = pytest.mark.anyio

TOKEN = "wxbotHARDENabcdefghijklmnop1234567890"
TOKEN_2 = "wxbotSECONDqrstuvwxyzABCDEF0987654321"


async def reply_when_asked(message: InboundMessage) -> OutboundMessage | None:
    return message.reply(f"echo: {message.content}") if message.content.startswith("reply") else None


@asynccontextmanager
async def platform() -> AsyncIterator[tuple[FakeIlink, FakeServer]]:
    async with running_fake(FakeIlink(hold=0.2)) as (fake, [server]):
        yield fake, server


def request(connection_id: str, channel_id: str, peer: str, text: str, request_id: str) -> SendRequest:
    return SendRequest(request_id, connection_id, channel_id, "weixin", Target(peer, "dm"), text, "text", {})


def state_keys(s: Stack, connection_id: str) -> list[str]:
    """The connection's keys as the host's store holds them (the SQLite file itself)."""
    with sqlite3.connect(s.home / "state.db") as db:
        rows = db.execute(
            "SELECT key FROM plugin_state WHERE plugin_id = ? AND scope = ?", (PLUGIN_ID, connection_id)
        ).fetchall()
    return sorted(row[0] for row in rows)


def texts(fake: FakeIlink, peer: str) -> list[str]:
    return [m["msg"]["item_list"][0]["text_item"]["text"] for m in fake.sent_to(peer)]


# ---------------------------------------------------------------- the receive loop never dies


async def test_answers_the_decoder_cannot_take_never_end_the_receive_loop(tmp_path: Path) -> None:
    async with platform() as (fake, server), weixin_stack(tmp_path / "home", fast_config(server.url)) as s:
        connection_id, _ = await s.login(fake, TOKEN, "b1@im.bot")
        pid = s.plugin_pid()
        deep = '{"ret": 0, "msgs": ' + "[" * 1200 + "]" * 1200 + "}"  # RecursionError in the decoder
        fake.script_updates(
            TOKEN,
            Raw(deep),
            Raw("", status=429, headers={"Retry-After": "²"}),  # '²'.isdigit() is True, float('²') fails
            Raw("", status=429, headers={"Retry-After": "9" * 400}),
        )
        await eventually(lambda: not fake.bots[TOKEN].answers)
        fake.deliver(TOKEN, fake.message("alice@im.wechat", "reply after the odd answers"))
        await eventually(lambda: fake.sent_to("alice@im.wechat"), 20)
        assert texts(fake, "alice@im.wechat") == ["echo: reply after the odd answers"]
        assert (await s.connection(connection_id))["status"] == "connected"
        assert s.plugin_pid() == pid


async def test_a_bot_token_that_cannot_go_in_a_header_is_a_clear_error(tmp_path: Path) -> None:
    async with platform() as (fake, server), weixin_stack(tmp_path / "home", fast_config(server.url)) as s:
        session_id, connection_id = await s.start_login()
        await s.session_status(session_id, "qr_ready")
        fake.push_status("confirmed", bot_token="tökén-not-ascii-0123456789", ilink_bot_id="b9@im.bot")
        view = await s.session_status(session_id, "error")
        assert "bot token" in view["error"]
        connection = await s.connection_status(connection_id, "error")
        assert connection["hasCredentials"] is False


async def test_stored_credentials_with_an_unusable_token_report_an_error(tmp_path: Path) -> None:
    """Credentials kept by the host from before: the plugin says so instead of starting a loop that dies."""
    async with platform() as (fake, server):
        (tmp_path / "state").mkdir()
        async with PluginHarness.subprocess(
            PLUGIN_DIR, config=fast_config(server.url), state_dir=tmp_path / "state"
        ) as h:
            credentials = {"botToken": "tök\u00e9n-0123456789", "ilinkBotId": "b9@im.bot", "baseUrl": server.url}
            await h.call(
                "connection.resume", ConnectionInfo("conn_9", "ch_9", "weixin", "b9@im.bot", "", {}, credentials)
            )
            status = await h.wait_for_notification("connection.status", lambda p: p["connectionId"] == "conn_9")
            assert status["status"] == "error" and "log in again" in status["error"]
            assert fake.of("notifystart") == [] and fake.of("getupdates") == []


# ---------------------------------------------------------------- one bad message is not the batch


async def test_a_malformed_message_is_skipped_and_the_cursor_moves_on(tmp_path: Path) -> None:
    async with platform() as (fake, server):
        async with weixin_stack(tmp_path / "home", fast_config(server.url), handler=reply_when_asked) as s:
            await s.login(fake, TOKEN, "b1@im.bot")
            before = fake.message("alice@im.wechat", "first")
            float_time = fake.message("alice@im.wechat", "float time", create_time_ms=1.78e12)
            numeric_client_id = fake.message("alice@im.wechat", "bad client id", client_id=123)
            after = fake.message("alice@im.wechat", "last")
            fake.deliver(TOKEN, before, float_time, numeric_client_id, 5, ["not", "a", "message"], after)  # type: ignore[arg-type]
            await eventually(lambda: len(s.seen) == 3)
            assert [m.content for m in s.seen] == ["first", "float time", "last"]
            # the batch was committed: the next polls carry its cursor and nothing comes twice
            committed = len(fake.bots[TOKEN].log)
            await eventually(lambda: f":{committed}:" in _cursor_text(fake.of("getupdates")[-1].body))
            fake.deliver(TOKEN, fake.message("alice@im.wechat", "reply later"))
            await eventually(lambda: fake.sent_to("alice@im.wechat"))
            assert [m.content for m in s.seen] == ["first", "float time", "last", "reply later"]


def _cursor_text(body: Any) -> str:
    import base64

    cursor = body.get("get_updates_buf", "") if isinstance(body, dict) else ""
    return base64.b64decode(cursor).decode() if cursor else ""


# ---------------------------------------------------------------- the host's key limit


async def test_context_tokens_use_a_bounded_number_of_keys_and_a_refused_write_blocks_nothing(
    tmp_path: Path,
) -> None:
    async with platform() as (fake, server):
        async with weixin_stack(tmp_path / "home", fast_config(server.url), handler=reply_when_asked) as s:
            connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
            store = s.runtime.store.plugin_state
            fake.deliver(TOKEN, fake.message("alice@im.wechat", "hi"))
            await eventually(lambda: len(state_keys(s, connection_id)) == 3)  # cursor, seen, alice's bucket
            # the host refuses every new key: a new peer's token cannot be kept, its message still goes through
            store.keys_per_scope = 3
            alice_key = bucket_key(CONTEXT_PREFIX, "alice@im.wechat", CONTEXT_BUCKETS)
            bob = next(
                f"bob{i}@im.wechat"
                for i in range(100)
                if bucket_key(CONTEXT_PREFIX, f"bob{i}@im.wechat", CONTEXT_BUCKETS) != alice_key
            )
            bob_message = fake.message(bob, "hello")
            fake.deliver(TOKEN, bob_message)
            await eventually(lambda: any(m.peer_id == bob for m in s.seen))
            store.keys_per_scope = 10_000
            result = await s.host.client(PLUGIN_ID).send(request(connection_id, channel_id, bob, "hi bob", "req-bob"))
            assert result.provider_message_id
            assert fake.sent_to(bob)[0]["msg"]["context_token"] == bob_message["context_token"]  # kept in memory
            # a small key limit and many more peers than keys: every message arrives
            store.keys_per_scope = 80
            seen_before = len(s.seen)
            peers = [f"p{i}@im.wechat" for i in range(150)]
            fake.deliver(TOKEN, *(fake.message(peer, f"from {peer}") for peer in peers))
            await eventually(lambda: len(s.seen) == seen_before + 150, 30)
            keys = state_keys(s, connection_id)
            context_keys = [k for k in keys if k.startswith(CONTEXT_PREFIX)]
            assert len(context_keys) <= CONTEXT_BUCKETS
            assert len(keys) <= 2 + CONTEXT_BUCKETS + 1  # cursor, seen, the buckets, one send record
            # and a reply to any of them finds its token
            last = fake.bots[TOKEN].log[-1]
            await s.host.client(PLUGIN_ID).send(request(connection_id, channel_id, peers[-1], "hi", "req-p"))
            assert fake.sent_to(peers[-1])[0]["msg"]["context_token"] == last["context_token"]


async def test_logout_leaves_no_state_behind(tmp_path: Path) -> None:
    async with platform() as (fake, server), weixin_stack(tmp_path / "home", fast_config(server.url)) as s:
        connection_id, _ = await s.login(fake, TOKEN, "b1@im.bot")
        fake.deliver(TOKEN, fake.message("alice@im.wechat", "hi"))
        await eventually(lambda: fake.sent_to("alice@im.wechat"))
        assert state_keys(s, connection_id)
        await s.post(f"/api/connections/{connection_id}/logout", None, 200)
        assert state_keys(s, connection_id) == []  # the host dropped the revoked connection's state


# ---------------------------------------------------------------- oversized media references


async def test_an_event_with_huge_media_references_still_fits_and_arrives(tmp_path: Path) -> None:
    async with platform() as (fake, server):
        async with weixin_stack(tmp_path / "home", fast_config(server.url), handler=reply_when_asked) as s:
            await s.login(fake, TOKEN, "b1@im.bot")
            big = "A" * 20_000
            items = [
                {"type": 2, "image_item": {"url": f"https://cdn.example/{i}/{big}", "aeskey": big, "mid_size": i}}
                for i in range(50)
            ]
            items.append({"type": 4, "file_item": {"file_name": big, "media": {"full_url": "https://cdn.example/f"}}})
            fake.deliver(
                TOKEN, fake.message("gina@im.wechat", items=items), fake.message("gina@im.wechat", "reply next")
            )
            await eventually(lambda: fake.sent_to("gina@im.wechat"), 20)
            media_event, text_event = s.seen
            media = media_event.metadata["media"]
            assert len(media) == 50 and media_event.metadata["mediaOmitted"] == 1
            assert media[0]["omitted"] == ["aesKey", "url"] and media[0]["size"] == 0
            assert text_event.content == "reply next"


# ---------------------------------------------------------------- sends


async def test_rate_limit_waits_are_bounded_and_error_text_is_redacted_before_it_is_cut(tmp_path: Path) -> None:
    async with platform() as (fake, server), weixin_stack(tmp_path / "home", fast_config(server.url)) as s:
        connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
        client = s.host.client(PLUGIN_ID)
        for n, (header, expected) in enumerate((("9" * 400, 3600), ("100000000", 3600), ("²", 60), ("0", 1))):
            fake.send_answers.append(Raw("", status=429, headers={"Retry-After": header}))
            with pytest.raises(RpcError) as limited:
                await client.send(request(connection_id, channel_id, "amy@im.wechat", "x", f"req-429-{n}"))
            assert limited.value.code == RATE_LIMITED, limited.value.message
            assert limited.value.data["retryAfterSeconds"] == expected
        # a token straddling the 300th character of an errmsg: masked whole, never in part
        fake.send_answers.append({"ret": -3, "errmsg": "word " * 58 + TOKEN})
        with pytest.raises(RpcError) as refused:
            await client.send(request(connection_id, channel_id, "amy@im.wechat", "x", "req-straddle"))
        assert refused.value.code == INTERNAL_ERROR
        assert TOKEN[:10] not in refused.value.message


async def test_session_expired_behind_an_http_error_status(tmp_path: Path) -> None:
    async with platform() as (fake, server), weixin_stack(tmp_path / "home", fast_config(server.url)) as s:
        one, _ = await s.login(fake, TOKEN, "one@im.bot")
        two, channel_two = await s.login(fake, TOKEN_2, "two@im.bot")
        fake.script_updates(TOKEN, Raw('{"errcode": -14, "errmsg": "session timeout"}', status=401))
        connection = await s.connection_status(one, "error")
        assert connection["error"] == "session_expired"
        fake.send_answers.append(Raw('{"ret": -14, "errmsg": "session timeout"}', status=401))
        with pytest.raises(RpcError) as expired:
            await s.host.client(PLUGIN_ID).send(request(two, channel_two, "amy@im.wechat", "x", "req-401"))
        assert expired.value.code == SESSION_EXPIRED
        assert (await s.connection_status(two, "error"))["error"] == "session_expired"


async def test_long_replies_keep_the_platforms_interval_and_part_limit(tmp_path: Path) -> None:
    async with platform() as (fake, server):
        config = fast_config(server.url, partIntervalMs=300, maxParts=2)
        async with weixin_stack(tmp_path / "home", config) as s:
            connection_id, channel_id = await s.login(fake, TOKEN, "b1@im.bot")
            client = s.host.client(PLUGIN_ID)
            text = "a" * 3990 + "\n\n" + "b" * 3990 + "\n\n" + "c" * 3990  # three parts of 4,000
            await client.send(request(connection_id, channel_id, "dan@im.wechat", text, "req-clean"))
            clean = list(fake.sent)
            # a requestId longer than a state key may be, and a failure after the first part
            request_id = "r" * 600
            fake.send_answers.extend([{"ret": 0}, Raw("oops", status=500, content_type="text/plain")])
            with pytest.raises(RpcError):
                await client.send(request(connection_id, channel_id, "eve@im.wechat", text, request_id))
            await client.send(request(connection_id, channel_id, "eve@im.wechat", text, request_id))
    parts = [m["msg"]["item_list"][0]["text_item"]["text"] for m in clean]
    assert len(parts) == 2  # the part limit: the third part is cut, and the last part says so
    assert parts[0] == "a" * 3990 + "\n\n" and parts[1].startswith("b" * 3900) and parts[1].endswith(TRUNCATED)
    assert clean[1]["at"] - clean[0]["at"] >= 0.29  # partIntervalMs between two parts
    resumed = fake.sent_to("eve@im.wechat")
    assert [m["msg"]["client_id"][-2:] for m in resumed] == ["-0", "-1"]  # the retry sent only the rest
