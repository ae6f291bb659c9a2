"""The long connection end to end: a websocket-linked app, events pushed by the fake platform's
websocket through lark-oapi's client, the host's pipeline and handler, and the reply."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.feishu_vendorcli import samples
from tests.feishu_vendorcli.stack import PLUGIN_ID, Stack, assert_no_secret, log_text, running_stack
from tests.support import eventually

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


async def test_events_over_the_long_connection(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    s = stack
    connection_id = await s.link(connection="websocket", key=None)
    await eventually(lambda: s.fake.ws_sockets, 30)
    frame = await s.fake.push_event(
        samples.message_event(event_id="ws_1", message_id="om_ws1", chat_type="group", content={"text": "over ws"})
    )
    [message] = await s.wait_seen(1, 30)
    assert (message.content, message.peer_type, message.event_id) == ("over ws", "group", "ws_1")
    await eventually(lambda: (frame, 200) in s.fake.ws_acks)
    await eventually(lambda: s.fake.messages)
    assert s.fake.messages[0].path == "/open-apis/im/v1/messages/om_ws1/reply"
    # a reconnect redelivers the message under a new event id: acknowledged, handled once
    again = await s.fake.push_event(
        samples.message_event(
            event_id="ws_1_again", message_id="om_ws1", chat_type="group", content={"text": "over ws"}
        )
    )
    await eventually(lambda: (again, 200) in s.fake.ws_acks)
    third = await s.fake.push_event(
        samples.message_event(event_id="ws_2", message_id="om_ws2", content={"text": "quiet"})
    )
    await eventually(lambda: (third, 200) in s.fake.ws_acks)
    await s.wait_seen(2)
    assert [m.message_id for m in s.seen] == ["om_ws1", "om_ws2"]
    # the connection reports connected once the client is up
    r = await s.api("GET", f"/api/connections/{connection_id}")
    assert r.json()["status"] == "connected"
    health = await s.host.client(PLUGIN_ID).health()
    assert health.connections == {connection_id: "connected"}
    assert_no_secret(s, log_text(caplog))


async def test_logout_closes_the_long_connection(stack: Stack) -> None:
    s = stack
    connection_id = await s.link(connection="websocket", key=None)
    await eventually(lambda: s.fake.ws_sockets, 30)
    r = await s.api("POST", f"/api/connections/{connection_id}/logout")
    assert r.status_code == 200
    await eventually(lambda: not s.fake.ws_sockets, 15)
    connects = s.fake.ws_connects
    import anyio

    await anyio.sleep(0.5)
    assert s.fake.ws_connects == connects  # nothing reconnects after a logout
