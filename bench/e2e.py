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
an echo plugin process (`PluginHost.call`, 16 at a time; a third service, so that its
sends do not load the compared ones), the plugin-side ceiling.

Each repeat uses a fresh connection (a new connector session): the echo plugin keeps
a send-idempotency record per request in host-kept state, per connection, and a
connection that has taken tens of thousands of sends gets slower (also on main),
which would blur the comparison of repeats.

Platform budgets (SPEC 6.4): two such services run side by side, measured in turn
within each repeat: "off" installs the echo plugin as it is, "on" the same plugin
whose manifest declares generous `limits.outbound` (every rule is checked for every
delivery, none holds one back: `GENEROUS` below, the reply window read from the
store per delivery).

Dispatcher cost with deliveries waiting: in process, a runtime on a SQLite file and
a memory channel with a reply window; N deliveries to 64 peers that wrote are held
(the connection "lost"), then released at once (`connection_restored`) and timed
until the last is `sent`: microseconds per delivery, with no other delivery waiting
and with 10,000 more deferred (`reply_window`, peers that never wrote) in the same
outbox. Alternated within each repeat.

Targets: >= 1,000 messages/s (budgets off); budgets on >= 90% of off; the dispatcher's
cost per delivery with 10,000 waiting <= 1.3x the cost with none.
"""

from __future__ import annotations

import json
import os
import shutil
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
from channel_runtime import ChannelConfig, InboundMessage, OutboundMessage  # noqa: E402
from channel_runtime.channels import MemoryChannel  # noqa: E402
from channel_runtime.runtime import ChannelRuntime, echo_handler  # noqa: E402
from channel_runtime.settings import Settings  # noqa: E402
from plugin_host.host import PluginHost  # noqa: E402
from plugin_host.package import pack_directory  # noqa: E402
from plugin_host.protocol import SendRequest, Target  # noqa: E402

BRIDGE_TOKEN = "bench-bridge-token-0123456789"
ADMIN_TOKEN = "bench-admin-token-0123456789"
# every rule active, none binding at these rates
GENEROUS = {
    "perPeerPerMinute": 1_000_000,
    "perConnectionPerMinute": 10_000_000,
    "minIntervalMs": 0,
    "replyWindowSeconds": 86_400,
    "maxRepliesPerInbound": 1_000_000,
}
WAITING = 10_000


def sent_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'sent'").fetchone()[0])
    finally:
        conn.close()


def checkpoint(db: Path) -> None:
    conn = sqlite3.connect(db, timeout=5)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
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


class Service:
    """One in-process service (runtime + plugin host + admin app under uvicorn) with a connected echo channel."""

    def __init__(self, name: str, work: Path, limits: dict[str, Any] | None) -> None:
        self.name = name
        self.work = work / name
        self.home = self.work / "home"
        self.home.mkdir(parents=True)
        self.db = self.home / "state.db"
        self.limits = limits
        settings = Settings(
            home=self.home, store_url=f"sqlite:///{self.db}", admin_token=ADMIN_TOKEN, bridge_token=BRIDGE_TOKEN
        )
        self.host = PluginHost(self.home)
        self.runtime = ChannelRuntime(
            handler=echo_handler, store=settings.store_url, plugin_host=self.host, home=self.home
        )
        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(
                create_app(host=self.host, runtime=self.runtime, settings=settings),
                host="127.0.0.1",
                port=self.port,
                lifespan="on",
                log_level="warning",
                access_log=False,
                loop="asyncio",
                http="h11",
            )
        )
        self.connection_id = ""
        self.channel_id = ""

    async def connect(self) -> None:
        while not self.server.started:
            await anyio.sleep(0.05)
        source = self.work / "echo-src"
        shutil.copytree(REPO / "plugins/echo", source, ignore=shutil.ignore_patterns("__pycache__"))
        if self.limits is not None:
            manifest = json.loads((source / "plugin.json").read_text())
            manifest["limits"] = {"outbound": self.limits}
            (source / "plugin.json").write_text(json.dumps(manifest))
        await self.host.install(pack_directory(source, self.work / "echo.zip"), source_label="bench")
        await self.host.enable("echo")
        await self.new_connection()

    async def new_connection(self) -> None:
        """A fresh connection (and channel): each repeat starts without the last one's send records."""
        assert self.runtime.connections is not None
        view = await self.runtime.connections.start_session("echo", "bench")
        self.connection_id = view["connection"]["connectionId"]
        self.channel_id = view["connection"]["channelId"]
        for _ in range(100):
            if self.runtime.states.get(self.channel_id, {}).get("state") == "running":
                break
            await anyio.sleep(0.05)
        progress(f"{self.name}: connection {self.connection_id}: channel {self.runtime.states.get(self.channel_id)}")


async def dispatcher_cost(work: Path, name: str, count: int, waiting: int) -> float:
    """Microseconds per delivery to release `count` held deliveries and send them all, `waiting` deferred beside."""

    async def no_reply(message: InboundMessage) -> None:
        return None

    db = work / f"dispatch-{name}.db"
    async with ChannelRuntime(no_reply, f"sqlite:///{db}", home=work, idle_poll=0.05) as runtime:
        config = {"outboundLimits": {"replyWindowSeconds": 86_400}}
        await runtime.add_channel("m", ChannelConfig(kind="memory", config=config))
        channel = runtime.channels["m"]
        assert isinstance(channel, MemoryChannel)
        channel.on_send = None
        for n in range(64):  # these peers wrote: their window is open
            await channel.receive(f"peer{n}", "hi", message_id=f"in{n}")
        store = runtime.store
        for n in range(waiting):  # these never did: every one of their deliveries waits
            await runtime.send(OutboundMessage(channel_id="m", peer_id=f"silent{n}", content="later"))
        while (await store.outbox.counts())["deferred"] < waiting:
            await anyio.sleep(0.05)
        runtime.connection_lost("m", "bench")  # hold the measured ones until all are in the outbox
        ids = [
            await runtime.send(OutboundMessage(channel_id="m", peer_id=f"peer{n % 64}", content=f"m{n}"))
            for n in range(count)
        ]
        while (await store.outbox.counts())["deferred"] < waiting + 64:
            await anyio.sleep(0.05)
        checkpoint(db)  # the set-up's writes are not the measured deliveries' cost
        channel.sent.clear()
        started = time.perf_counter()
        await runtime.connection_restored("m")
        for delivery_id in ids:
            await runtime.wait_delivery(delivery_id, timeout=600)
        elapsed = time.perf_counter() - started
        counts = await store.outbox.counts()
        assert counts["deferred"] == waiting and len(channel.sent) == count, (counts, len(channel.sent))
    return elapsed / count * 1e6


async def main_async(args: Any) -> Report:
    report = Report("bench/e2e.py: bridge -> inbox -> echo handler -> outbox -> plugin message.send", args.quick)
    repeats = 1 if args.quick else 5
    count = args.messages or (1500 if args.quick else 5000)
    dispatch_count = 2000 if args.quick else 5000
    with tempfile.TemporaryDirectory(prefix="bench-e2e-", dir=os.environ.get("BENCH_TMP")) as tmp_text:
        work = Path(tmp_text)
        services = [Service("off", work, None), Service("on", work, GENEROUS)]
        # the direct-send reference gets a service of its own: its sends must not load the compared ones
        reference = Service("reference", work, None)
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in services}
        direct: list[float] = []
        async with anyio.create_task_group() as tg:
            for service in (*services, reference):
                tg.start_soon(service.server.serve)
            try:
                progress("installing and connecting the echo plugin three times (budgets off / on, reference) ...")
                for service in (*services, reference):
                    await service.connect()
                for service in services:
                    await one_run(
                        service.port, service.db, service.connection_id, "warm", min(300, count), args.connections, 120
                    )
                for rep in range(repeats):
                    order = services if rep % 2 == 0 else list(reversed(services))
                    for service in services:
                        await service.new_connection()
                    for service in order:
                        progress(f"repeat {rep + 1}/{repeats}, budgets {service.name}: {count} messages ...")
                        runs[service.name].append(
                            await one_run(
                                service.port,
                                service.db,
                                service.connection_id,
                                f"r{rep}",
                                count,
                                args.connections,
                                max(120.0, count / 50),
                            )
                        )
                        progress(f"  {runs[service.name][-1]}")
                    await reference.new_connection()
                    direct.append(
                        await direct_sends(
                            reference.host, reference.connection_id, reference.channel_id, min(count, 3000), f"r{rep}"
                        )
                    )
                    progress(f"  direct message.send: {direct[-1]:.0f}/s")
            finally:
                for service in (*services, reference):
                    service.server.should_exit = True
        costs: dict[int, list[float]] = {0: [], WAITING: []}
        for rep in range(repeats):
            for waiting in (0, WAITING) if rep % 2 == 0 else (WAITING, 0):
                progress(f"dispatcher: {dispatch_count} deliveries, {waiting} waiting beside ...")
                costs[waiting].append(await dispatcher_cost(work, f"{rep}-{waiting}", dispatch_count, waiting))
                progress(f"  {costs[waiting][-1]:.1f} us/delivery")

    rate = {name: median([r["rate"] for r in rs]) for name, rs in runs.items()}
    # paired within each repeat (the two services ran back to back): steadier than the ratio of medians
    paired = median([on["rate"] / off["rate"] for off, on in zip(runs["off"], runs["on"], strict=True)])
    report.table(
        f"end to end, {count} messages per repeat, {repeats} repeat(s), {args.connections} connections, "
        "in-process service + echo plugin child process",
        ["measure", "messages/s", "each repeat"],
        [
            [
                "budgets off: bridge -> ... -> message.send sent (first POST to last sent)",
                rate["off"],
                " ".join(f"{r['rate']:.0f}" for r in runs["off"]),
            ],
            [
                "budgets on (generous limits.outbound): same",
                rate["on"],
                " ".join(f"{r['rate']:.0f}" for r in runs["on"]),
            ],
            [
                "  budgets on / off, paired within each repeat",
                paired,
                " ".join(f"{on['rate'] / off['rate']:.2f}" for off, on in zip(runs["off"], runs["on"], strict=True)),
            ],
            [
                "  bridge POSTs accepted/s during the budgets-off runs",
                median([r["ingest_rps"] for r in runs["off"]]),
                " ".join(f"{r['ingest_rps']:.0f}" for r in runs["off"]),
            ],
            [
                "reference: direct message.send to the plugin (16 in flight)",
                median(direct),
                " ".join(f"{d:.0f}" for d in direct),
            ],
        ],
    )
    cost = {waiting: median(values) for waiting, values in costs.items()}
    report.table(
        f"dispatcher, {dispatch_count} deliveries to 64 peers released at once, SQLite file, memory channel",
        ["deliveries waiting beside", "us per delivery", "each repeat"],
        [[f"{waiting:,}", cost[waiting], " ".join(f"{c:.1f}" for c in costs[waiting])] for waiting in costs],
    )
    statuses: dict[str, int] = {}
    for rs in runs.values():
        for r in rs:
            for k, v in (r["statuses"] or {}).items():
                statuses[k] = statuses.get(k, 0) + v
    timed_out = sum(1 for rs in runs.values() for r in rs if r["timed_out"])
    report.note(f"bridge answers: {statuses}; timed out runs: {timed_out}")
    report.check("end-to-end messages/s, budgets off", rate["off"], ">= 1000", "/s")
    report.check("budgets on / off (median of the paired ratios)", paired, ">= 0.9")
    report.check(f"dispatcher cost, {WAITING:,} waiting / none", cost[WAITING] / cost[0], "<= 1.3")
    report.data = {"runs": runs, "direct_send_per_s": direct, "dispatcher_us": costs}
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
