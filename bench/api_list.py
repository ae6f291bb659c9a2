"""`GET /api/plugins` with 50 installed plugins: requests/s from a loopback load generator,
beside a trivial Starlette endpoint served by the same server (the ceiling).

    .venv/bin/python bench/api_list.py [--duration 5] [--connections 16]

The server (uvicorn, one process) runs in a child process: `create_app` on a home
holding 50 installed plugins, plus `GET /bench/trivial` returning a constant
JSON. Load comes from Debian's `wrk` when installed, else an httpx generator in a
separate process.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TOKEN = "bench-admin-token-0123456789"
PLUGINS = 50


def _prepare_home(home: Path) -> None:
    import anyio

    from bench._common import echo_clone_zip
    from plugin_host.host import PluginHost

    async def install() -> None:
        host = PluginHost(home)
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(PLUGINS):
                await host.install(echo_clone_zip(Path(tmp), f"bench_{i:02d}"))
        await host.registry.aclose()

    anyio.run(install)


def _serve(home: str, port: int) -> None:
    import uvicorn
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from admin_api import create_app
    from channel_runtime.settings import Settings
    from plugin_host.host import PluginHost

    async def trivial(request):
        return JSONResponse({"ok": True})

    settings = Settings.load({"CHANNEL_RUNTIME_ADMIN_TOKEN": TOKEN}, home=home)
    app = create_app(host=PluginHost(Path(home)), settings=settings, extra_routes=[Route("/bench/trivial", trivial)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on")


def _httpx_load(url: str, duration: float, connections: int) -> None:
    import asyncio

    import httpx

    async def worker(client: httpx.AsyncClient, stop: float, counts: list[int]) -> None:
        while time.perf_counter() < stop:
            r = await client.get(url)
            counts[0 if r.status_code == 200 else 1] += 1

    async def run() -> None:
        counts = [0, 0]
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, limits=limits) as client:
            start = time.perf_counter()
            await asyncio.gather(*(worker(client, start + duration, counts) for _ in range(connections)))
            elapsed = time.perf_counter() - start
        print(json.dumps({"rps": counts[0] / elapsed, "errors": counts[1]}))

    asyncio.run(run())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(url: str, duration: float, connections: int) -> tuple[float, str]:
    wrk = shutil.which("wrk")
    if wrk:
        out = subprocess.run(
            [wrk, "-t2", f"-c{connections}", f"-d{duration:.0f}s", "-H", f"Authorization: Bearer {TOKEN}", url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        if non2xx:
            raise SystemExit(f"{url}: {non2xx.group(1)} error responses")
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), "wrk"
    out = subprocess.run(
        [sys.executable, __file__, "--load", url, "--duration", str(duration), "--connections", str(connections)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out)["rps"], "httpx"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--serve", nargs=2, metavar=("HOME", "PORT"), help=argparse.SUPPRESS)
    p.add_argument("--load", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        _serve(args.serve[0], int(args.serve[1]))
        return
    if args.load:
        _httpx_load(args.load, args.duration, args.connections)
        return
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        _prepare_home(home)
        port = _free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(home), str(port)])
        try:
            import httpx

            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            listing = httpx.get(base + "/api/plugins", headers={"Authorization": f"Bearer {TOKEN}"}).json()
            assert len(listing) == PLUGINS, len(listing)
            _load(base + "/api/plugins", 1, args.connections)  # warm-up
            ours, tool = _load(base + "/api/plugins", args.duration, args.connections)
            ceiling, _ = _load(base + "/bench/trivial", args.duration, args.connections)
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(f"load generator: {tool}, {args.connections} connections, {args.duration:.0f} s per figure, loopback")
    print(f"GET /api/plugins ({PLUGINS} installed plugins): {ours:9.0f} requests/s")
    print(f"GET /bench/trivial (ceiling, same server):   {ceiling:9.0f} requests/s")
    print(f"ratio: {ours / ceiling:.2f} of the ceiling")


if __name__ == "__main__":
    main()
