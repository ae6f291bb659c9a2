"""A lean HTTP/1.1 client for the forwarder's one request shape: a JSON POST to one URL, kept alive.

Why not httpx here: a profile of the sidecar bench (`bench/sidecar.py`) put httpx, httpcore
and h11 (request building, URL merging, cookies, the pool, h11's state machine, anyio's
stream wrappers, a timeout scope per read and write) at about 70% of the sidecar's CPU per
forwarded event, for a request that never changes shape: one method, one URL, two fixed
headers and a JSON body. `BridgeConnection` builds the request head once and reads only
what the forwarder looks at: the status, the headers, a bounded body.

It runs on asyncio streams (the service's loop: uvicorn's) and covers plain `http` and
`https` URLs without a proxy; `target()` answers None for anything else, and the
forwarder then uses httpx, as it does with an injected transport.
"""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
import msgspec

HEAD_LIMIT = 64 * 1024  # bytes of status line + headers an answer may have
BODY_LIMIT = 64 * 1024  # bytes of an answer's body kept (the forwarder reads an error code, retryAfterSeconds)
# a connection idle this long is not reused: servers close idle ones (uvicorn after 5 s), and a request
# sent as the close crosses it fails (it would then wait for the forwarder's retry)
IDLE_EXPIRY = 4.0
_HEADER_SAFE = frozenset(range(0x20, 0x7F)) | {0x09}
_PATH_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/%")


class BridgeError(Exception):
    """The exchange failed before a whole answer arrived; `kind` names how (for the forwarder's error text)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass(frozen=True)
class Target:
    """Where and how to connect, and the request head every POST starts with."""

    host: str
    port: int
    tls: bool
    head: bytes  # request line and fixed headers, up to (not including) Content-Length


@dataclass(frozen=True)
class BridgeAnswer:
    """The parts of an HTTP answer the forwarder uses; `json()` and `headers.get()` as httpx's Response has them."""

    status_code: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    content: bytes

    def json(self) -> Any:
        try:
            return msgspec.json.decode(self.content)
        except msgspec.DecodeError as exc:
            raise ValueError(str(exc)) from None


def target(url: str, headers: dict[str, str]) -> Target | None:
    """The `Target` of `url` with `headers`; None when this client does not cover it (then use httpx):
    a scheme other than http/https, user info, a query or fragment, a proxy configured for it,
    or a header value that is not plain visible ASCII."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    if parts.query or parts.fragment or not set(parts.path) <= _PATH_SAFE or _proxied(url, parts.hostname):
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    lines = [f"POST {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if any(ord(c) not in _HEADER_SAFE for line in lines for c in line):
        return None  # e.g. a token with a line break: httpx refuses it with its own error
    head = "\r\n".join(lines).encode("ascii")
    return Target(host=parts.hostname, port=port, tls=parts.scheme == "https", head=head + b"\r\n")


def _proxied(url: str, host: str) -> bool:
    """httpx honours the proxy environment (HTTP_PROXY, NO_PROXY, ...): so does the forwarder, through httpx."""
    proxies = urllib.request.getproxies()
    if not any(proxies.get(k) for k in ("all", "http", "https")):
        return False
    return not urllib.request.proxy_bypass(host)


class BridgeConnection:
    """One keep-alive connection to the target, one request at a time (a delivery slot of the forwarder).

    Connects on first use and again after the server closed it while idle; any failure
    mid-exchange closes it (the next request connects afresh). Never retries a request
    by itself: a failed exchange is the forwarder's to retry, with the next delivery attempt.
    """

    def __init__(self, target: Target, *, timeout: float, tls: ssl.SSLContext | None = None) -> None:
        self._target = target
        self._timeout = timeout
        self._tls = tls
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._idle_since = 0.0  # the loop's time of the last answer on the connection

    async def post(self, body: bytes) -> BridgeAnswer:
        """POST `body`: connecting within the timeout, then the exchange within the timeout."""
        expired = False

        def expire() -> None:  # the deadline of the exchange: aborting the connection ends its pending read
            nonlocal expired
            expired = True
            self.close(abort=True)

        timer: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        try:
            reader, writer = self._reader, self._writer
            if (
                reader is None
                or writer is None
                or reader.at_eof()
                or writer.is_closing()
                or loop.time() - self._idle_since > IDLE_EXPIRY
            ):
                self.close()  # never used, closed or about to be closed by the server: nothing was sent on it
                with anyio.fail_after(self._timeout):
                    reader, writer = await self._connect()
            # a timer, not a cancel scope, bounds the exchange: the scope cost ~7% of the CPU per event
            timer = loop.call_later(self._timeout, expire)
            answer = await self._exchange(reader, writer, body)
            self._idle_since = loop.time()
            return answer
        except BridgeError:
            self.close()
            raise
        except TimeoutError:
            self.close()
            raise BridgeError("Timeout") from None
        except (OSError, EOFError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()  # reset, closed mid-answer, an answer that is not HTTP/1.x
            raise BridgeError("Timeout" if expired else type(exc).__name__) from None
        except BaseException:  # cancelled mid-exchange: the connection's state is unknown
            self.close()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def close(self, *, abort: bool = False) -> None:
        """Give the connection up (no wait for the close: nothing is owed to it); the next post connects."""
        if self._writer is not None:
            if abort:
                self._writer.transport.abort()
            else:
                self._writer.close()
        self._reader = self._writer = None

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes) -> BridgeAnswer:
        writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (self._target.head, len(body), body))
        await writer.drain()
        while True:
            status, version, headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
            if status >= 200:
                break
            if status == 101:  # we asked for no upgrade; other 1xx are informational and skipped
                raise BridgeError("RemoteProtocolError")
        content, whole = await _read_body(reader, status, headers)
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        if not whole or "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens):
            self.close()
        return BridgeAnswer(status, headers, content)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        t = self._target
        tls = (self._tls or ssl.create_default_context()) if t.tls else None
        try:
            reader, writer = await asyncio.open_connection(
                t.host, t.port, ssl=tls, server_hostname=t.host if tls else None, limit=HEAD_LIMIT
            )
        except ssl.SSLError:
            raise BridgeError("SSLError") from None
        except OSError:
            raise BridgeError("ConnectError") from None
        self._reader, self._writer = reader, writer
        return reader, writer


def _parse_head(raw: bytes) -> tuple[int, str, dict[str, str]]:
    """Status, HTTP version and headers of an answer's head (raises ValueError when it is not HTTP/1.x)."""
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise ValueError("not an HTTP/1.x answer")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise ValueError("a malformed header line")
            headers[name.lower()] = value.strip()
    return int(code), version, headers


async def _read_body(reader: asyncio.StreamReader, status: int, headers: dict[str, str]) -> tuple[bytes, bool]:
    """The body (at most BODY_LIMIT bytes kept) and whether the connection stays usable after it."""
    if status in (204, 304):
        return b"", True
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _read_chunked(reader)
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ValueError("a malformed Content-Length")
        size = int(length)
        if size > BODY_LIMIT:
            return b"", False  # not worth reading: the connection is given up instead
        return await reader.readexactly(size), True
    data = await reader.read(BODY_LIMIT)  # delimited by the close: as much as we keep, then close
    return data, False


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    body = bytearray()
    while True:
        size_line = (await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip()
        size = int(size_line, 16)  # ValueError when malformed
        if size < 0:
            raise ValueError("a malformed chunk size")
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, ignored
                pass
            return bytes(body), True
        if len(body) + size > BODY_LIMIT:
            return bytes(body), False
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("a malformed chunk")
