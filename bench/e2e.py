"""End to end: bridge POST -> inbox -> echo handler -> outbox -> plugin `message.send`, messages/s.

    .venv/bin/python bench/e2e.py [--quick] [--json] [--messages N] [--connections 32]

In-process service, real plugin child process: this script runs the full ASGI app
(`admin_api.create_app` around a `ChannelRuntime` with the SQLite store and the
default echo handler, and a `PluginHost`) under uvicorn (asyncio loop, h11, access
log off) on loopback; installs the example echo plugin (`plugins/echo`, packed and
installed through the plugin host) and connects it through a connector session,
so its channel runs. A load generator in a separate process (`bench/_loadgen.py`)
POSTs N BridgeEvents (unique ids, 64 peers) over keep-alive connections; each
inbound message's echo reply goes through the outbox to the plugin's
`message.send`. Time runs from the first POST until the last delivery is `sent`
in the outbox (the store file polled every 10 ms).

Reference, measured in the same run and process: direct `message.send` calls to
the same plugin process (`PluginHost.call`, 16 at a time), the plugin-side ceiling.

Target: >= 1,000 messages/s sustained.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from admin_api import create_app  # noqa: E402
from bench._common import REPO, Report, free_port, median, parser, progress  # noqa: E402
from channel_runtime.runtime import ChannelRuntime, echo_handler  # noqa: E402
from channel_runtime.settings import Settings  # noqa: E402
from plugin_host.host import PluginHost  # noqa: E402
from plugin_host.package import pack_directory  # noqa: E402
from plugin_host.protocol import SendRequest, Target  # noqa: E402

BRIDGE_TOKEN = "bench-bridge-token-0123456789"
ADMIN_TOKEN = "bench-admin-token-0123456789"


def sent_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'sent'").fetchone()[0])
    finally:
        conn.close()


async def load(port: int, connection_id: str, prefix: str, count: int, connections: int) -> dict[str, Any]:
    result = await anyio.run_process(
        [
            sys.executable,
            str(REPO / "bench/_loadgen.py"),
            "--port",
            str(port),
            "--token",
            BRIDGE_TOKEN,
            "--connection-id",
            connection_id,
            "--prefix",
            prefix,
            "--count",
            str(count),
            "--connections",
            str(connections),
        ],
        check=True,
    )
    data: dict[str, Any] = json.loads(result.stdout)
    return data


async def one_run(
    port: int, db: Path, connection_id: str, prefix: str, count: int, connections: int, timeout: float
) -> dict[str, Any]:
    before = sent_count(db)
    done_at: list[float] = []
    loadgen: dict[str, Any] = {}

    async def drive() -> None:
        loadgen.update(await load(port, connection_id, prefix, count, connections))

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sent_count(db) - before >= count:
                done_at.append(time.time())
                break
            await anyio.sleep(0.01)
    if not done_at:
        delivered = sent_count(db) - before
        return {
            "count": count,
            "delivered": delivered,
            "rate": float("nan"),
            "ingest_rps": loadgen.get("rps"),
            "statuses": loadgen.get("statuses"),
            "timed_out": True,
        }
    seconds = done_at[0] - loadgen["first"]
    return {
        "count": count,
        "delivered": count,
        "seconds": seconds,
        "rate": count / seconds,
        "ingest_rps": loadgen["rps"],
        "statuses": loadgen["statuses"],
        "timed_out": False,
    }


async def direct_sends(host: PluginHost, connection_id: str, channel_id: str, calls: int, prefix: str) -> float:
    """Messages/s of `message.send` called straight on the plugin, 16 in flight."""
    queue = iter(range(calls))

    async def caller() -> None:
        for n in queue:
            request = SendRequest(
                request_id=f"direct_{prefix}_{n}",
                connection_id=connection_id,
                channel_id=channel_id,
                kind="echo",
                target=Target(peer_id=f"peer_{n % 64}", peer_type="dm"),
                content=f"direct {n}",
                content_type="text",
                metadata={},
            )
            await host.client("echo").send(request)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(16):
            tg.start_soon(caller)
    return calls / (time.perf_counter() - started)


async def main_async(args: Any) -> Report:
    report = Report("bench/e2e.py: bridge -> inbox -> echo handler -> outbox -> plugin message.send", args.quick)
    repeats = 1 if args.quick else 3
    count = args.messages or (1500 if args.quick else 5000)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-", dir=os.environ.get("BENCH_TMP")) as tmp_text:
        home = Path(tmp_text) / "home"
        home.mkdir()
        db = home / "state.db"
        settings = Settings(home=home, store_url=f"sqlite:///{db}", admin_token=ADMIN_TOKEN, bridge_token=BRIDGE_TOKEN)
        host = PluginHost(home)
        runtime = ChannelRuntime(handler=echo_handler, store=settings.store_url, plugin_host=host, home=home)
        app = create_app(host=host, runtime=runtime, settings=settings)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=port,
                lifespan="on",
                log_level="warning",
                access_log=False,
                loop="asyncio",
                http="h11",
            )
        )
        runs: list[dict[str, Any]] = []
        direct: list[float] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve)
            while not server.started:
                await anyio.sleep(0.05)
            try:
                progress("installing and connecting the echo plugin ...")
                archive = pack_directory(REPO / "plugins/echo", Path(tmp_text) / "echo.zip")
                await host.install(archive, source_label="bench")
                await host.enable("echo")
                assert runtime.connections is not None
                view = await runtime.connections.start_session("echo", "bench")
                connection = view["connection"]
                connection_id, channel_id = connection["connectionId"], connection["channelId"]
                for _ in range(100):
                    if runtime.states.get(channel_id, {}).get("state") == "running":
                        break
                    await anyio.sleep(0.05)
                progress(f"connection {connection_id}: channel {runtime.states.get(channel_id)}")
                await one_run(port, db, connection_id, "warm", min(300, count), args.connections, 120)
                for rep in range(repeats):
                    progress(f"repeat {rep + 1}/{repeats}: {count} messages ...")
                    runs.append(
                        await one_run(
                            port, db, connection_id, f"r{rep}", count, args.connections, max(120.0, count / 50)
                        )
                    )
                    progress(f"  {runs[-1]}")
                    direct.append(await direct_sends(host, connection_id, channel_id, min(count, 3000), f"r{rep}"))
                    progress(f"  direct message.send: {direct[-1]:.0f}/s")
            finally:
                server.should_exit = True

    rate = median([r["rate"] for r in runs])
    report.table(
        f"end to end, {count} messages per repeat, {repeats} repeat(s), {args.connections} connections, "
        "in-process service + echo plugin child process",
        ["measure", "messages/s", "each repeat"],
        [
            [
                "bridge -> ... -> message.send sent (first POST to last sent)",
                rate,
                " ".join(f"{r['rate']:.0f}" for r in runs),
            ],
            [
                "  bridge POSTs accepted/s during those runs",
                median([r["ingest_rps"] for r in runs]),
                " ".join(f"{r['ingest_rps']:.0f}" for r in runs),
            ],
            [
                "reference: direct message.send to the plugin (16 in flight)",
                median(direct),
                " ".join(f"{d:.0f}" for d in direct),
            ],
        ],
    )
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in (r["statuses"] or {}).items():
            statuses[k] = statuses.get(k, 0) + v
    report.note(f"bridge answers: {statuses}; timed out runs: {sum(1 for r in runs if r['timed_out'])}")
    report.check("end-to-end messages/s", rate, ">= 1000", "/s")
    report.data = {"runs": runs, "direct_send_per_s": direct}
    return report


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int)
    p.add_argument("--connections", type=int, default=32)
    args = p.parse_args()
    report = anyio.run(main_async, args)
    report.emit(args.json)


if __name__ == "__main__":
    main()
