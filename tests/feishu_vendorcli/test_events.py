"""The one event mapping (webhook and long connection): peers, threads, mentions, every message type."""

from __future__ import annotations

import pytest
from feishu_vendorcli.events import Route, UnknownSchema, envelope, map_event

from tests.feishu_vendorcli import samples

ROUTE = Route("conn_1", "ch_1", "feishu", samples.APP_ID, samples.BOT_OPEN_ID)


def one(payload: dict) -> dict:
    mapped = map_event(envelope(payload), ROUTE)
    assert len(mapped.events) == 1, mapped
    import msgspec

    return msgspec.to_builtins(mapped.events[0])


def test_dm_text() -> None:
    event = one(samples.message_event())
    assert event["eventId"] == "ev_0001" and event["messageId"] == "om_0001"
    assert (event["peerType"], event["peerId"], event["userId"]) == ("dm", "ou_user0001", "ou_user0001")
    assert event["messageType"] == "text" and event["content"] == "hello"
    assert event["metadata"]["chatId"] == "oc_chat0001"
    assert event["timestamp"] == "2026-05-28T20:26:40.123Z"
    assert (event["connectionId"], event["channelId"], event["accountId"]) == ("conn_1", "ch_1", samples.APP_ID)


def test_group_with_bot_mention_and_thread() -> None:
    payload = samples.message_event(
        chat_type="group",
        content={"text": "@_user_1 what is up @_user_2"},
        mentions=[samples.bot_mention(), {"key": "@_user_2", "id": {"open_id": "ou_other"}, "name": "Ann"}],
        thread_id="omt_thread1",
        root_id="om_root",
    )
    event = one(payload)
    assert (event["peerType"], event["peerId"]) == ("group", "oc_chat0001")
    assert event["threadId"] == "omt_thread1" and event["metadata"]["rootId"] == "om_root"
    assert event["content"] == "what is up @Ann"
    assert event["metadata"]["mentionedBot"] is True
    assert [m["isBot"] for m in event["metadata"]["mentions"]] == [True, False]


def test_group_without_bot_mention() -> None:
    event = one(samples.message_event(chat_type="group"))
    assert event["metadata"]["mentionedBot"] is False and event["threadId"] is None


def test_post_text_is_extracted() -> None:
    post = {
        "title": "Weekly",
        "content": [
            [{"tag": "text", "text": "first "}, {"tag": "a", "text": "link", "href": "https://x"}],
            [{"tag": "at", "user_id": "@_user_1", "user_name": "Fake Bot"}, {"tag": "text", "text": "second"}],
            [{"tag": "img", "image_key": "img_v2_1"}],
        ],
    }
    event = one(samples.message_event(message_type="post", content=post, mentions=[samples.bot_mention()]))
    assert event["messageType"] == "text"
    assert event["content"] == "Weekly\nfirst link\nsecond"
    assert event["metadata"]["feishuMessageType"] == "post" and event["metadata"]["imageKeys"] == ["img_v2_1"]


def test_post_in_a_locale_wrapper() -> None:
    post = {"zh_cn": {"title": "", "content": [[{"tag": "text", "text": "你好"}]]}}
    assert one(samples.message_event(message_type="post", content=post))["content"] == "你好"


@pytest.mark.parametrize(
    ("message_type", "content", "expected"),
    [
        ("image", {"image_key": "img_1"}, {"imageKey": "img_1"}),
        ("file", {"file_key": "file_1", "file_name": "a.pdf"}, {"fileKey": "file_1", "fileName": "a.pdf"}),
        ("audio", {"file_key": "file_2", "duration": 2000}, {"fileKey": "file_2", "durationMs": 2000}),
        (
            "media",
            {"file_key": "file_3", "image_key": "img_3", "file_name": "v.mp4", "duration": 5},
            {"fileKey": "file_3", "imageKey": "img_3", "fileName": "v.mp4", "durationMs": 5},
        ),
        ("sticker", {"file_key": "stk_1"}, {"fileKey": "stk_1"}),
    ],
)
def test_media_is_typed_with_its_keys(message_type: str, content: dict, expected: dict) -> None:
    event = one(samples.message_event(message_type=message_type, content=content))
    assert event["messageType"] == message_type and event["content"] == ""
    for key, value in expected.items():
        assert event["metadata"][key] == value


def test_unknown_message_types_are_kept_not_dropped() -> None:
    event = one(samples.message_event(message_type="share_chat", content={"chat_id": "oc_shared"}))
    assert event["messageType"] == "share_chat" and event["metadata"]["content"] == {"chat_id": "oc_shared"}


def test_the_bots_own_messages_are_ignored() -> None:
    payload = samples.message_event(sender=samples.BOT_OPEN_ID, sender_type="app")
    mapped = map_event(envelope(payload), ROUTE)
    assert mapped.events == [] and mapped.ignored


def test_schema_1_message() -> None:
    event = one(samples.v1_message())
    assert event["eventId"] == "v1-uuid-1" and event["messageId"] == "om_v1_0001"
    assert (event["peerType"], event["peerId"]) == ("group", "oc_chat0002")
    assert event["content"] == "hi there" and event["metadata"]["mentionedBot"] is True
    assert event["timestamp"] == "2026-05-28T20:26:40.500Z"


def test_bot_added_is_a_notice() -> None:
    mapped = map_event(envelope(samples.bot_added()), ROUTE)
    assert mapped.events == [] and mapped.notice is not None
    assert (mapped.notice.what, mapped.notice.chat_id) == ("bot_added", "oc_new")


@pytest.mark.parametrize(
    "payload",
    [
        [],
        {"schema": "3.0", "header": {}, "event": {}},
        {"schema": "2.0", "header": {"event_type": "x"}, "event": {}},
        {"type": "event_callback", "event": {"type": "message"}},
        {"hello": "world"},
    ],
)
def test_unknown_schemas(payload: object) -> None:
    with pytest.raises(UnknownSchema):
        envelope(payload)


def test_other_event_types_are_ignored() -> None:
    payload = samples.message_event()
    payload["header"]["event_type"] = "im.message.message_read_v1"
    mapped = map_event(envelope(payload), ROUTE)
    assert mapped.events == [] and "not handled" in (mapped.ignored or "")


def test_a_mention_key_never_matches_inside_a_longer_one() -> None:
    mentions = [
        {"key": f"@_user_{n}", "id": {"open_id": f"ou_u{n}"}, "name": name} for n, name in ((1, "Alice"), (10, "Bob"))
    ]
    event = one(samples.message_event(content={"text": "@_user_10 hello @_user_1, @_user_12"}, mentions=mentions))
    assert event["content"] == "@Bob hello @Alice, @_user_12"  # an unknown key stays as it is


def test_a_non_ascii_digit_in_a_time_is_no_time() -> None:
    payload = samples.message_event()
    payload["header"]["create_time"] = "²"
    payload["event"]["message"]["create_time"] = "１２"  # fullwidth digits: isdigit() says yes, int() too
    event = one(payload)
    assert event["timestamp"].endswith("Z") and event["messageId"] == "om_0001"


def test_content_nested_too_deeply_is_no_content() -> None:
    payload = samples.message_event()
    payload["event"]["message"]["content"] = '{"text": ' + "[" * 1200 + "]" * 1200 + "}"
    event = one(payload)
    assert (event["messageType"], event["content"]) == ("text", "")
