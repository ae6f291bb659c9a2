"""Weixin plugin: inbound messages/s through long poll -> host -> echo handler -> sendmessage, and idle RSS.

    .venv/bin/python bench/weixin.py [--quick] [--json] [--messages N] [--accounts 10]

The service runs in this process: `admin_api.create_app` around a `ChannelRuntime`
(SQLite store, the default echo handler) and a `PluginHost` under uvicorn, with the
real `weixin_vendorcli` plugin process installed from `plugins/weixin_vendorcli`
(its `limits.outbound` removed: the outbound budget is off). The fake iLink server
(`tests/weixin_vendorcli/fake_ilink.py`) runs in a process of its own. `--accounts`
accounts log in through the QR flow; N messages from 64 peers are queued on the
first account, and the clock runs from queueing them until the fake has received N
replies through `sendmessage`.

Reference, same run, same fake process: a bare client doing the platform round
trip itself (long poll `getupdates`, then `sendmessage` for each message, 16 in
flight) over the same number of messages, the fake's own ceiling.

Idle RSS: VmRSS of the plugin process with every account connected and idle (long
polls held), sampled after the throughput runs too.

Targets: >= 500 messages/s end to end; <= 40 MB RSS for 10 idle accounts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from admin_api import create_app  # noqa: E402
from bench._common import REPO, Report, free_port, median, parser, progress  # noqa: E402
from channel_runtime.runtime import ChannelRuntime, echo_handler  # noqa: E402
from channel_runtime.settings import Settings  # noqa: E402
from plugin_host.host import PluginHost  # noqa: E402
from plugin_host.package import pack_directory  # noqa: E402

ADMIN_TOKEN = "bench-admin-token-0123456789"
PLUGIN_ID = "weixin_vendorcli"
PEERS = 64


def plugin_without_budget(work: Path) -> Path:
    """plugins/weixin_vendorcli packed with `limits.outbound` removed (the budget is not what is measured)."""
    import shutil

    src = work / "weixin_vendorcli"
    shutil.copytree(REPO / "plugins" / PLUGIN_ID, src, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = json.loads((src / "plugin.json").read_text())
    manifest["limits"].pop("outbound", None)
    (src / "plugin.json").write_text(json.dumps(manifest))
    return pack_directory(src, work / "weixin_vendorcli.zip")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Fake:
    """The fake iLink server in its own process, driven through its `/_fake/*` routes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.weixin_vendorcli.fake_ilink",
                "--port",
                str(self.port),
                "--hold",
                "1.0",
                "--no-record",
            ],
            cwd=REPO,
        )
        self.http = httpx.AsyncClient(base_url=self.url, timeout=30)

    async def ready(self) -> None:
        for _ in range(200):
            try:
                await self.http.get("/_fake/stats")
                return
            except httpx.TransportError:
                await anyio.sleep(0.05)
        raise RuntimeError("the fake iLink server did not start")

    async def sent(self) -> int:
        return int((await self.http.get("/_fake/stats")).json()["sent"])

    async def deliver(self, token: str, count: int) -> None:
        await self.http.post("/_fake/deliver", json={"token": token, "count": count, "peers": PEERS})

    async def close(self) -> None:
        await self.http.aclose()
        self.proc.terminate()
        self.proc.wait(10)


async def wait_sent(fake: Fake, target: int, timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await fake.sent() >= target:
            return time.perf_counter()
        await anyio.sleep(0.05)  # each look is an HTTP call from this (the host) process: not too often
    return None


async def end_to_end(fake: Fake, token: str, count: int, cpu: dict[str, list[float]], pids: dict[str, int]) -> float:
    before = await fake.sent()
    used = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.perf_counter()
    await fake.deliver(token, count)
    done = await wait_sent(fake, before + count, max(120.0, count / 20))
    for name, pid in pids.items():
        cpu.setdefault(name, []).append((cpu_seconds(pid) - used[name]) * 1000 / count)
    return count / (done - started) if done else float("nan")


async def raw_round_trip(fake: Fake, token: str, count: int) -> float:
    """The platform round trip without us: getupdates, then one sendmessage per message, 16 in flight."""
    headers = {"Authorization": f"Bearer {token}", "AuthorizationType": "ilink_bot_token"}
    base_info = {"channel_version": "2.4.9", "bot_agent": "bench"}
    async with httpx.AsyncClient(base_url=fake.url, headers=headers, timeout=30) as http:
        before = await fake.sent()
        started = time.perf_counter()
        await fake.deliver(token, count)
        cursor, done = "", 0
        while done < count:
            answer = (
                await http.post("/ilink/bot/getupdates", json={"get_updates_buf": cursor, "base_info": base_info})
            ).json()
            cursor = answer.get("get_updates_buf") or cursor
            messages = iter(answer.get("msgs") or [])

            async def sender(messages: Any) -> None:
                for m in messages:
                    msg = {
                        "from_user_id": "",
                        "to_user_id": m["from_user_id"],
                        "client_id": f"raw-{m['seq']}",
                        "message_type": 2,
                        "message_state": 2,
                        "item_list": [
                            {"type": 1, "text_item": {"text": "echo: " + m["item_list"][0]["text_item"]["text"]}}
                        ],
                        "context_token": m["context_token"],
                    }
                    await http.post("/ilink/bot/sendmessage", json={"msg": msg, "base_info": base_info})

            async with anyio.create_task_group() as tg:
                for _ in range(16):
                    tg.start_soon(sender, messages)
            done = await fake.sent() - before
        return count / (time.perf_counter() - started)


async def connect_accounts(runtime: ChannelRuntime, fake: Fake, n: int) -> list[str]:
    assert runtime.connections is not None
    tokens = []
    for i in range(n):
        token = f"benchTOKEN{i:02d}abcdefghijklmnop0123456789"
        view = await runtime.connections.start_session("weixin", f"bench {i}")
        connection_id = view["connection"]["connectionId"]
        await fake.http.post(
            "/_fake/status", json={"status": "confirmed", "bot_token": token, "ilink_bot_id": f"b{i}@im.bot"}
        )
        for _ in range(400):
            record = await runtime.store.connections.get(connection_id)
            if record is not None and record.status == "connected":
                break
            await anyio.sleep(0.025)
        else:
            raise RuntimeError(f"account {i} did not connect")
        tokens.append(token)
    return tokens


async def main_async(args: Any) -> Report:
    report = Report("bench/weixin.py: iLink long poll -> host -> echo handler -> sendmessage", args.quick)
    repeats = 1 if args.quick else 3
    count = args.messages or (1000 if args.quick else 3000)
    fake = Fake()
    try:
        await fake.ready()
        with tempfile.TemporaryDirectory(prefix="bench-weixin-", dir=os.environ.get("BENCH_TMP")) as tmp_text:
            work = Path(tmp_text)
            home = work / "home"
            home.mkdir()
            settings = Settings(home=home, store_url=f"sqlite:///{home / 'state.db'}", admin_token=ADMIN_TOKEN)
            host = PluginHost(home)
            runtime = ChannelRuntime(handler=echo_handler, store=settings.store_url, plugin_host=host, home=home)
            app = create_app(host=host, runtime=runtime, settings=settings)
            port = free_port()
            server = uvicorn.Server(
                uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="warning", access_log=False)
            )
            e2e: list[float] = []
            raw: list[float] = []
            rss: dict[str, float] = {}
            cpu: dict[str, list[float]] = {}
            async with anyio.create_task_group() as tg:
                tg.start_soon(server.serve)
                while not server.started:
                    await anyio.sleep(0.05)
                try:
                    progress("installing the weixin plugin (outbound budget off) ...")
                    await host.install(plugin_without_budget(work), source_label="bench")
                    await host.set_config(PLUGIN_ID, {"baseUrl": fake.url, "qrPollIntervalMs": 100})
                    await host.enable(PLUGIN_ID)
                    progress(f"logging in {args.accounts} accounts ...")
                    tokens = await connect_accounts(runtime, fake, args.accounts)
                    for i in range(args.accounts):
                        await fake.http.post("/_fake/bots", json={"token": f"rawTOKEN{i}", "botId": f"raw{i}@im.bot"})
                    supervisor = host.supervisor(PLUGIN_ID)
                    assert supervisor is not None and supervisor.pid is not None
                    pid = supervisor.pid
                    await anyio.sleep(3)
                    rss["idle"] = median([rss_mb(pid) for _ in range(3)])
                    progress(f"idle RSS with {args.accounts} accounts: {rss['idle']:.1f} MB")
                    pids = {"host (this process)": os.getpid(), "plugin": pid, "fake platform": fake.proc.pid}
                    await end_to_end(fake, tokens[0], min(300, count), {}, pids)  # warm-up
                    await raw_round_trip(fake, "rawTOKEN0", min(300, count))
                    for rep in range(repeats):
                        e2e.append(await end_to_end(fake, tokens[0], count, cpu, pids))
                        raw.append(await raw_round_trip(fake, f"rawTOKEN{(rep + 1) % args.accounts}", count))
                        progress(f"repeat {rep + 1}/{repeats}: end to end {e2e[-1]:,.0f}/s, raw {raw[-1]:,.0f}/s")
                    await anyio.sleep(3)
                    rss["after"] = median([rss_mb(pid) for _ in range(3)])
                finally:
                    server.should_exit = True
    finally:
        await fake.close()
    e2e_rate, raw_rate = median(e2e), median(raw)
    report.table(
        f"inbound -> reply, {count} messages from {PEERS} peers (median of {repeats})",
        ["path", "messages/s", "runs"],
        [
            ["long poll -> host -> echo -> sendmessage", e2e_rate, ", ".join(f"{r:,.0f}" for r in e2e)],
            ["raw fake round trip (reference)", raw_rate, ", ".join(f"{r:,.0f}" for r in raw)],
            ["ratio end to end / reference", e2e_rate / raw_rate, ""],
        ],
    )
    report.table(
        "CPU per message, end to end (median)",
        ["process", "CPU ms/message"],
        [[name, median(values)] for name, values in cpu.items()],
    )
    report.table(
        f"plugin RSS with {args.accounts} connected accounts",
        ["when", "MB"],
        [
            ["idle, after login", rss.get("idle", float("nan"))],
            ["idle, after the runs", rss.get("after", float("nan"))],
        ],
    )
    report.check("end to end messages/s", e2e_rate, ">= 500", "/s")
    report.check(f"idle RSS, {args.accounts} accounts", rss.get("idle", float("nan")), "<= 40", " MB")
    report.data.update(e2e=e2e, raw=raw, rss=rss, cpu=cpu, count=count, accounts=args.accounts)
    return report


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=0)
    p.add_argument("--accounts", type=int, default=10)
    args = p.parse_args()
    report = anyio.run(main_async, args)
    report.emit(args.json)


if __name__ == "__main__":
    main()
