"""The forwarder's HTTP client (aiohttp behind `BridgeClient`) against a real TCP server on 127.0.0.1 answering scripted bytes."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from channel_runtime.bridge_http import BODY_LIMIT, BridgeClient, BridgeError

pytestmark = pytest.mark.anyio

HEADERS = {"Authorization": "Bearer t0ken", "Content-Type": "application/json"}
Answerer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[bool]]


class Server:
    """Reads each request (head and Content-Length body), records it, and lets `answer` write the bytes back;
    `answer` returns False to close the connection after its answer."""

    def __init__(self, answer: Answerer) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append((head, await reader.readexactly(length)))
                if not await self.answer(reader, writer, len(self.requests)):
                    return
                await writer.drain()
        except ConnectionError:
            return  # the client gave the connection up (an answer it would not read whole)
        finally:
            writer.close()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[Server]:
        server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/base/api/channel-connector-bridge/events"

    def client(self, *, timeout: float = 5, connections: int = 1) -> BridgeClient:
        return BridgeClient(self.url, HEADERS, timeout=timeout, connections=connections)


def reply(raw: bytes, keep: bool = True) -> Answerer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(raw)
        return keep

    return answer


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{"accepted":true}'


async def test_posts_the_request_once_and_reuses_the_connection() -> None:
    async with Server(reply(OK)).serving() as server, server.client() as client:
        for n in range(3):
            answer = await client.post(b'{"n":%d}' % n)
            assert (answer.status_code, answer.json()) == (200, {"accepted": True})
            assert answer.headers["content-type"] == "application/json"
    assert server.connections == 1
    head, body = server.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /base/api/channel-connector-bridge/events HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert "Authorization: Bearer t0ken" in lines and "Content-Type: application/json" in lines
    assert "Content-Length: 7" in lines and body == b'{"n":0}'
    assert [b for _, b in server.requests] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


async def test_a_connection_the_server_closed_while_idle_is_opened_again_without_an_error() -> None:
    async with Server(reply(OK, keep=False)).serving() as server, server.client() as client:
        for _ in range(3):
            assert (await client.post(b"{}")).status_code == 200
            await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
    assert server.connections == 3 and len(server.requests) == 3


async def test_connection_close_and_http_1_0_answers_end_the_connection() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        OK,
        OK,
    ]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answers[n - 1])
        return True  # the server would keep it: the client is the one to close

    async with Server(answer).serving() as server, server.client() as client:
        for _ in answers:
            assert (await client.post(b"{}")).status_code == 200
    assert server.connections == 3  # after 1 and 2 the client opened a new one; 3 kept it for 4


async def test_chunked_and_close_delimited_bodies() -> None:
    chunked = (
        b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"ret\r\n1a\r\nryAfterSeconds": 7, "x":1}\r\n0\r\n\r\n'
    )
    delimited = b'HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n\r\n{"down": true}'
    answers = [chunked, delimited]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answers[n - 1])
        return n < 2  # a body without a length ends with the connection

    async with Server(answer).serving() as server, server.client() as client:
        first = await client.post(b"{}")
        assert (first.status_code, first.json()) == (409, {"retryAfterSeconds": 7, "x": 1})
        second = await client.post(b"{}")
        assert (second.status_code, second.headers["retry-after"], second.json()) == (503, "3", {"down": True})
    assert server.connections == 1


async def test_a_body_over_the_limit_is_cut_and_its_connection_given_up() -> None:
    big = b"x" * (BODY_LIMIT * 4)
    raw = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    async with Server(reply(raw)).serving() as server, server.client() as client:
        answer = await client.post(b"{}")
        assert answer.status_code == 500 and answer.content == b"x" * BODY_LIMIT
        with pytest.raises(ValueError):
            answer.json()
        assert (await client.post(b"{}")).status_code == 500
    assert server.connections == 2


@pytest.mark.parametrize(
    "raw",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbroken header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # closed mid-body
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_a_broken_answer_is_an_error_and_the_request_is_not_sent_again(raw: bytes) -> None:
    async with Server(reply(raw, keep=False)).serving() as server, server.client() as client:
        with pytest.raises(BridgeError):
            await client.post(b"{}")
        assert len(server.requests) == 1  # retrying is the forwarder's, with the next deliveryAttempt
        with pytest.raises(BridgeError):
            await client.post(b"{}")
    assert server.connections == 2  # the broken connection was given up, the next post connected afresh


async def test_no_answer_in_time_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.5)
        return False

    async with Server(silent).serving() as server, server.client(timeout=0.2) as client:
        with pytest.raises(BridgeError) as raised:
            await client.post(b"{}")
        assert "Timeout" in raised.value.kind


async def test_nobody_listening_is_an_error() -> None:
    async with Server(reply(OK)).serving() as server:
        port = server.port
    async with BridgeClient(f"http://127.0.0.1:{port}/x", HEADERS, timeout=5, connections=1) as client:
        with pytest.raises(BridgeError) as raised:
            await client.post(b"{}")
    assert "Connect" in raised.value.kind or "OSError" in raised.value.kind


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for `localhost` (and its key), made here: the TLS tests' server identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_verifies_the_server_and_keeps_the_connection(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    bridge = Server(reply(OK))
    server = await asyncio.start_server(bridge._serve, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    url = f"https://localhost:{port}/events"
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        async with BridgeClient(url, HEADERS, timeout=5, connections=1, tls=trusting) as client:
            for _ in range(2):
                assert (await client.post(b"{}")).json() == {"accepted": True}
        assert bridge.connections == 1
        # the system's trust store does not know this certificate
        async with BridgeClient(url, HEADERS, timeout=5, connections=1, tls=ssl.create_default_context()) as client:
            with pytest.raises(BridgeError) as raised:
                await client.post(b"{}")
        assert "Certificate" in raised.value.kind or "SSL" in raised.value.kind
        assert len(bridge.requests) == 2
    finally:
        server.close()


async def test_a_connection_idle_too_long_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("channel_runtime.bridge_http.IDLE_EXPIRY", 0.05)
    async with Server(reply(OK)).serving() as server, server.client() as client:  # the server would keep it
        assert (await client.post(b"{}")).status_code == 200
        assert (await client.post(b"{}")).status_code == 200
        await asyncio.sleep(0.2)
        assert (await client.post(b"{}")).status_code == 200
    assert server.connections == 2 and len(server.requests) == 3


def test_the_proxy_comes_from_the_environment_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from channel_runtime.bridge_http import proxy_for

    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert proxy_for("http://app.example/e") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert proxy_for("http://app.example/e") == "http://proxy.example:3128"
    assert proxy_for("https://app.example/e") is None  # HTTPS_PROXY is not set
    monkeypatch.setenv("NO_PROXY", "app.example")
    assert proxy_for("http://app.example/e") is None
    assert proxy_for("http://other.example/e") == "http://proxy.example:3128"


async def test_posts_go_through_the_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    async with Server(reply(OK)).serving() as proxy:  # a proxy for plain http sees the absolute URL
        for name in ("NO_PROXY", "no_proxy", "http_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        async with BridgeClient("http://app.example:8080/events", HEADERS, timeout=5, connections=1) as client:
            assert (await client.post(b"{}")).json() == {"accepted": True}
    assert proxy.requests[0][0].startswith(b"POST http://app.example:8080/events HTTP/1.1")
