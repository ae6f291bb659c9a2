"""The forwarder's HTTP client: client CPU per POST, aiohttp (`BridgeClient`) next to httpx, in one run.

    .venv/bin/python bench/http_client.py [--quick] [--json] [--requests N]

One server process (`bench._serve ceiling`: a bare Starlette `/send` on uvicorn) answers both
clients; each client runs in this process at 32 in flight, as the forwarder does, POSTing the
same 400-byte JSON body with the same two headers. The figure is this process's CPU time per
request (`time.process_time`), so the server's own cost is not in it. httpx runs as the
forwarder used it before: one client per slot (a shared pool costs more).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import Child, Report, free_port, median, parser, progress  # noqa: E402
from channel_runtime.bridge_http import BridgeClient  # noqa: E402

IN_FLIGHT = 32
HEADERS = {"Authorization": "Bearer bench-token-0123456789", "Content-Type": "application/json"}
BODY = b'{"requestId":"r","text":"' + b"a" * 370 + b'"}'


async def with_aiohttp(url: str, requests: int) -> float:
    async with BridgeClient(url, HEADERS, timeout=10, connections=IN_FLIGHT) as client:

        async def slot() -> None:
            for _ in range(requests // IN_FLIGHT):
                assert (await client.post(BODY)).status_code == 200

        return await _timed(slot, requests)


async def with_httpx(url: str, requests: int) -> float:
    clients = [httpx.AsyncClient(headers=HEADERS, timeout=10) for _ in range(IN_FLIGHT)]
    try:

        async def slot() -> None:
            client = clients.pop()
            for _ in range(requests // IN_FLIGHT):
                assert (await client.post(url, content=BODY)).status_code == 200
            clients.insert(0, client)

        return await _timed(slot, requests)
    finally:
        for client in clients:
            await client.aclose()


async def _timed(slot: object, requests: int) -> float:
    """CPU µs per request of `IN_FLIGHT` concurrent `slot()` runs (a warm-up round first)."""
    for warm in (True, False):
        started = time.process_time()
        async with anyio.create_task_group() as tg:
            for _ in range(IN_FLIGHT):
                tg.start_soon(slot)  # type: ignore[arg-type]
        if not warm:
            return (time.process_time() - started) / (requests // IN_FLIGHT * IN_FLIGHT) * 1e6
    raise AssertionError("unreachable")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=None, help="requests per round (default 6400; quick 1600)")
    args = p.parse_args()
    requests = args.requests or (1600 if args.quick else 6400)
    repeats = 1 if args.quick else 3
    report = Report("http_client", args.quick)
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    server = Child(
        "server",
        [sys.executable, "-m", "bench._serve", "ceiling", "--port", str(port)],
        {"BENCH_CEILING_DB": str(work / "ceiling.db"), "PATH": "/usr/bin:/bin"},
    )
    url = f"http://127.0.0.1:{port}/send"
    try:
        server.wait_http(url)
        figures: dict[str, list[float]] = {"aiohttp": [], "httpx": []}
        for rep in range(repeats):
            for name, run in (("aiohttp", with_aiohttp), ("httpx", with_httpx)):
                progress(f"{name} round {rep + 1}/{repeats}")
                figures[name].append(anyio.run(run, url, requests))
    finally:
        server.stop()
    ours, ref = median(figures["aiohttp"]), median(figures["httpx"])
    report.table(
        f"Client CPU per POST, {IN_FLIGHT} in flight (µs, median of {repeats})",
        ["client", "µs/request", "rounds"],
        [[name, median(v), ", ".join(f"{x:.0f}" for x in v)] for name, v in figures.items()],
    )
    report.note(f"httpx / aiohttp: {ref / ours:.2f}x")
    report.data = figures
    report.emit(args.json)


if __name__ == "__main__":
    main()
