"""The one redaction function: known secrets, token shapes, keyed values; paths and prose survive."""

from __future__ import annotations

import pytest

from plugin_host.redact import MASK, Redactor, redact


@pytest.mark.parametrize(
    "text, secret",
    [
        ("Authorization: Bearer abcdef123456", "abcdef123456"),
        ("curl -H 'authorization: bearer tok_9f8e7d6c5b'", "tok_9f8e7d6c5b"),
        ('{"appSecret": "s3cr3t-value"}', "s3cr3t-value"),
        ("password=hunter22 user=bob", "hunter22"),
        ("app_access_token: t-g1044ghJKL0987", "t-g1044ghJKL0987"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl here", "eyJhbGciOiJIUzI1NiJ9"),
        ("random 6f1c2a9b8d7e4f3a2b1c0d9e8f7a6b5c4d3e2f1a end", "6f1c2a9b8d7e4f3a2b1c0d9e8f7a6b5c4d3e2f1a"),
    ],
)
def test_secrets_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert MASK in out


@pytest.mark.parametrize(
    "text",
    [
        "plugin echo started in /tmp/pytest-of-root/pytest-12/test_something_long_0/home/plugin-data/echo",
        "connection conn_abc is connected; 3 messages delivered",
        "GET /api/plugins 200",
    ],
)
def test_ordinary_text_survives(text: str) -> None:
    assert redact(text) == text


def test_known_secrets_are_masked_even_when_short_and_plain() -> None:
    redactor = Redactor(["plainword", ""])
    redactor.add("xyz")  # under 4 characters: too short to mask safely, ignored
    assert redactor("the value plainword and xyz") == f"the value {MASK} and xyz"


def test_a_secret_containing_another_is_masked_whole() -> None:
    redactor = Redactor(["abcd", "abcdefgh"])
    assert redactor("x abcdefgh y") == f"x {MASK} y"


@pytest.mark.parametrize(
    "text",
    [
        # SPEC 6.4 request ids, platform ids and our own ids are identifiers, not tokens
        "delivery out_conn_l4W3m5oYNwSSEfInd_Bt2pkT:weixin:dm:wxid_abc:3f9a1c2b7d8e9f0a1b2c3d4e dead",
        "user ou_7d8a6e6df7621556ce0d21922b676706ccs in chat oc_a0553eda9014c201e6969b478895c230",
        "message om_dc13264520392913993dd051dba21dcf replied",
        "connection conn_l4W3m5oYNwSSEfInd_Bt2pkT session cs_Zq8v2LpN0xYtWm4rK7sJ1aBc",
        "event 5e3702a84e847582be8db7fb73283c02 uuid 3f1b2c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d",
        "archive sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    ],
)
def test_identifiers_are_not_token_shapes(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    "token",
    [
        "ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ",
        "sk-proj-4f9A8b7C6d5E4f3G2h1I0jKlMnOp",
        "xoxb-1234567890-abcdefghij",
        "t-g1044ghJRUIJJ5ELPPRJBJMZ6ZXE6DL3T3ICDIR5",
        "Zk3pQ9vX2mL7nR4tY8wB1cD6fH0jS5aE",  # 32 mixed characters with no id prefix
    ],
)
def test_token_shapes_are_masked(token: str) -> None:
    assert redact(f"got {token} back") == f"got {MASK} back"


def test_secret_fields_follow_one_rule_for_schemas_and_names() -> None:
    from plugin_host.redact import is_secret_field, mask_secret_fields, secret_values

    schema = {
        "type": "object",
        "properties": {
            "apiBase": {"type": "string"},
            "pin": {"type": "string", "writeOnly": True},
            "login": {"type": "object", "properties": {"pass": {"type": "string", "format": "password"}}},
            "hooks": {"type": "array", "items": {"type": "object", "properties": {"sig": {"x-secret": True}}}},
        },
    }
    config = {
        "apiBase": "https://x",
        "pin": "8642",
        "appSecret": "s-1",
        "login": {"pass": "pw-2", "user": "bob"},
        "hooks": [{"sig": "sg-3", "url": "u"}],
    }
    assert is_secret_field("pin", schema["properties"]["pin"]) and is_secret_field("appSecret")
    assert not is_secret_field("apiBase", schema["properties"]["apiBase"])
    assert sorted(secret_values(config, schema)) == ["8642", "pw-2", "s-1", "sg-3"]
    assert mask_secret_fields(config, schema) == {
        "apiBase": "https://x",
        "pin": MASK,
        "appSecret": MASK,
        "login": {"pass": MASK, "user": "bob"},
        "hooks": [{"sig": MASK, "url": "u"}],
    }


def test_the_schema_served_to_forms_marks_exactly_the_fields_the_host_masks() -> None:
    from plugin_host.redact import mark_secret_fields, mask_secret_fields

    schema = {
        "type": "object",
        "properties": {
            "apiBase": {"type": "string"},
            "signingKey": {"type": "string"},  # secret by its name alone
            "pin": {"type": "string", "writeOnly": True},
            "login": {"type": "object", "properties": {"pass": {"type": "string", "format": "password"}}},
            "hooks": {"type": "array", "items": {"type": "object", "properties": {"accessToken": {"type": "string"}}}},
        },
    }
    marked = mark_secret_fields(schema)
    props = marked["properties"]
    assert [k for k, v in props.items() if v.get("writeOnly") is True] == ["signingKey", "pin"]
    assert props["login"]["properties"]["pass"]["writeOnly"] is True
    assert props["hooks"]["items"]["properties"]["accessToken"]["writeOnly"] is True
    assert "writeOnly" not in props["apiBase"] and "writeOnly" not in schema["properties"]["signingKey"]  # a copy

    config = {"apiBase": "a", "signingKey": "b", "pin": "c", "login": {"pass": "d"}, "hooks": [{"accessToken": "e"}]}
    # a form reading only writeOnly hides what the host masks, and nothing else
    assert mask_secret_fields(config, schema) == mask_secret_fields(config, marked)
    assert mask_secret_fields(config, schema)["apiBase"] == "a"
