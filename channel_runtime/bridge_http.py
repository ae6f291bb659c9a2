"""The forwarder's HTTP client: aiohttp, for its one request shape (a JSON POST to one URL, kept alive).

Why not httpx here: a profile of the sidecar bench (`bench/sidecar.py`) put httpx, httpcore
and h11 (request building, URL merging, the pool, a timeout scope per read and write,
anyio's stream wrappers) at about 70% of the sidecar's CPU per forwarded event; aiohttp,
asyncio-native with a C HTTP parser, costs a fraction of that for the same POST (measured
side by side: 4-8x less client CPU per request at 32 in flight). The service runs on
asyncio (uvicorn's loop), which aiohttp needs.

`BridgeClient.post` answers the parts the forwarder reads (status, headers, a bounded body)
or raises `BridgeError` when no whole answer came; it never sends a request again itself:
retrying is the forwarder's, with `deliveryAttempt` + 1. An injected httpx transport (tests)
keeps the forwarder on httpx.
"""

from __future__ import annotations

import ssl
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import msgspec

BODY_LIMIT = 64 * 1024  # bytes of an answer's body kept (the forwarder reads an error code, retryAfterSeconds)
# a connection idle this long is not reused: servers close idle ones (uvicorn after 5 s), and a request
# sent as the close crosses it fails (it would then wait for the forwarder's retry)
IDLE_EXPIRY = 4.0


class BridgeError(Exception):
    """The exchange failed before a whole answer arrived; `kind` names how (for the forwarder's error text)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class BridgeAnswer:
    """The parts of an HTTP answer the forwarder uses; `json()` and `headers.get()` as httpx's Response has them."""

    status_code: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    content: bytes  # at most BODY_LIMIT bytes

    def json(self) -> Any:
        try:
            return msgspec.json.decode(self.content)
        except msgspec.DecodeError as exc:
            raise ValueError(str(exc)) from None


class BridgeClient:
    """POSTs to one URL over a keep-alive pool of at most `connections` connections (one per delivery slot).

    Use as `async with BridgeClient(...) as client:`; `post` may be called concurrently.
    """

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        *,
        timeout: float,
        connections: int,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.url = url
        self._headers = headers
        self._timeout = timeout
        self._connections = connections
        self._tls = tls
        self._proxy = proxy_for(url)  # read once: aiohttp's trust_env reads the environment and ~/.netrc per request
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BridgeClient:
        connector = aiohttp.TCPConnector(
            limit=self._connections, keepalive_timeout=IDLE_EXPIRY, ssl=self._tls if self._tls is not None else True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=self._timeout),  # the whole exchange, connect included
            trust_env=False,  # the proxy is resolved once (above): trust_env cost ~0.7 ms of CPU per request
            cookie_jar=aiohttp.DummyCookieJar(),  # the bridge sets none we would send back
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(self, body: bytes) -> BridgeAnswer:
        session = self._session
        if session is None:
            raise BridgeError("ClientClosed")
        try:
            async with session.post(self.url, data=body, proxy=self._proxy) as response:
                content = await _bounded_body(response)
                headers = {name.lower(): value for name, value in response.headers.items()}
                return BridgeAnswer(response.status, headers, content)
        except (TimeoutError, aiohttp.ClientError, UnicodeError, ValueError) as exc:
            raise BridgeError(type(exc).__name__) from None


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for `url` (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY; NO_PROXY), None for none."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]  # in the stdlib, not in typeshed
    if not proxy or bypass(parts.hostname or "", proxies):
        return None
    return proxy


async def _bounded_body(response: aiohttp.ClientResponse) -> bytes:
    """At most BODY_LIMIT bytes of the body; a longer one is cut (its connection is not reused)."""
    chunks: list[bytes] = []
    size = 0
    while size < BODY_LIMIT:
        chunk = await response.content.read(BODY_LIMIT - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size >= BODY_LIMIT and not response.content.at_eof():
        response.close()  # the rest is not read: the connection goes, not back to the pool
    return b"".join(chunks)
