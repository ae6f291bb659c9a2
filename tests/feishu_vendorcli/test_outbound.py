"""Send planning: receive id types, `uuid` per part, text split at the platform's body limit."""

from __future__ import annotations

import json

import msgspec
import pytest
from feishu_vendorcli.outbound import (
    UUID_MAX,
    _body_size,
    message_uuid,
    plan,
    receive_id_type,
    split_text,
    text_content,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_host.errors import INVALID_PARAMS, UNSUPPORTED, RpcError
from plugin_host.protocol import Target
from plugin_host.sdk import SendRequest


@pytest.mark.parametrize(
    ("peer", "peer_type", "expected"),
    [
        ("oc_1", "group", "chat_id"),
        ("oc_1", "dm", "chat_id"),
        ("ou_1", "dm", "open_id"),
        ("on_1", "dm", "union_id"),
        ("a@b.c", "dm", "email"),
        ("12345", "dm", "user_id"),
        ("12345", "group", "chat_id"),
    ],
)
def test_receive_id_type(peer: str, peer_type: str, expected: str) -> None:
    assert receive_id_type(peer, peer_type) == expected


def test_receive_id_type_override() -> None:
    assert receive_id_type("ou_1", "dm", "user_id") == "user_id"
    assert receive_id_type("ou_1", "dm", "bogus") == "open_id"


def test_uuid_is_stable_short_and_distinct() -> None:
    long_request = "out_ch_123:feishu:group:oc_" + "x" * 300 + ":abcdef"
    first = message_uuid("conn_1", long_request, 0)
    assert first == message_uuid("conn_1", long_request, 0)
    assert len(first) <= UUID_MAX
    assert len({first, message_uuid("conn_1", long_request, 1), message_uuid("conn_2", long_request, 0)}) == 3


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=1, max_size=3000), st.integers(min_value=256, max_value=2000))
def test_split_keeps_every_character_within_the_limit(text: str, limit: int) -> None:
    parts = split_text(text, limit)
    assert "".join(parts) == text
    assert all(_body_size(p) <= limit or len(p) == 1 for p in parts)


def test_split_measures_json_escapes_and_prefers_newlines() -> None:
    text = ('line with "quotes" and ü\n' * 400).strip()
    parts = split_text(text, 2048)
    assert len(parts) > 1 and all(_body_size(p) <= 2048 for p in parts)
    assert all(p.endswith("\n") for p in parts[:-1])
    # the body exactly as the plugin sends it
    body = msgspec.json.encode(
        {"receive_id": "oc_" + "x" * 40, "msg_type": "text", "content": text_content(parts[0]), "uuid": "u" * 42}
    )
    assert len(body) <= 2048
    assert json.loads(json.loads(body)["content"])["text"] == parts[0]


def _request(**target: object) -> SendRequest:
    return SendRequest(
        request_id="req-1",
        connection_id="conn_1",
        channel_id="ch_1",
        kind="feishu",
        target=Target(**{"peer_id": "oc_1", "peer_type": "group", **target}),
        content="x" * 700,
        content_type="text",
        metadata={},
    )


def test_plan_reply_in_thread_and_parts() -> None:
    parts = list(plan(_request(thread_id="omt_1", reply_to_message_id="om_9"), limit_bytes=512))
    assert len(parts) >= 2 and len({p.uuid for p in parts}) == len(parts)
    assert all(p.reply_to == "om_9" and p.in_thread for p in parts)


def test_plan_thread_without_reply_target_uses_the_known_root() -> None:
    parts = list(plan(_request(thread_id="omt_1"), limit_bytes=10_000, thread_root="om_root"))
    assert [(p.reply_to, p.in_thread) for p in parts] == [("om_root", True)]
    parts = list(plan(_request(), limit_bytes=10_000))
    assert [(p.reply_to, p.in_thread) for p in parts] == [(None, False)]


def test_plan_refuses_what_it_cannot_send() -> None:
    bad = _request()
    with pytest.raises(RpcError) as err:
        list(plan(msgspec.structs.replace(bad, content_type="image"), limit_bytes=1000))
    assert err.value.code == UNSUPPORTED  # SPEC 3.7: a content type the connector does not send
    with pytest.raises(RpcError) as empty:
        list(plan(msgspec.structs.replace(bad, content=""), limit_bytes=1000))
    assert empty.value.code == INVALID_PARAMS
