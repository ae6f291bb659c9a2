"""Messages, session ids, request ids (SPEC 6.3, 6.4) and ChannelConfig."""

from __future__ import annotations

import hashlib

import msgspec
import pytest

from channel_runtime import ChannelConfig, ChannelIdentity, InboundMessage, OutboundMessage, outbound_request_id
from plugin_host.protocol import BridgeEvent


def inbound(**kw: object) -> InboundMessage:
    fields: dict = {
        "message_id": "om_1",
        "channel_id": "ch_feishu",
        "kind": "feishu",
        "peer_id": "oc_123",
        "peer_type": "group",
        "content": "hi",
    }
    fields.update(kw)
    return InboundMessage(**fields)


@pytest.mark.parametrize(
    ("kind", "peer_type", "peer_id", "thread_id", "expected"),
    [
        ("feishu", "group", "oc_123", None, "feishu:group:oc_123"),
        ("weixin", "dm", "wx_abc", None, "weixin:dm:wx_abc"),
        ("feishu", "group", "oc_123", "omt_9", "feishu:group:oc_123:omt_9"),
        ("weixin", "dm", "wx_abc", "", "weixin:dm:wx_abc"),
    ],
)
def test_session_id(kind: str, peer_type: str, peer_id: str, thread_id: str | None, expected: str) -> None:
    message = inbound(kind=kind, peer_type=peer_type, peer_id=peer_id, thread_id=thread_id)
    assert message.session_id == expected
    out = OutboundMessage(channel_id="c", peer_id=peer_id, peer_type=peer_type, thread_id=thread_id, content="x")
    assert out.session_id(kind) == expected


def test_reply_addresses_the_same_peer_and_thread() -> None:
    message = inbound(thread_id="omt_9")
    reply = message.reply("echo: hi")
    assert reply == OutboundMessage(
        channel_id="ch_feishu",
        peer_id="oc_123",
        peer_type="group",
        thread_id="omt_9",
        reply_to_message_id="om_1",
        inbound_message_id="om_1",
        content="echo: hi",
    )
    assert reply.content_type == "text" and reply.message_id is None
    assert reply.session_id("feishu") == message.session_id

    custom = message.reply("done", finish_reason="stop", metadata={"a": 1}, reply_to_message_id=None)
    assert custom.finish_reason == "stop" and custom.metadata == {"a": 1}
    assert custom.reply_to_message_id is None and custom.inbound_message_id == "om_1"


def test_request_id_with_message_id() -> None:
    out = OutboundMessage(channel_id="ch1", peer_id="wx_abc", content="x", message_id="reply-7")
    assert out.request_id("weixin") == "out_ch1:weixin:dm:wx_abc:reply-7"
    assert outbound_request_id(out, "weixin") == out.request_id("weixin")


def test_request_id_without_message_id_hashes_the_content() -> None:
    out = inbound().reply("echo: hi", finish_reason="stop")
    digest = hashlib.sha256(b"echo: hi" + b"om_1" + b"oc_123" + b"stop").hexdigest()[:24]
    assert out.request_id("feishu") == f"out_ch_feishu:feishu:group:oc_123:{digest}"

    bare = OutboundMessage(channel_id="ch1", peer_id="wx_abc", content="hello")  # None parts count as ""
    digest = hashlib.sha256(b"hello" + b"wx_abc").hexdigest()[:24]
    assert bare.request_id("weixin") == f"out_ch1:weixin:dm:wx_abc:{digest}"
    assert OutboundMessage(channel_id="ch1", peer_id="wx_abc", content="hello", message_id="").request_id(
        "weixin"
    ) == bare.request_id("weixin")

    unicode = OutboundMessage(channel_id="ch1", peer_id="wx_abc", content="你好")
    digest = hashlib.sha256("你好wx_abc".encode()).hexdigest()[:24]
    assert unicode.request_id("weixin").endswith(f":{digest}")


def test_request_id_is_stable_and_distinguishes_messages() -> None:
    a = inbound().reply("one")
    assert a.request_id("feishu") == inbound().reply("one").request_id("feishu")
    assert a.request_id("feishu") != inbound().reply("two").request_id("feishu")
    assert a.request_id("feishu") != inbound(message_id="om_2").reply("one").request_id("feishu")


def test_from_bridge_event() -> None:
    event = msgspec.json.decode(
        b'{"eventId": "evt_1", "timestamp": "2026-06-02T09:30:00Z", "deliveryAttempt": 2,'
        b' "connectionId": "conn_x", "channelId": "ch_1", "kind": "feishu", "accountId": "cli_a",'
        b' "peerId": "oc_123", "peerType": "group", "userId": "ou_1", "threadId": "omt_1",'
        b' "messageId": "om_1", "messageType": "text", "content": "hello", "metadata": {"raw": 1}}',
        type=BridgeEvent,
    )
    message = InboundMessage.from_bridge_event(event)
    assert message == InboundMessage(
        message_id="om_1",
        channel_id="ch_1",
        kind="feishu",
        peer_id="oc_123",
        peer_type="group",
        connection_id="conn_x",
        account_id="cli_a",
        user_id="ou_1",
        thread_id="omt_1",
        content="hello",
        message_type="text",
        timestamp="2026-06-02T09:30:00Z",
        event_id="evt_1",
        delivery_attempt=2,
        metadata={"raw": 1},
    )
    assert message.session_id == "feishu:group:oc_123:omt_1"
    assert InboundMessage.from_bridge_event(event, channel_id="other").channel_id == "other"


def test_messages_encode_camel_case_and_round_trip() -> None:
    message = inbound(thread_id="t")
    data = msgspec.json.encode(message)
    assert b'"messageId":"om_1"' in data and b'"peerType":"group"' in data
    assert msgspec.json.decode(data, type=InboundMessage) == message
    out = message.reply("x")
    assert msgspec.json.decode(msgspec.json.encode(out), type=OutboundMessage) == out


def test_channel_identity() -> None:
    identity = ChannelIdentity(channel_id="ch1", kind="weixin", account_id="wx_bot")
    assert identity == ChannelIdentity(channel_id="ch1", kind="weixin", account_id="wx_bot")
    assert identity.connection_id is None


def test_channel_config_equality() -> None:
    a = ChannelConfig(
        enabled=True,
        kind="plugin",
        mode="stdio",
        account_id="a1",
        display_name="Bot",
        config={"connectionId": "conn_1"},
        secrets={"token": "t0p-s3cret-value"},
    )
    same = ChannelConfig(
        True, "plugin", "stdio", "a1", "Bot", {"connectionId": "conn_1"}, {"token": "t0p-s3cret-value"}
    )
    assert a == same
    assert a != ChannelConfig(
        enabled=True,
        kind="plugin",
        mode="stdio",
        account_id="a1",
        display_name="Bot",
        config={"connectionId": "conn_1"},
        secrets={"token": "rotated"},
    )
    assert a != ChannelConfig(
        enabled=False,
        kind="plugin",
        mode="stdio",
        account_id="a1",
        display_name="Bot",
        config={"connectionId": "conn_1"},
        secrets={"token": "t0p-s3cret-value"},
    )
    assert ChannelConfig(kind="memory") == ChannelConfig(kind="memory")
    with pytest.raises(AttributeError):
        a.enabled = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="kind"):
        ChannelConfig()


def test_channel_config_repr_hides_secrets() -> None:
    config = ChannelConfig(kind="http", config={"url": "http://sidecar"}, secrets={"connectorToken": "t0p-s3cret"})
    for text in (repr(config), str(config), f"{config}", repr([config]), repr({"c": config})):
        assert "t0p-s3cret" not in text
        assert "connectorToken" in text and "http://sidecar" in text
