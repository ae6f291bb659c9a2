"""The real `channel-runtime serve` as a subprocess on a free port, talked to over HTTP."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from tests.support import ServeProcess

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _raw_request(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        sock.sendall(b"\0" * 65536)  # a little of the promised body
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)


def test_serve_on_a_fresh_home_then_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ServeProcess(home, cwd=tmp_path)
    try:
        server.wait_ready()
        token = (home / "admin-token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.get(server.base + "/api/plugins", timeout=10).status_code == 401
        plugins = httpx.get(server.base + "/api/plugins", headers=auth, timeout=10).json()
        bundled = {p["id"]: p for p in plugins}
        assert "echo" in bundled and bundled["echo"]["enabled"]
        echo = httpx.get(server.base + "/api/plugins/echo", headers=auth, timeout=10).json()
        assert echo["state"] == "running"
        pid = echo["pid"]
        assert _alive(pid)
        assert "<html" in httpx.get(server.base + "/admin", timeout=10).text

        # an upload that declares 2 GiB is refused before its body is read
        answer = _raw_request(
            server.port,
            (
                f"POST /api/plugins HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/zip\r\nContent-Length: {2 * 2**30}\r\n\r\n"
            ).encode(),
        )
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b'"payload_too_large"' in answer
        assert httpx.get(server.base + "/healthz", timeout=10).json() == {"status": "ok"}
    finally:
        code, out, err = server.stop()
    assert code == 0, err
    assert not _alive(pid)  # plugin children are stopped with the server
    assert f"http://127.0.0.1:{server.port}/admin" in out
    assert out.count(token) == 1  # printed once, on stdout
    assert token not in err  # never logged

    # the same home again: no new token printed, the enabled plugin comes back
    server = ServeProcess(home, cwd=tmp_path)
    try:
        server.wait_ready()
        echo = httpx.get(server.base + "/api/plugins/echo", headers=auth, timeout=10).json()
        assert echo["state"] == "running" and echo["pid"] != pid
    finally:
        code, out, err = server.stop()
    assert code == 0
    assert token not in out and token not in err
