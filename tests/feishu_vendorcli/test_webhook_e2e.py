"""Webhooks end to end: the platform's requests through `/webhooks/{connectionId}`, the real plugin
process, the host's pipeline and handler, and the reply at the fake Open Platform."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from feishu_vendorcli.crypto import EventCipher, signature

from tests.feishu_vendorcli import samples
from tests.feishu_vendorcli.platform_requests import platform_request
from tests.feishu_vendorcli.stack import ENCRYPT_KEY, Stack, assert_no_secret, log_text, running_stack
from tests.support import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


async def post_event(s: Stack, connection_id: str, payload: dict, **kw: object):
    body, headers = platform_request(payload, encrypt_key=kw.pop("key", ENCRYPT_KEY), **kw)  # type: ignore[arg-type]
    return await s.webhook(connection_id, body, headers)


async def test_signed_encrypted_event_reaches_the_handler_and_the_reply_is_sent(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    s = stack
    connection_id = await s.link()
    r = await post_event(s, connection_id, samples.message_event(content={"text": "hi bot"}))
    assert r.status_code == 200, r.text
    assert r.json() == {"msg": "success"}
    [message] = await s.wait_seen(1)
    assert (message.content, message.peer_type, message.peer_id) == ("hi bot", "dm", "ou_user0001")
    assert message.session_id == "feishu:dm:ou_user0001"
    await eventually(lambda: s.fake.messages)
    [sent] = s.fake.messages
    assert sent.path == "/open-apis/im/v1/messages/om_0001/reply"
    assert json.loads(sent.body["content"]) == {"text": "echo: hi bot"}
    assert sent.body["reply_in_thread"] is False and sent.body["msg_type"] == "text"
    assert 0 < len(sent.body["uuid"]) <= 50
    assert sent.token.removeprefix("Bearer ") in s.fake.tokens  # a tenant token the fake issued
    assert_no_secret(s, log_text(caplog))


@pytest.mark.parametrize("encrypted", [False, True])
async def test_url_verification_right_and_wrong_token(stack: Stack, encrypted: bool) -> None:
    s = stack
    key = ENCRYPT_KEY if encrypted else None
    connection_id = await s.link(key=key)
    body, headers = platform_request(samples.url_verification(challenge="c-42"), encrypt_key=key, sign=False)
    r = await s.webhook(connection_id, body, headers)
    assert r.status_code == 200 and r.json() == {"challenge": "c-42"}
    body, headers = platform_request(
        samples.url_verification(token="wrong", challenge="c-43"), encrypt_key=key, sign=False
    )
    r = await s.webhook(connection_id, body, headers)
    assert r.status_code == 401 and "c-43" not in r.text
    assert s.seen == [] and s.fake.send_attempts == []


def _refused_requests() -> dict[str, tuple[bytes, dict[str, str]]]:
    event = samples.message_event(event_id="ev_refused", message_id="om_refused")
    good_body, good_headers = platform_request(event, encrypt_key=ENCRYPT_KEY)
    tampered = dict(good_headers, **{"X-Lark-Signature": "0" * 64})
    unsigned = {"Content-Type": "application/json"}
    stale_body, stale_headers = platform_request(event, encrypt_key=ENCRYPT_KEY, timestamp=time.time() - 3600)
    wrong_token = platform_request(samples.message_event(token="nope"), encrypt_key=ENCRYPT_KEY)
    unknown = platform_request({"schema": "7.0", "header": {}, "event": {}}, encrypt_key=ENCRYPT_KEY)
    plain_body = json.dumps(event).encode()
    ts = str(int(time.time()))
    plain_signed = {
        "X-Lark-Request-Timestamp": ts,
        "X-Lark-Request-Nonce": "n",
        "X-Lark-Signature": signature(ts, "n", ENCRYPT_KEY, plain_body),
    }
    return {
        "bad signature": (good_body, tampered),
        "missing signature": (good_body, unsigned),
        "stale timestamp": (stale_body, stale_headers),
        "wrong token": wrong_token,
        "unknown schema": unknown,
        "plain body with a key set": (plain_body, plain_signed),
        "not JSON": (b"\xff\xfe garbage", unsigned),
    }


async def test_every_refusal_answers_4xx_with_no_event_and_no_send(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = stack
    connection_id = await s.link()
    for case, (body, headers) in _refused_requests().items():
        r = await s.webhook(connection_id, body, headers)
        assert 400 <= r.status_code < 500, (case, r.status_code, r.text)
    # an encrypted body for a connection with no encrypt key (a token-only connection)
    token_only = await s.link(key=None, app_id="cli_fake0002")
    body, headers = platform_request(samples.message_event(), encrypt_key=ENCRYPT_KEY)
    r = await s.webhook(token_only, body, headers)
    assert r.status_code == 400 and "no encrypt key" in r.text
    # a good request afterwards still goes through: the refusals changed nothing
    r = await post_event(
        s, connection_id, samples.message_event(event_id="ev_ok", message_id="om_ok", content={"text": "quiet"})
    )
    assert r.status_code == 200
    [message] = await s.wait_seen(1)
    assert message.message_id == "om_ok"
    assert s.fake.send_attempts == []
    refusals = [r.getMessage() for r in caplog.records if "webhook refused" in r.getMessage()]
    assert len(refusals) == len(_refused_requests()) + 1, refusals
    for reason in (
        "bad X-Lark-Signature",
        "missing X-Lark-Signature",
        "stale request",
        "wrong verification token",
        "unknown event schema",
        "no encrypt key",
    ):
        assert any(reason in line for line in refusals), reason
    assert_no_secret(s, log_text(caplog))


async def test_redelivery_is_handled_once(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    event = samples.message_event(event_id="ev_dup", message_id="om_dup", content={"text": "once"})
    for _ in range(3):  # the platform retries after a 200 too
        r = await post_event(s, connection_id, event)
        assert r.status_code == 200
    # the same message under a new event id (a reconnect redelivery): the message-id dedupe
    r = await post_event(
        s, connection_id, samples.message_event(event_id="ev_dup_2", message_id="om_dup", content={"text": "once"})
    )
    assert r.status_code == 200
    await eventually(lambda: s.fake.messages)
    r = await post_event(
        s, connection_id, samples.message_event(event_id="ev_next", message_id="om_next", content={"text": "quiet"})
    )
    await s.wait_seen(2)
    assert [m.message_id for m in s.seen] == ["om_dup", "om_next"]
    assert len(s.fake.messages) == 1


async def test_group_and_dm_conversations(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    await post_event(
        s,
        connection_id,
        samples.message_event(
            event_id="e1",
            message_id="om_g",
            chat_type="group",
            chat_id="oc_group1",
            content={"text": "new: in group"},
            mentions=[samples.bot_mention()],
        ),
    )
    await post_event(
        s,
        connection_id,
        samples.message_event(
            event_id="e2",
            message_id="om_d",
            chat_type="p2p",
            chat_id="oc_p2p1",
            sender="ou_alice",
            content={"text": "new: in dm"},
        ),
    )
    await s.wait_seen(2)
    by_id = {m.message_id: m for m in s.seen}
    assert by_id["om_g"].session_id == "feishu:group:oc_group1"
    assert by_id["om_g"].metadata["mentionedBot"] is True
    assert by_id["om_d"].session_id == "feishu:dm:ou_alice" and by_id["om_d"].metadata["chatId"] == "oc_p2p1"
    await eventually(lambda: len(s.fake.messages) == 2)
    sent = {m.body["receive_id"]: m for m in s.fake.messages}
    assert sent["oc_group1"].receive_id_type == "chat_id" and sent["oc_group1"].path == "/open-apis/im/v1/messages"
    assert sent["ou_alice"].receive_id_type == "open_id"


async def test_a_thread_reply(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    await post_event(
        s,
        connection_id,
        samples.message_event(
            event_id="e_t",
            message_id="om_in_thread",
            chat_type="group",
            thread_id="omt_t1",
            root_id="om_root1",
            content={"text": "threaded"},
        ),
    )
    [message] = await s.wait_seen(1)
    assert message.thread_id == "omt_t1" and message.session_id == "feishu:group:oc_chat0001:omt_t1"
    await eventually(lambda: s.fake.messages)
    [sent] = s.fake.messages
    assert sent.path == "/open-apis/im/v1/messages/om_in_thread/reply" and sent.body["reply_in_thread"] is True


async def test_non_text_messages_are_typed(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    cases = {
        "image": {"image_key": "img_v2_1"},
        "file": {"file_key": "file_v2_1", "file_name": "report.pdf"},
        "audio": {"file_key": "file_v2_2", "duration": 1500},
        "media": {"file_key": "file_v2_3", "image_key": "img_v2_3", "file_name": "clip.mp4", "duration": 3000},
        "sticker": {"file_key": "stk_1"},
    }
    for n, (kind, content) in enumerate(cases.items()):
        await post_event(
            s,
            connection_id,
            samples.message_event(event_id=f"e_{kind}", message_id=f"om_{n}", message_type=kind, content=content),
        )
    post = {"title": "T", "content": [[{"tag": "text", "text": "quiet post text"}]]}
    await post_event(
        s,
        connection_id,
        samples.message_event(event_id="e_post", message_id="om_post", message_type="post", content=post),
    )
    await s.wait_seen(6)
    typed = {m.message_type: m for m in s.seen}
    assert set(typed) == {"image", "file", "audio", "media", "sticker", "text"}
    assert typed["image"].metadata["imageKey"] == "img_v2_1"
    assert typed["file"].metadata["fileName"] == "report.pdf"
    assert typed["audio"].metadata["durationMs"] == 1500
    assert typed["media"].metadata["imageKey"] == "img_v2_3"
    assert typed["sticker"].metadata["fileKey"] == "stk_1"
    assert typed["text"].content == "T\nquiet post text" and typed["text"].metadata["feishuMessageType"] == "post"


async def test_schema_1_events_and_bot_added(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    s = stack
    connection_id = await s.link()
    r = await post_event(s, connection_id, samples.bot_added())
    assert r.status_code == 200
    r = await post_event(s, connection_id, samples.v1_message())
    assert r.status_code == 200
    [message] = await s.wait_seen(1)
    assert (message.message_id, message.peer_type, message.content) == ("om_v1_0001", "group", "hi there")
    await eventually(lambda: any("bot_added chat oc_new" in r.getMessage() for r in caplog.records))


async def test_a_released_connection_answers_503_and_takes_no_event(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    await s.host.client("feishu_vendorcli").release(connection_id)  # SPEC 10: another host took it over
    r = await post_event(s, connection_id, samples.message_event(event_id="ev_away", message_id="om_away"))
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    r = await post_event(s, connection_id, samples.message_event(event_id="ev_away", message_id="om_away"))
    assert r.status_code == 503
    assert s.seen == []


DEEP = b"[" * 1200 + b"]" * 1200  # deeper than any JSON decoder goes


def _signed(raw: bytes) -> tuple[bytes, dict[str, str]]:
    """An encrypted, signed body around `raw` as is (json.dumps cannot build what is too deep)."""
    body = json.dumps({"encrypt": EventCipher(ENCRYPT_KEY).encrypt(raw)}).encode()
    ts = str(int(time.time()))
    return body, {
        "Content-Type": "application/json",
        "X-Lark-Request-Timestamp": ts,
        "X-Lark-Request-Nonce": "n1",
        "X-Lark-Signature": signature(ts, "n1", ENCRYPT_KEY, body),
    }


async def test_json_nested_too_deeply_is_a_logged_400_and_odd_fields_still_map(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = stack
    connection_id = await s.link()
    r = await s.webhook(connection_id, b'{"encrypt": ' + DEEP + b"}", {"Content-Type": "application/json"})
    assert r.status_code == 400 and "not a JSON object" in r.text
    body, headers = _signed(b'{"schema": "2.0", "header": ' + DEEP + b"}")
    r = await s.webhook(connection_id, body, headers)
    assert r.status_code == 400 and "not a JSON object" in r.text
    refusals = [r.getMessage() for r in caplog.records if "webhook refused" in r.getMessage()]
    assert len(refusals) == 2, refusals
    # a verified message with a content string too deep to read and a time in non-ASCII digits: it arrives
    event = samples.message_event(event_id="ev_odd", message_id="om_odd")
    event["event"]["message"]["content"] = '{"text": ' + DEEP.decode() + "}"
    event["header"]["create_time"] = event["event"]["message"]["create_time"] = "²"
    r = await post_event(s, connection_id, event)
    assert r.status_code == 200, r.text
    [message] = await s.wait_seen(1)
    assert (message.message_id, message.message_type, message.content) == ("om_odd", "text", "")
