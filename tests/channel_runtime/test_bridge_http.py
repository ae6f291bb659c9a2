"""The forwarder's HTTP/1.1 client against a real TCP server on 127.0.0.1 that answers scripted bytes."""

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

from channel_runtime.bridge_http import BODY_LIMIT, BridgeConnection, BridgeError, Target, target

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

    def target(self) -> Target:
        found = target(f"http://127.0.0.1:{self.port}/base/api/channel-connector-bridge/events", HEADERS)
        assert found is not None
        return found


def reply(raw: bytes, keep: bool = True) -> Answerer:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(raw)
        return keep

    return answer


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 17\r\n\r\n{"accepted":true}'


async def test_posts_the_request_once_and_reuses_the_connection() -> None:
    async with Server(reply(OK)).serving() as server:
        connection = BridgeConnection(server.target(), timeout=5)
        for n in range(3):
            answer = await connection.post(b'{"n":%d}' % n)
            assert (answer.status_code, answer.json()) == (200, {"accepted": True})
            assert answer.headers["content-type"] == "application/json"
        connection.close()
    assert server.connections == 1
    head, body = server.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /base/api/channel-connector-bridge/events HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert "Authorization: Bearer t0ken" in lines and "Content-Type: application/json" in lines
    assert "Content-Length: 7" in lines and body == b'{"n":0}'
    assert [b for _, b in server.requests] == [b'{"n":0}', b'{"n":1}', b'{"n":2}']


async def test_a_connection_the_server_closed_while_idle_is_opened_again_without_an_error() -> None:
    async with Server(reply(OK, keep=False)).serving() as server:
        connection = BridgeConnection(server.target(), timeout=5)
        for _ in range(3):
            assert (await connection.post(b"{}")).status_code == 200
            await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
        connection.close()
    assert server.connections == 3 and len(server.requests) == 3


async def test_connection_close_and_http_1_0_answers_end_the_connection() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n{}",
        OK,
    ]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answers[n - 1])
        return True  # the server would keep it: the client is the one to close

    async with Server(answer).serving() as server:
        connection = BridgeConnection(server.target(), timeout=5)
        for _ in answers:
            assert (await connection.post(b"{}")).status_code == 200
        connection.close()
    assert server.connections == 3  # after 1 and 2 the client opened a new one; 3 kept it for 4


async def test_chunked_and_close_delimited_bodies_and_informational_answers() -> None:
    chunked = (
        b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1\r\n{"ret\r\n1a\r\nryAfterSeconds": 7, "x":1}\r\n0\r\nX-Trailer: y\r\n\r\n'
    )
    continued = b"HTTP/1.1 100 Continue\r\n\r\n" + OK
    delimited = b'HTTP/1.1 503 Service Unavailable\r\nRetry-After: 3\r\n\r\n{"down": true}'
    answers = [chunked, continued, delimited]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        writer.write(answers[n - 1])
        return n < 3  # a body without a length ends with the connection

    async with Server(answer).serving() as server:
        connection = BridgeConnection(server.target(), timeout=5)
        first = await connection.post(b"{}")
        assert (first.status_code, first.json()) == (409, {"retryAfterSeconds": 7, "x": 1})
        assert (await connection.post(b"{}")).json() == {"accepted": True}
        third = await connection.post(b"{}")
        assert (third.status_code, third.headers["retry-after"], third.json()) == (503, "3", {"down": True})
        connection.close()
    assert server.connections == 1


async def test_a_body_over_the_limit_is_not_kept_and_the_connection_is_given_up() -> None:
    big = b"x" * (BODY_LIMIT + 1)
    raw = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    async with Server(reply(raw)).serving() as server:
        connection = BridgeConnection(server.target(), timeout=5)
        answer = await connection.post(b"{}")
        assert answer.status_code == 500 and answer.content == b""
        with pytest.raises(ValueError):
            answer.json()
        assert (await connection.post(b"{}")).status_code == 500
        connection.close()
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
    async with Server(reply(raw, keep=False)).serving() as server:
        connection = BridgeConnection(server.target(), timeout=5)
        with pytest.raises(BridgeError):
            await connection.post(b"{}")
        assert len(server.requests) == 1  # retrying is the forwarder's, with the next deliveryAttempt
        with pytest.raises(BridgeError):
            await connection.post(b"{}")
        connection.close()
    assert server.connections == 2  # the broken connection was given up, the next post connected afresh


async def test_no_answer_in_time_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> bool:
        await asyncio.sleep(0.5)
        return False

    async with Server(silent).serving() as server:
        connection = BridgeConnection(server.target(), timeout=0.2)
        with pytest.raises(BridgeError) as raised:
            await connection.post(b"{}")
        assert raised.value.kind == "Timeout"
        connection.close()


async def test_nobody_listening_is_a_connect_error() -> None:
    async with Server(reply(OK)).serving() as server:
        port = server.port
    found = target(f"http://127.0.0.1:{port}/x", HEADERS)
    assert found is not None
    with pytest.raises(BridgeError) as raised:
        await BridgeConnection(found, timeout=5).post(b"{}")
    assert raised.value.kind == "ConnectError"


def test_target_covers_plain_urls_and_leaves_the_rest_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    found = target("https://[::1]/events", HEADERS)
    assert found is not None and (found.host, found.port, found.tls) == ("::1", 443, True)
    assert found.head.startswith(b"POST /events HTTP/1.1\r\nHost: [::1]\r\n")
    assert target("http://app.example/e", HEADERS) is not None
    assert target("http://app.example/e?x=1", HEADERS) is None
    assert target("http://user:pw@app.example/e", HEADERS) is None
    assert target("http://app.example/é", HEADERS) is None
    assert target("http://app.example/a b", HEADERS) is None
    assert target("ftp://app.example/e", HEADERS) is None
    assert target("http://app.example/e", {"Authorization": "Bearer a\r\nX-Evil: 1"}) is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    assert target("http://app.example/e", HEADERS) is None  # the proxy applies: httpx honours it
    monkeypatch.setenv("NO_PROXY", "app.example")
    assert target("http://app.example/e", HEADERS) is not None


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
    try:
        found = target(f"https://localhost:{port}/events", HEADERS)
        assert found is not None and found.tls
        trusting = ssl.create_default_context(cafile=str(cert))
        connection = BridgeConnection(found, timeout=5, tls=trusting)
        for _ in range(2):
            assert (await connection.post(b"{}")).json() == {"accepted": True}
        connection.close()
        assert bridge.connections == 1
        with pytest.raises(BridgeError) as raised:  # the system's trust store does not know this certificate
            await BridgeConnection(found, timeout=5, tls=ssl.create_default_context()).post(b"{}")
        assert raised.value.kind == "SSLError" and len(bridge.requests) == 2
    finally:
        server.close()


async def test_a_connection_idle_too_long_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("channel_runtime.bridge_http.IDLE_EXPIRY", 0.05)
    async with Server(reply(OK)).serving() as server:  # the server would keep it: the client gives it up
        connection = BridgeConnection(server.target(), timeout=5)
        assert (await connection.post(b"{}")).status_code == 200
        assert (await connection.post(b"{}")).status_code == 200
        await asyncio.sleep(0.1)
        assert (await connection.post(b"{}")).status_code == 200
        connection.close()
    assert server.connections == 2 and len(server.requests) == 3
