"""Connection limits (issue 14, finding 6; access log, Low): idle sockets cannot starve `serve`.

The red team held 1,100 idle sockets against a `serve` limited to 1,024 open files:
/healthz timed out and the log got 289,783 `Errno 24` lines. Here the same, through a real
`serve` started under `prlimit --nofile=1024:1024`.
"""

from __future__ import annotations

import resource
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support import ServeProcess, serve_command, wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit"),
]
IDLE_SOCKETS = 1100


@pytest.fixture(autouse=True)
def enough_descriptors_for_the_test() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_SOCKETS + 512
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, max(hard, wanted)), max(hard, wanted)))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextmanager
def idle_sockets(port: int, count: int) -> Iterator[list[socket.socket]]:
    """`count` connections that never send a byte."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            try:
                s.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            sockets.append(s)
        yield sockets
    finally:
        for s in sockets:
            s.close()


def closed_by_server(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset
        return True


def healthz_answers(base: str, tries: int = 20) -> list[int | None]:
    codes: list[int | None] = []
    for _ in range(tries):
        try:
            codes.append(httpx.get(base + "/healthz", timeout=5).status_code)
        except httpx.HTTPError:
            codes.append(None)
        time.sleep(0.05)
    return codes


def _serve(tmp_path: Path, name: str, *, open_files: int | None = None, **env: str) -> ServeProcess:
    limit = ["prlimit", f"--nofile={open_files}:{open_files}", "--"] if open_files else []
    return ServeProcess(
        tmp_path / name,
        cwd=tmp_path,
        command=[*limit, *serve_command()],
        env={"CHANNEL_RUNTIME_ADMIN_TOKEN": "adm1n-" + "f" * 40, **env},
    )


def test_idle_sockets_beyond_the_fd_limit_do_not_starve_healthz(tmp_path: Path) -> None:
    server = _serve(tmp_path, "home", open_files=1024, CHANNEL_RUNTIME_HEADER_TIMEOUT="2")
    try:
        server.wait_ready()
        with idle_sockets(server.port, IDLE_SOCKETS) as sockets:
            time.sleep(0.5)  # let the server accept them all
            assert healthz_answers(server.base) == [200] * 20
            # sockets that never send their headers are closed after the header timeout (those still in
            # the kernel's accept queue, past the small backlog of a 1,024-descriptor process, come later)
            wait_for(lambda: sum(closed_by_server(s) for s in sockets) > 100, 40, "idle sockets closed")
            assert healthz_answers(server.base, 5) == [200] * 5
        # a query string never reaches the access log
        assert httpx.get(server.base + "/healthz?token=sekrit-query-value", timeout=5).status_code == 200
    finally:
        _, out, err = server.stop()
    assert "Errno 24" not in err and "Too many open files" not in err
    assert len(err.splitlines()) < 400, f"{len(err.splitlines())} log lines"
    # uvicorn's access log (on stdout): the path, never the query
    assert "GET /healthz HTTP/1.1" in out and "sekrit-query-value" not in out + err


def test_past_the_connection_cap_idle_connections_make_room(tmp_path: Path) -> None:
    # descriptors to spare: only the configured cap stands between the flood and the server
    server = _serve(tmp_path, "capped", open_files=8192, CHANNEL_RUNTIME_MAX_CONNECTIONS="200")
    try:
        server.wait_ready()
        with idle_sockets(server.port, IDLE_SOCKETS) as sockets:
            time.sleep(0.5)
            assert healthz_answers(server.base) == [200] * 20
            wait_for(lambda: sum(closed_by_server(s) for s in sockets) >= IDLE_SOCKETS - 200, 20, "evictions")
    finally:
        _, _, err = server.stop()
    evictions = [line for line in err.splitlines() if "connection(s) closed to stay within 200" in line]
    assert 1 <= len(evictions) <= 3  # reported, not once per connection
    assert len(err.splitlines()) < 400
