"""Sending end to end: tenant token cache and refresh, rate limits, refusals, split text, logout."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

from plugin_host.errors import INTERNAL_ERROR, RATE_LIMITED, REFUSED, UNKNOWN_CONNECTION, UNSUPPORTED, RpcError
from plugin_host.protocol import SendRequest, Target
from tests.feishu_vendorcli import samples
from tests.feishu_vendorcli.fake_platform import Answer
from tests.feishu_vendorcli.platform_requests import platform_request
from tests.feishu_vendorcli.stack import ENCRYPT_KEY, PLUGIN_ID, Stack, assert_no_secret, running_stack
from tests.support import eventually

pytestmark = pytest.mark.anyio

RATE_LIMIT = Answer(429, {"code": 99991400, "msg": "request trigger frequency limit"}, {"x-ogw-ratelimit-reset": "1"})


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with running_stack(tmp_path) as s:
        yield s


def request(connection_id: str, request_id: str, content: str = "hello", **target: object) -> SendRequest:
    return SendRequest(
        request_id=request_id,
        connection_id=connection_id,
        channel_id="ch_x",
        kind="feishu",
        target=Target(**{"peer_id": "oc_group1", "peer_type": "group", **target}),
        content=content,
        content_type="text",
        metadata={},
    )


async def inbound(s: Stack, connection_id: str, text: str, n: int = 1) -> None:
    body, headers = platform_request(
        samples.message_event(event_id=f"ev_{n}", message_id=f"om_{n}", content={"text": text}), encrypt_key=ENCRYPT_KEY
    )
    r = await s.webhook(connection_id, body, headers)
    assert r.status_code == 200, r.text


async def test_the_tenant_token_is_cached(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    issued = len(s.fake.issued_tokens())
    client = s.host.client(PLUGIN_ID)
    for n in range(3):
        await client.send(request(connection_id, f"r{n}"))
    assert len(s.fake.issued_tokens()) == issued + 1
    assert len({m.token for m in s.fake.messages}) == 1


async def test_a_token_within_the_refresh_margin_is_renewed(stack: Stack) -> None:
    s = stack
    s.fake.token_lifetime = 600  # exactly the 10-minute margin: stale as soon as it is issued
    connection_id = await s.link()
    issued = len(s.fake.issued_tokens())
    client = s.host.client(PLUGIN_ID)
    for n in range(2):
        await client.send(request(connection_id, f"r{n}"))
    assert len(s.fake.issued_tokens()) == issued + 2


async def test_an_invalid_token_answer_drops_the_token_and_retries_once(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    client = s.host.client(PLUGIN_ID)
    await client.send(request(connection_id, "warm-up"))
    issued = len(s.fake.issued_tokens())
    s.fake.revoke_tokens()  # the platform invalidated the cached token
    result = await client.send(request(connection_id, "after-revoke"))
    assert result.provider_message_id and not result.duplicate
    assert len(s.fake.issued_tokens()) == issued + 1
    first, second = s.fake.send_attempts[-2:]
    assert first.token != second.token and first.body["uuid"] == second.body["uuid"]
    # a token that stays invalid is retried only once
    s.fake.send_script = [Answer(400, {"code": 99991663, "msg": "Invalid access token"})] * 2
    attempts = len(s.fake.send_attempts)
    with pytest.raises(RpcError) as err:
        await client.send(request(connection_id, "still-invalid"))
    assert len(s.fake.send_attempts) == attempts + 2
    assert "99991663" in err.value.message
    # the credentials just got a token: not a refusal of the message, a failure the host retries
    assert err.value.code == INTERNAL_ERROR


async def test_a_rate_limit_answers_32015_with_the_reset_seconds(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    s.fake.send_script = [RATE_LIMIT]
    with pytest.raises(RpcError) as err:
        await s.host.client(PLUGIN_ID).send(request(connection_id, "limited"))
    assert err.value.code == RATE_LIMITED and err.value.data["retryAfterSeconds"] == 1


async def test_rate_limit_codes_and_odd_reset_headers(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    client = s.host.client(PLUGIN_ID)
    cases = [
        (Answer(400, {"code": 230020, "msg": "chat frequency limit"}), 1),  # the per-chat limit of the IM API
        (Answer(429, {"code": 99991400, "msg": "limit"}, {"x-ogw-ratelimit-reset": "²"}), 1),  # not a number
        (Answer(429, {"code": 99991400, "msg": "limit"}, {"x-ogw-ratelimit-reset": "9" * 400}), 3600),
    ]
    for n, (answer, wait) in enumerate(cases):
        s.fake.send_script = [answer]
        with pytest.raises(RpcError) as err:
            await client.send(request(connection_id, f"limited-{n}"))
        assert err.value.code == RATE_LIMITED, err.value.message
        assert err.value.data["retryAfterSeconds"] == wait


async def test_a_message_id_that_is_not_a_string_still_counts_as_sent(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    s.fake.send_script = [Answer(200, {"code": 0, "msg": "ok", "data": {"message_id": 7_000_000_000_000_000_001}})]
    result = await s.host.client(PLUGIN_ID).send(request(connection_id, "numeric-id"))
    assert not result.duplicate and result.provider_message_id is None
    assert len(s.fake.send_attempts) == 1  # accepted once: nothing for a retry to replay


async def test_non_text_content_is_unsupported(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    image = msgspec.structs.replace(request(connection_id, "an-image"), content_type="image")
    with pytest.raises(RpcError) as err:
        await s.host.client(PLUGIN_ID).send(image)
    assert err.value.code == UNSUPPORTED and s.fake.send_attempts == []


async def test_a_thread_root_survives_a_plugin_restart(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    event = samples.message_event(
        event_id="ev_thr",
        message_id="om_in_thread",
        chat_type="group",
        thread_id="omt_kept",
        root_id="om_root_kept",
        content={"text": "quiet, in a thread"},
    )
    body, headers = platform_request(event, encrypt_key=ENCRYPT_KEY)
    assert (await s.webhook(connection_id, body, headers)).status_code == 200
    await s.wait_seen(1)
    pid = s.host.supervisor(PLUGIN_ID).pid  # type: ignore[union-attr]
    await s.host.restart(PLUGIN_ID)
    assert s.host.supervisor(PLUGIN_ID).pid != pid  # type: ignore[union-attr]
    await s.wait_served(connection_id)
    # a send into the thread with no message to reply to: it lands in the thread, found in host state
    await s.host.client(PLUGIN_ID).send(request(connection_id, "into-thread", thread_id="omt_kept"))
    [sent] = s.fake.messages
    assert sent.path == "/open-apis/im/v1/messages/om_root_kept/reply" and sent.body["reply_in_thread"] is True


async def test_a_rate_limited_reply_waits_and_goes_out_once_with_the_same_uuid(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    s.fake.send_script = [RATE_LIMIT]
    await inbound(s, connection_id, "please answer")
    await eventually(lambda: s.fake.messages, 20)
    first, second = s.fake.send_attempts
    assert first.body["uuid"] == second.body["uuid"]
    assert second.at - first.at >= 0.9  # the delivery waited for the platform's reset
    assert len(s.fake.messages) == 1


async def test_a_platform_refusal_is_final_with_its_code_and_message(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    s.fake.send_script = [Answer(400, {"code": 230002, "msg": "Bot is not in the chat"})]
    with pytest.raises(RpcError) as err:
        await s.host.client(PLUGIN_ID).send(request(connection_id, "refused"))
    assert err.value.code == REFUSED
    assert "230002" in err.value.message and "Bot is not in the chat" in err.value.message
    # through the outbox: dead at once, not retried
    s.fake.send_script = [Answer(400, {"code": 230002, "msg": "Bot is not in the chat"})]
    await inbound(s, connection_id, "answer me")

    async def dead() -> list:
        r = await s.api("GET", "/api/deliveries", params={"status": "failed"})
        return [d for d in r.json() if d["direction"] == "outbound"]

    [delivery] = await eventually(dead)
    assert delivery["attempts"] == 1 and "Bot is not in the chat" in delivery["lastError"]


async def test_a_completed_send_is_not_sent_again(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    client = s.host.client(PLUGIN_ID)
    first = await client.send(request(connection_id, "same-request"))
    again = await client.send(request(connection_id, "same-request"))
    assert again.duplicate and again.provider_message_id == first.provider_message_id
    assert len(s.fake.send_attempts) == 1


async def test_long_text_is_split(tmp_path: Path) -> None:
    async with running_stack(tmp_path, config={"textLimitBytes": 512}) as s:
        connection_id = await s.link()
        text = ("word " * 120 + "\n") * 3
        result = await s.host.client(PLUGIN_ID).send(request(connection_id, "long-1", text))
        parts = [json.loads(m.body["content"])["text"] for m in s.fake.messages]
        assert len(parts) >= 4 and "".join(parts) == text
        assert all(len(json.dumps(m.body).encode()) <= 512 for m in s.fake.messages)
        assert len({m.body["uuid"] for m in s.fake.messages}) == len(parts)
        assert result.provider_message_id == s.fake.messages[0].message_id


async def test_logout_forgets_the_app(stack: Stack) -> None:
    s = stack
    connection_id = await s.link()
    client = s.host.client(PLUGIN_ID)
    await client.send(request(connection_id, "before"))
    r = await s.api("POST", f"/api/connections/{connection_id}/logout")
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    health = await client.health()
    assert connection_id not in (health.connections or {})
    with pytest.raises(RpcError) as err:
        await client.send(request(connection_id, "after"))
    assert err.value.code == UNKNOWN_CONNECTION
    body, headers = platform_request(samples.message_event(event_id="late"), encrypt_key=ENCRYPT_KEY)
    r = await s.webhook(connection_id, body, headers)
    assert r.status_code == 404 and s.seen == []
    assert_no_secret(s)
