"""HTTP answers read within a size and a time bound: the one way this plugin reads the platform.

`fetch` streams the body and stops at `limit` bytes (a huge or endless answer is
never buffered), and the whole exchange, body included, runs under one
`fail_after` (httpx's timeouts are per read, so a server dripping a byte at a
time would otherwise hold a call for ever). `retry_after` reads the platform's
wait from its headers.
"""

from __future__ import annotations

import re
from typing import Any

import anyio
import httpx
import msgspec

MAX_RETRY_AFTER_SECONDS = 3600
_DIGITS = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also takes '²'


class Response(msgspec.Struct, frozen=True):
    """An answer read whole, within its limit."""

    status_code: int
    headers: httpx.Headers
    content: bytes


class TooLarge(Exception):
    """The answer went over the limit (its status, for the message)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status} with an answer over the size limit")
        self.status = status


async def fetch(
    http: httpx.AsyncClient, method: str, url: str, *, limit: int, timeout: float, **kwargs: Any
) -> Response:
    """One request; raises `TooLarge`, `TimeoutError` or `httpx.HTTPError`."""
    with anyio.fail_after(timeout):
        async with http.stream(method, url, **kwargs) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise TooLarge(response.status_code)
            return Response(response.status_code, response.headers, bytes(body))


def retry_after(headers: httpx.Headers, default: int = 1) -> int:
    """The platform's wait in seconds (`x-ogw-ratelimit-reset`, else `Retry-After`), 1 s to an hour."""
    for header in ("x-ogw-ratelimit-reset", "retry-after"):
        value = headers.get(header, "").strip()
        if _DIGITS.fullmatch(value):
            return MAX_RETRY_AFTER_SECONDS if len(value) > 9 else max(1, min(int(value), MAX_RETRY_AFTER_SECONDS))
    return default
