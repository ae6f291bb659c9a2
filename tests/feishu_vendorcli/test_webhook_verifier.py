"""`WebhookVerifier`: every acceptance and refusal rule of the webhook, request by request."""

from __future__ import annotations

import base64
import json
import time

import msgspec
import pytest
from feishu_vendorcli.config import Account
from feishu_vendorcli.crypto import EventCipher, signature
from feishu_vendorcli.events import Route
from feishu_vendorcli.webhook import WebhookVerifier
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_host.sdk import BridgeEvent, WebhookParams
from tests.feishu_vendorcli import samples
from tests.feishu_vendorcli.platform_requests import platform_request

KEY = "enc-key-for-tests"
TOKEN = "verif-token-1"
ROUTE = Route("conn_1", "ch_1", "feishu", samples.APP_ID, samples.BOT_OPEN_ID)


def verifier(*, key: str | None = KEY, token: str | None = TOKEN, window: float = 300) -> WebhookVerifier:
    account = Account(
        app_id=samples.APP_ID, app_secret="s", encrypt_key=key, verification_token=token, connection="webhook"
    )
    return WebhookVerifier(account, window_seconds=window)


def params(body: bytes, headers: dict[str, str], method: str = "POST") -> WebhookParams:
    return WebhookParams(
        connection_id="conn_1",
        method=method,
        path="/webhooks/conn_1",
        query="",
        headers={k.lower(): v for k, v in headers.items()},
        body=base64.b64encode(body).decode(),
    )


def handle(v: WebhookVerifier, body: bytes, headers: dict[str, str], now: float | None = None, **kw: str):
    return v.handle(params(body, headers, **kw), ROUTE, time.time() if now is None else now)


@pytest.mark.parametrize("key", [KEY, None])
def test_challenge_plain_and_encrypted(key: str | None) -> None:
    body, headers = platform_request(samples.url_verification(), encrypt_key=key, sign=False)
    outcome = handle(verifier(key=key), body, headers)
    assert outcome.refusal is None and outcome.challenge
    assert json.loads(outcome.response.body) == {"challenge": "chal-123"}
    assert outcome.response.status == 200 and outcome.events == []


@pytest.mark.parametrize("key", [KEY, None])
def test_challenge_with_a_wrong_token(key: str | None) -> None:
    body, headers = platform_request(samples.url_verification(token="wrong"), encrypt_key=key, sign=False)
    outcome = handle(verifier(key=key), body, headers)
    assert outcome.response.status == 401 and outcome.refusal == "wrong verification token"
    assert "chal-123" not in outcome.response.body


def test_encrypted_challenge_without_a_token_configured_is_answered() -> None:
    body, headers = platform_request(samples.url_verification(token="anything"), encrypt_key=KEY, sign=False)
    assert handle(verifier(token=None), body, headers).challenge


def test_signed_encrypted_event() -> None:
    body, headers = platform_request(samples.message_event(), encrypt_key=KEY)
    outcome = handle(verifier(), body, headers)
    assert outcome.refusal is None and outcome.response.status == 200
    assert [e.message_id for e in outcome.events] == ["om_0001"]


def test_plain_event_with_a_token_only() -> None:
    body, headers = platform_request(samples.message_event(), encrypt_key=None)
    outcome = handle(verifier(key=None), body, headers)
    assert outcome.refusal is None and len(outcome.events) == 1


def test_schema_1_event() -> None:
    body, headers = platform_request(samples.v1_message(), encrypt_key=KEY)
    outcome = handle(verifier(), body, headers)
    assert outcome.refusal is None and outcome.events[0].event_id == "v1-uuid-1"


def _tampered() -> tuple[bytes, dict[str, str]]:
    body, headers = platform_request(samples.message_event(), encrypt_key=KEY)
    headers["X-Lark-Signature"] = signature(headers["X-Lark-Request-Timestamp"], "other", KEY, body)
    return body, headers


def _unsigned() -> tuple[bytes, dict[str, str]]:
    return platform_request(samples.message_event(), encrypt_key=KEY, sign=False)


def _stale() -> tuple[bytes, dict[str, str]]:
    return platform_request(samples.message_event(), encrypt_key=KEY, timestamp=time.time() - 301)


def _future() -> tuple[bytes, dict[str, str]]:
    return platform_request(samples.message_event(), encrypt_key=KEY, timestamp=time.time() + 400)


def _half_signed() -> tuple[bytes, dict[str, str]]:
    body, headers = platform_request(samples.message_event(), encrypt_key=KEY)
    del headers["X-Lark-Request-Nonce"]
    return body, headers


def _wrong_token() -> tuple[bytes, dict[str, str]]:
    return platform_request(samples.message_event(token="nope"), encrypt_key=KEY)


def _unknown_schema() -> tuple[bytes, dict[str, str]]:
    return platform_request({"schema": "9.9", "header": {}, "event": {}}, encrypt_key=KEY)


def _plain_with_key() -> tuple[bytes, dict[str, str]]:
    body, _ = platform_request(samples.message_event(), encrypt_key=None)
    ts, nonce = str(int(time.time())), "n1"
    return body, {
        "X-Lark-Request-Timestamp": ts,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": signature(ts, nonce, KEY, body),
    }


def _wrong_key() -> tuple[bytes, dict[str, str]]:
    body = json.dumps(
        {"encrypt": EventCipher("another-key").encrypt(json.dumps(samples.message_event()).encode())}
    ).encode()
    ts, nonce = str(int(time.time())), "n1"
    return body, {
        "X-Lark-Request-Timestamp": ts,
        "X-Lark-Request-Nonce": nonce,
        "X-Lark-Signature": signature(ts, nonce, KEY, body),
    }


def _not_json() -> tuple[bytes, dict[str, str]]:
    return b"<xml/>", {}


REFUSALS = {
    "bad signature": (_tampered, 401, "bad X-Lark-Signature"),
    "missing signature": (_unsigned, 401, "missing X-Lark-Signature"),
    "incomplete signature headers": (_half_signed, 401, "incomplete"),
    "stale timestamp": (_stale, 401, "stale request"),
    "timestamp from the future": (_future, 401, "stale request"),
    "wrong token": (_wrong_token, 401, "wrong verification token"),
    "unknown schema": (_unknown_schema, 400, "unknown event schema"),
    "plain body while a key is set": (_plain_with_key, 400, "plain body"),
    "encrypted under another key": (_wrong_key, 400, "cannot decrypt"),
    "not JSON": (_not_json, 400, "not a JSON object"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_answer_4xx_and_no_event(case: str) -> None:
    build, status, reason = REFUSALS[case]
    body, headers = build()
    outcome = handle(verifier(), body, headers)
    assert outcome.response.status == status, outcome
    assert outcome.events == []
    assert outcome.refusal is not None and reason in outcome.refusal


def test_encrypted_body_without_a_key_is_refused() -> None:
    body, headers = platform_request(samples.message_event(), encrypt_key=KEY)
    outcome = handle(verifier(key=None), body, headers)
    assert outcome.response.status == 400 and outcome.events == []
    assert "no encrypt key" in (outcome.refusal or "")


def test_nothing_configured_refuses_everything() -> None:
    body, headers = platform_request(samples.message_event(), encrypt_key=None)
    outcome = handle(verifier(key=None, token=None), body, headers)
    assert outcome.response.status == 403 and outcome.events == []


def test_only_post_is_accepted() -> None:
    body, headers = platform_request(samples.message_event(), encrypt_key=KEY)
    outcome = handle(verifier(), body, headers, method="GET")
    assert outcome.response.status == 405 and outcome.events == []


def test_the_window_is_configurable() -> None:
    body, headers = platform_request(samples.message_event(), encrypt_key=KEY, timestamp=time.time() - 30)
    assert handle(verifier(window=10), body, headers).refusal is not None
    assert handle(verifier(window=60), body, headers).refusal is None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    body=st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
    headers=st.dictionaries(
        st.sampled_from(["x-lark-request-timestamp", "x-lark-request-nonce", "x-lark-signature", "content-type"]),
        st.text(max_size=70),
        max_size=4,
    ),
    key=st.sampled_from([KEY, None]),
)
def test_any_request_is_answered_and_only_a_proven_one_yields_events(
    body: bytes, headers: dict[str, str], key: str | None
) -> None:
    outcome = handle(verifier(key=key), body, headers)
    assert 200 <= outcome.response.status < 500
    if outcome.response.status != 200:
        assert outcome.refusal and outcome.events == []
    else:  # random bytes are never a signed, encrypted event, nor a token-bearing one
        assert outcome.events == []


@settings(max_examples=200, deadline=None)
@given(payload=json_values)
def test_the_mapping_survives_any_json(payload: object) -> None:
    from feishu_vendorcli.events import UnknownSchema, envelope, map_event

    try:
        env = envelope(payload)
    except UnknownSchema:
        return
    for bridge in map_event(env, ROUTE).events:
        msgspec.json.decode(msgspec.json.encode(bridge), type=BridgeEvent)


@settings(max_examples=100, deadline=None)
@given(
    event=json_values.filter(lambda v: isinstance(v, dict)), message=json_values.filter(lambda v: isinstance(v, dict))
)
def test_message_events_with_random_fields_map_or_are_ignored(event: dict, message: dict) -> None:
    from feishu_vendorcli.events import envelope, map_event

    payload = samples.message_event()
    payload["event"].update(event)
    if isinstance(payload["event"].get("message"), dict):
        payload["event"]["message"].update(message)
    mapped = map_event(envelope(payload), ROUTE)
    for bridge in mapped.events:
        # what the host decodes, with every constraint of the wire shape checked
        msgspec.json.decode(msgspec.json.encode(bridge), type=BridgeEvent)
