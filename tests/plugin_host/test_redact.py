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
