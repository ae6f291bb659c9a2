"""The fast BridgeEvent decoder gives exactly the JSON Schema's verdict (bridge endpoint, event.inbound)."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_host.wire_schemas import bridge_event_validator, decode_bridge_event

VALID: dict[str, Any] = {
    "eventId": "e1",
    "timestamp": "2026-06-02T09:30:00Z",
    "deliveryAttempt": 1,
    "connectionId": "conn_1",
    "channelId": "",
    "kind": "feishu",
    "accountId": "a",
    "peerId": "oc_1",
    "peerType": "group",
    "userId": None,
    "threadId": "t1",
    "messageId": "m1",
    "messageType": "text",
    "content": "hi",
    "metadata": {},
}

odd_values = st.sampled_from(
    [
        None,
        "",
        "x",
        "DM",
        "dm",
        "unknown",
        0,
        1,
        -1,
        1.0,
        2.5,
        True,
        [],
        {},
        {"a": 1},
        ["x"],
        "2026-06-02T09:30:00Z",
        "2026-06-02 09:30:00",
        "2026-13-40T25:61:00Z",
        "2026-06-02T09:30:00.123+08:00",
        "Feishu",
        "we1xin_bot",
        "a" * 70,
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from(sorted(VALID) + ["extra"]), odd_values, max_size=3),
    dropped=st.sets(st.sampled_from(sorted(VALID)), max_size=2),
)
def test_fast_decoder_agrees_with_the_schema(changes: dict[str, Any], dropped: set[str]) -> None:
    body = {k: v for k, v in VALID.items() if k not in dropped}
    body.update(changes)
    schema_ok = bridge_event_validator().is_valid(body)
    event, problems = decode_bridge_event(msgspec.json.encode(body))
    assert (event is not None) == schema_ok, (body, problems)
    assert bool(problems) == (not schema_ok)
    if event is not None:
        assert event.event_id == body["eventId"] and event.peer_type == body["peerType"]


def test_not_json_and_not_an_object() -> None:
    for raw in (b"{", b"[]", b"null", b'"text"'):
        event, problems = decode_bridge_event(raw)
        assert event is None and problems
