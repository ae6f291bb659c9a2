"""Pure parts of the plugin: typed inbound items, dedupe keys, the dedupe window, text splitting."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from weixin_vendorcli.accounts import SeenWindow
from weixin_vendorcli.backend import decode_answer
from weixin_vendorcli.config import MANIFEST, load_config
from weixin_vendorcli.inbound import EVENT_BUDGET, MAX_FIELD_CHARS, dedupe_key, to_event
from weixin_vendorcli.text import TRUNCATED, split_reply, split_text, utf16_len
from weixin_vendorcli.wire import Updates, WeixinMessage, decode_message


def message(**fields: object) -> WeixinMessage:
    return msgspec.convert({"from_user_id": "u@im.wechat", **fields}, WeixinMessage)


def event(**fields: object):  # type: ignore[no-untyped-def]
    msg = message(**fields)
    return to_event(
        msg, dedupe_key(msg) or "k", connection_id="conn_1", channel_id="ch_1", account_id="b@im.bot", now=0
    )


def test_dedupe_key_prefers_message_id_then_client_id_then_seq() -> None:
    assert dedupe_key(message(message_id=2**63 + 5, client_id="c", seq=3)) == f"m:{2**63 + 5}"
    assert dedupe_key(message(client_id="c", seq=3)) == "c:c"
    assert dedupe_key(message(seq=3)) == "s:3"
    assert dedupe_key(message()) is None


def test_text_items_are_the_content() -> None:
    e = event(
        message_id=9_007_199_254_740_993,
        create_time_ms=1_780_000_000_123,
        item_list=[{"type": 1, "text_item": {"text": "hello"}}, {"type": 1, "text_item": {"text": "world"}}],
    )
    assert (e.message_type, e.content, e.peer_type, e.peer_id) == ("text", "hello\nworld", "dm", "u@im.wechat")
    assert e.message_id == "9007199254740993" and e.event_id == "wx:m:9007199254740993"
    assert e.timestamp == "2026-05-28T20:26:40.123Z"


def test_voice_transcript_is_the_content() -> None:
    e = event(
        item_list=[
            {"type": 3, "voice_item": {"text": "call me", "playtime": 2300, "media": {"full_url": "https://cdn/v"}}}
        ]
    )
    assert (e.message_type, e.content) == ("voice", "call me")
    assert e.metadata["media"] == [
        {"type": "voice", "media": {"fullUrl": "https://cdn/v"}, "transcript": "call me", "durationMs": 2300}
    ]


def test_media_items_are_typed_with_their_references() -> None:
    image = {"type": 2, "image_item": {"media": {"encrypt_query_param": "q1", "aes_key": "a1"}, "aeskey": "00ff"}}
    file = {"type": 4, "file_item": {"media": {"full_url": "https://cdn/f"}, "file_name": "report.pdf", "len": "2048"}}
    video = {"type": 5, "video_item": {"media": {"encrypt_query_param": "q3"}, "play_length": 7}}
    e = event(item_list=[image, file, video])
    assert e.message_type == "image" and e.content == "[image]"
    kinds = [m["type"] for m in e.metadata["media"]]
    assert kinds == ["image", "file", "video"]
    assert e.metadata["media"][0]["media"] == {"encryptQueryParam": "q1", "aesKey": "a1"}
    assert e.metadata["media"][1]["fileName"] == "report.pdf" and e.metadata["media"][1]["size"] == "2048"
    assert event(item_list=[file]).content == "[file: report.pdf]"
    assert event(item_list=[video]).message_type == "video"


def test_text_with_media_stays_text_and_keeps_the_media() -> None:
    e = event(item_list=[{"type": 1, "text_item": {"text": "look"}}, {"type": 2, "image_item": {"url": "u"}}])
    assert (e.message_type, e.content) == ("text", "look")
    assert e.metadata["media"] == [{"type": "image", "url": "u"}]


def test_unknown_items_are_kept_not_dropped() -> None:
    e = event(item_list=[{"type": 11, "msg_id": 12345678901234567890}])
    assert e.message_type == "unknown"
    assert e.metadata["items"] == [{"type": 11, "msgId": "12345678901234567890"}]


def test_quotes_are_in_metadata() -> None:
    e = event(
        item_list=[
            {
                "type": 1,
                "text_item": {"text": "yes"},
                "ref_msg": {
                    "title": "earlier",
                    "svr_id": 2**60,
                    "message_item": {"type": 1, "text_item": {"text": "ok?"}},
                },
            }
        ]
    )
    assert e.metadata["quote"] == {"title": "earlier", "svrId": str(2**60), "type": "text", "text": "ok?"}


def test_unknown_fields_are_ignored_and_missing_ones_are_null() -> None:
    updates = decode_answer(b'{"ret": 0, "new_field": {"x": 1}, "msgs": [{"seq": 1, "surprise": true}]}', Updates)
    first = decode_message(updates.msgs[0])
    assert first.seq == 1 and first.item_list is None
    assert event(seq=1).content == "" and event(seq=1).message_type == "text"


def test_seen_window_is_bounded_and_keeps_the_newest() -> None:
    window = SeenWindow(size=3)
    for key in "abcd":
        window.add(key)
    assert "a" not in window and all(k in window for k in "bcd")
    assert SeenWindow(window.encoded(), size=3).encoded() == ["b", "c", "d"]
    big = SeenWindow([f"m:{10**19 + i}" for i in range(5000)], size=5000)
    assert len(msgspec.json.encode(big.encoded())) < 64 * 1024


@given(st.text(alphabet=st.sampled_from(["a", "b", " ", "\n", "é", "😀", "中"]), max_size=400), st.integers(2, 60))
def test_split_text_round_trips_within_the_limit(text: str, limit: int) -> None:
    chunks = split_text(text, limit)
    assert "".join(chunks) == text
    assert all(utf16_len(c) <= limit for c in chunks)
    assert all(chunks) or chunks == [""]


def test_split_text_prefers_paragraphs_then_lines_then_spaces() -> None:
    text = "a" * 3000 + "\n\n" + "b" * 3000
    assert split_text(text) == ["a" * 3000 + "\n\n", "b" * 3000]
    words = " ".join(["word"] * 2000)
    chunks = split_text(words)
    assert all(c.endswith(" ") for c in chunks[:-1]) and all(utf16_len(c) <= 4000 for c in chunks)
    assert split_text("x" * 8001) == ["x" * 4000, "x" * 4000, "x"]
    assert split_text("😀" * 2001) == ["😀" * 2000, "😀"]


def test_split_reply_cuts_at_the_part_limit_and_says_so() -> None:
    text = "x" * 4000 * 12
    parts = split_reply(text, 4000, 10)
    assert len(parts) == 10 and all(utf16_len(p) <= 4000 for p in parts)
    assert parts[-1].endswith(TRUNCATED) and "".join(parts[:9]) == "x" * 36000
    assert split_reply("short", 4000, 1) == ["short"]


def test_the_part_interval_and_limit_come_from_the_manifest() -> None:
    outbound = msgspec.json.decode(MANIFEST.read_bytes())["limits"]["outbound"]
    config = load_config({})
    assert (config.part_interval_ms, config.max_parts) == (outbound["minIntervalMs"], outbound["maxRepliesPerInbound"])
    assert load_config({"partIntervalMs": 0, "maxParts": 3}).max_parts == 3


def test_configured_intervals_have_a_floor_in_the_schema_and_in_code() -> None:
    import jsonschema

    schema = msgspec.json.decode(MANIFEST.read_bytes())["configSchema"]
    for name in ("qrPollIntervalMs", "retryDelayMs", "backoffMs"):
        assert schema["properties"][name]["minimum"] >= 100
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({name: 0}, schema)
    config = load_config({"qrPollIntervalMs": 0, "retryDelayMs": 0, "backoffMs": 0})
    assert (config.qr_poll_interval_ms, config.retry_delay_ms, config.backoff_ms) == (100, 100, 100)


def test_every_event_fits_in_one_protocol_message() -> None:
    long = "😀" * (MAX_FIELD_CHARS - 1)  # just under the field cap: kept, 4 bytes a character
    cdn = {"encrypt_query_param": long, "aes_key": long, "full_url": long}
    items = [
        {"type": 2, "image_item": {"media": cdn, "thumb_media": cdn, "aeskey": long, "url": long}} for _ in range(60)
    ]
    items.append({"type": 1, "text_item": {"text": "中" * 100_000}, "ref_msg": {"title": long}})
    items.extend({"type": 99, "msg_id": 2**63} for _ in range(60))
    e = event(message_id=1, item_list=items)
    assert len(msgspec.json.encode(e)) <= EVENT_BUDGET
    assert e.metadata["mediaOmitted"] >= 10 and e.metadata["itemsOmitted"] and e.content.startswith("中")
    too_long = event(item_list=[{"type": 4, "file_item": {"file_name": "f" * (MAX_FIELD_CHARS + 1), "md5": "ab"}}])
    assert too_long.metadata["media"] == [{"type": "file", "md5": "ab", "omitted": ["fileName"]}]
