"""The admin API agrees with /openapi.json where the red team found it did not (issue 14, Low)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from admin_api.openapi import OPENAPI
from channel_runtime_cli.server import QueryStringFilter, RepeatFilter
from tests.support.admin import running

pytestmark = pytest.mark.anyio


async def test_allow_lists_every_method_of_the_path(tmp_path: Path) -> None:
    async with running(tmp_path / "home") as (_, http):
        answer = await http.options("/api/plugins")
    assert answer.status_code == 405
    documented = {m.upper() for m in OPENAPI["paths"]["/api/plugins"] if m in ("get", "post", "put", "delete")}
    assert documented <= set(answer.headers["allow"].replace(" ", "").split(","))


async def test_no_redirect_is_built_from_the_host_header(tmp_path: Path) -> None:
    async with running(tmp_path / "home") as (_, http):
        answer = await http.get("/metrics/", headers={"Host": "evil.example"})
    assert answer.status_code == 404
    assert "location" not in answer.headers


async def test_tail_follows_the_documented_bounds(tmp_path: Path) -> None:
    from tests.support.admin import plugin_zip

    schema = next(
        p for p in OPENAPI["paths"]["/api/plugins/{plugin_id}/logs"]["get"]["parameters"] if p["name"] == "tail"
    )
    assert schema["schema"]["maximum"] == 1000
    async with running(tmp_path / "home") as (_, http):
        await http.post("/api/plugins", content=plugin_zip(tmp_path), headers={"Content-Type": "application/zip"})
        assert (await http.get("/api/plugins/echo/logs?tail=1000")).status_code == 200
        over = await http.get("/api/plugins/echo/logs?tail=1001")
    assert over.status_code == 400 and over.json()["error"]["details"] == {"parameter": "tail"}


def _record(text: str, name: str = "asyncio") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, "%s", (text,), None)


def test_repeated_lines_are_held_back_and_counted() -> None:
    now = [0.0]
    repeat = RepeatFilter(per_window=5, window=60.0, clock=lambda: now[0])
    passed = [repeat.filter(_record("socket.accept() out of system resource")) for _ in range(1000)]
    assert passed.count(True) == 5
    assert all(repeat.filter(_record(f"line {i}")) for i in range(100))  # different lines all pass
    now[0] = 61.0
    record = _record("socket.accept() out of system resource")
    assert repeat.filter(record)
    assert "995 similar line(s) held back" in record.getMessage()


def test_the_access_log_drops_query_strings() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/webhooks/conn_1?token=abc", "1.1", 200),
        None,
    )
    assert QueryStringFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "GET /webhooks/conn_1 HTTP/1.1" 200'


def test_credentials_mask_their_secrets_not_their_identifiers() -> None:
    from plugin_host.redact import credential_secrets

    credentials = {
        "appId": "cli_a1b2c3d4e5f6",
        "appSecret": "s3cr3t",
        "domain": "lark",
        "nested": {"value": "swordfish-77"},
        "list": ["opensesame-42"],
        "account": "Acme Support Bot",
    }
    secrets = credential_secrets(credentials, public=["Acme Support Bot"])
    assert set(secrets) == {"s3cr3t", "swordfish-77", "opensesame-42"}
