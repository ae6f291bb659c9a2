"""RPC benchmark: our host <-> SDK plugin, side by side with a raw floor and the MCP SDK.

    .venv/bin/python bench/rpc.py [--quick] [--json]

One run measures, interleaved so the noise of a small machine hits every
system alike, and reports the median over repeats with its reference beside it:

- sequential round trip (p50/p99) and throughput with 64 calls in flight for
  - ours: `PluginSupervisor.call` -> SDK plugin (`bench/plugins/sdk_echo`)
  - raw floor: the same supervisor -> a msgspec newline echo (`bench/plugins/raw_echo`)
  - MCP: the official `mcp` SDK, stdio client -> server with one tool (`bench/plugins/mcp_echo`)
- cold start: spawn -> `initialized` of the SDK plugin vs `python -c 'import msgspec, anyio'`
- the sandbox (SPEC 5.3, `plugin_host.sandbox`): the same SDK plugin sandboxed vs not, sequential
  p50 and cold start (targets: <= 1.1x and <= +30 ms)
- idle RSS of the SDK plugin after the handshake vs a bare process that imported msgspec and anyio
- host-kept state: `plugin.state.put` round trips timed inside an SDK plugin (`bench/plugins/sdk_state`)
  through the real `PluginHost` and `ChannelRuntime` (SQLite store), sequential (p50) and 16 in
  flight (puts/s), beside the same writes made on the store directly (no RPC)

Targets are reported PASS/MISS, never asserted. This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:  # `python bench/rpc.py` puts bench/ first, not the repo
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import msgspec  # noqa: E402

from plugin_host.launch import LaunchSpec, build_env  # noqa: E402
from plugin_host.manifest import MANIFEST_NAME, load_manifest  # noqa: E402
from plugin_host.sandbox import Sandbox  # noqa: E402
from plugin_host.supervisor import PluginSupervisor  # noqa: E402

PLUGINS = BENCH_DIR / "plugins"
IN_FLIGHT = 64
STATE_IN_FLIGHT = 16
STATE_PLUGIN = "bench_sdk_state"
FAST_STOP = {"shutdown_timeout": 1.0, "exit_timeout": 0.5, "term_timeout": 0.5}
Call = Callable[[int], Awaitable[Any]]


@dataclass(frozen=True)
class Settings:
    seq_calls: int
    seq_repeats: int
    tput_seconds: float
    tput_repeats: int
    cold_starts: int
    rss_samples: int
    warmup_calls: int = 500

    @classmethod
    def full(cls) -> Settings:
        return cls(seq_calls=5000, seq_repeats=5, tput_seconds=5.0, tput_repeats=3, cold_starts=10, rss_samples=5)

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            seq_calls=1000,
            seq_repeats=3,
            tput_seconds=1.0,
            tput_repeats=2,
            cold_starts=5,
            rss_samples=3,
            warmup_calls=200,
        )


@dataclass
class Runs:
    """Samples of one figure for one system, one per repeat; the report uses the median."""

    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan


# ---------------------------------------------------------------- systems under test


def launch_spec(name: str, data_root: Path) -> LaunchSpec:
    version_dir = PLUGINS / name
    manifest = load_manifest((version_dir / MANIFEST_NAME).read_bytes())
    return LaunchSpec(
        plugin_id=manifest.id,
        version=manifest.version,
        version_dir=version_dir,
        data_dir=data_root / manifest.id,
        manifest=manifest,
    )


def payload(i: int) -> dict[str, Any]:
    return {"text": "hello, plugin", "i": i}


@contextlib.asynccontextmanager
async def supervised(spec: LaunchSpec) -> AsyncIterator[PluginSupervisor]:
    async with PluginSupervisor(spec, **FAST_STOP) as sup:
        await sup.start()
        try:
            yield sup
        finally:
            await sup.stop()


@contextlib.asynccontextmanager
async def supervisor_caller(spec: LaunchSpec) -> AsyncIterator[Call]:
    async with supervised(spec) as sup:

        async def call(i: int) -> Any:
            return await sup.call("echo", payload(i))

        assert await call(7) == payload(7)
        yield call


@contextlib.asynccontextmanager
async def mcp_caller() -> AsyncIterator[Call]:
    from mcp import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    server = StdioServerParameters(command=sys.executable, args=[str(PLUGINS / "mcp_echo" / "mcp_echo.py")])
    with open(os.devnull, "w") as errlog:
        async with stdio_client(server, errlog=errlog) as (read, write), ClientSession(read, write) as session:
            await session.initialize()

            async def call(i: int) -> Any:
                return await session.call_tool("echo", payload(i))

            result = await call(7)
            assert not result.is_error and result.content[0].text == "hello, plugin", result
            yield call


# ---------------------------------------------------------------- measurements


def percentile(ordered: list[float], p: float) -> float:
    rank = min(len(ordered), max(1, math.ceil(p / 100.0 * len(ordered))))  # nearest rank
    return ordered[rank - 1]


async def sequential(call: Call, n: int, warmup: int) -> tuple[float, float]:
    """p50 and p99 round trip in microseconds over `n` calls, one at a time."""
    for i in range(warmup):
        await call(i)
    clock = time.perf_counter
    latencies = []
    for i in range(n):
        began = clock()
        await call(i)
        latencies.append(clock() - began)
    latencies.sort()
    return percentile(latencies, 50) * 1e6, percentile(latencies, 99) * 1e6


async def throughput(call: Call, seconds: float, warmup: int) -> float:
    """Completed calls per second with `IN_FLIGHT` callers, each calling back to back."""
    clock = time.perf_counter
    done = 0

    async def caller(until: float, count: bool) -> None:
        nonlocal done
        i = 0
        while clock() < until:
            await call(i)
            i += 1
            if count:
                done += 1

    async with anyio.create_task_group() as tg:  # warm up with the same shape of load
        for _ in range(IN_FLIGHT):
            tg.start_soon(caller, clock() + min(0.3, seconds / 4), False)
    began = clock()
    async with anyio.create_task_group() as tg:
        for _ in range(IN_FLIGHT):
            tg.start_soon(caller, began + seconds, True)
    return done / (clock() - began)


async def cold_start_ours(spec: LaunchSpec) -> float:
    """Milliseconds from spawn to `initialized` sent (what `PluginSupervisor.start()` waits for)."""
    async with PluginSupervisor(spec, **FAST_STOP) as sup:
        began = time.perf_counter()
        await sup.start()
        elapsed = time.perf_counter() - began
        await sup.stop()
    return elapsed * 1000.0


async def cold_start_floor(spec: LaunchSpec) -> float:
    """Milliseconds to spawn `python -c 'import msgspec, anyio'` and see it exit."""
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    process = await anyio.open_process(
        [spec.python, "-c", "import msgspec, anyio"],
        env=build_env(spec),
        cwd=str(spec.data_dir),
        start_new_session=True,
        stdin=None,
        stdout=None,
        stderr=None,
    )
    async with process:
        code = await process.wait()
    elapsed = time.perf_counter() - began
    if code != 0:
        raise RuntimeError(f"the cold-start floor process exited with {code}")
    return elapsed * 1000.0


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def idle_rss_ours(spec: LaunchSpec, settle: float) -> float:
    async with supervised(spec) as sup:
        await anyio.sleep(settle)
        assert sup.pid is not None
        return rss_mib(sup.pid)


BARE_CHILD = "import msgspec, anyio, sys, time; print('ready', flush=True); time.sleep(60)"


async def idle_rss_bare(spec: LaunchSpec, settle: float) -> float:
    spec.data_dir.mkdir(parents=True, exist_ok=True)
    process = await anyio.open_process(
        [spec.python, "-c", BARE_CHILD],
        env=build_env(spec),
        cwd=str(spec.data_dir),
        stdin=None,
        stderr=None,
    )
    async with process:
        try:
            assert process.stdout is not None
            await process.stdout.receive()  # "ready": the imports are done
            await anyio.sleep(settle)
            return rss_mib(process.pid)
        finally:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------- host-kept state


StatePuts = Callable[[int, int], Awaitable[dict[str, float]]]  # (count, in flight) -> p50Us, p99Us, perSecond


@contextlib.asynccontextmanager
async def state_writers(tmp: Path) -> AsyncIterator[tuple[StatePuts, StatePuts]]:
    """(through the plugin, on the store directly): the same puts, timed the same way."""
    from channel_runtime.runtime import ChannelRuntime
    from plugin_host.host import PluginHost
    from plugin_host.package import pack_directory

    home = tmp / "state-home"
    home.mkdir()

    async def no_reply(message: Any) -> None:
        return None

    host = PluginHost(home)
    runtime = ChannelRuntime(no_reply, f"sqlite:///{home / 'state.db'}", plugin_host=host, home=home)
    async with runtime, host:
        await host.install(pack_directory(PLUGINS / "sdk_state", tmp / "sdk_state.zip"))
        await host.enable(STATE_PLUGIN)
        record = await runtime.store.connections.create(kind=STATE_PLUGIN, plugin_id=STATE_PLUGIN, status="connected")
        supervisor = host.supervisor(STATE_PLUGIN)
        assert supervisor is not None
        store = runtime.store.plugin_state

        async def through_plugin(count: int, in_flight: int) -> dict[str, float]:
            params = {"connectionId": record.connection_id, "count": count, "inFlight": in_flight}
            result: dict[str, float] = await supervisor.call("bench.state", params, timeout=300)
            return result

        async def on_store(count: int, in_flight: int) -> dict[str, float]:
            clock = time.perf_counter
            latencies: list[float] = []
            todo = iter(range(count))

            async def writer() -> None:
                for i in todo:
                    began = clock()
                    value = {"offset": i, "token": "t" * 32}
                    await store.put(STATE_PLUGIN, record.connection_id, f"cursor_{i % 64}", value)
                    latencies.append(clock() - began)

            began = clock()
            async with anyio.create_task_group() as tg:
                for _ in range(in_flight):
                    tg.start_soon(writer)
            elapsed = clock() - began
            latencies.sort()
            return {
                "p50Us": percentile(latencies, 50) * 1e6,
                "p99Us": percentile(latencies, 99) * 1e6,
                "perSecond": count / elapsed,
            }

        yield through_plugin, on_store


async def state_figures(settings: Settings, tmp: Path, figures: dict[str, dict[str, Runs]], progress: Any) -> None:
    async with state_writers(tmp) as (through_plugin, on_store):
        await through_plugin(settings.warmup_calls, 1)
        await on_store(settings.warmup_calls, 1)
        for r in range(settings.seq_repeats):
            for name, puts in (("state", through_plugin), ("store", on_store)):
                progress(f"state.put sequential {r + 1}/{settings.seq_repeats} {name}")
                result = await puts(settings.seq_calls, 1)
                figures[name]["p50"].values.append(result["p50Us"])
                figures[name]["p99"].values.append(result["p99Us"])
        for r in range(settings.tput_repeats):
            for name, puts in (("state", through_plugin), ("store", on_store)):
                progress(f"state.put {STATE_IN_FLIGHT} in flight {r + 1}/{settings.tput_repeats} {name}")
                result = await puts(settings.seq_calls * 2, STATE_IN_FLIGHT)
                figures[name]["tput"].values.append(result["perSecond"])


# ---------------------------------------------------------------- the run


SYSTEMS = ("sdk", "raw", "mcp", "sbx")


async def run(settings: Settings, progress: Callable[[str], None]) -> dict[str, dict[str, Runs]]:
    figures: dict[str, dict[str, Runs]] = {
        name: {m: Runs() for m in ("p50", "p99", "tput", "cold", "rss")}
        for name in (*SYSTEMS, "floor", "state", "store")
    }
    with tempfile.TemporaryDirectory(prefix="bench-rpc-") as tmp:
        data_root = Path(tmp)
        sdk_spec = launch_spec("sdk_echo", data_root)
        raw_spec = launch_spec("raw_echo", data_root)
        sandbox = Sandbox(hidden=[data_root / "hidden"])
        status = await sandbox.probe()
        if not status.isolated:
            progress(f"no sandbox here ({status.warning}): the sandbox rows measure the limits only")
        sbx_spec = dataclasses.replace(launch_spec("sdk_echo", data_root / "sandboxed"), sandbox=sandbox)
        async with contextlib.AsyncExitStack() as stack:
            callers = {
                "sdk": await stack.enter_async_context(supervisor_caller(sdk_spec)),
                "raw": await stack.enter_async_context(supervisor_caller(raw_spec)),
                "mcp": await stack.enter_async_context(mcp_caller()),
                "sbx": await stack.enter_async_context(supervisor_caller(sbx_spec)),
            }
            for r in range(settings.seq_repeats):
                for name in SYSTEMS:  # interleaved: drift and noise hit every system alike
                    progress(f"sequential {r + 1}/{settings.seq_repeats} {name}")
                    p50, p99 = await sequential(callers[name], settings.seq_calls, settings.warmup_calls)
                    figures[name]["p50"].values.append(p50)
                    figures[name]["p99"].values.append(p99)
            for r in range(settings.tput_repeats):
                for name in ("sdk", "raw", "mcp"):
                    progress(f"throughput {r + 1}/{settings.tput_repeats} {name}")
                    rate = await throughput(callers[name], settings.tput_seconds, settings.warmup_calls)
                    figures[name]["tput"].values.append(rate)
        await cold_start_floor(sdk_spec)  # warm the page cache for all
        await cold_start_ours(sdk_spec)
        await cold_start_ours(sbx_spec)
        for r in range(settings.cold_starts):
            progress(f"cold start {r + 1}/{settings.cold_starts}")
            figures["sdk"]["cold"].values.append(await cold_start_ours(sdk_spec))
            figures["floor"]["cold"].values.append(await cold_start_floor(sdk_spec))
            figures["sbx"]["cold"].values.append(await cold_start_ours(sbx_spec))
        for r in range(settings.rss_samples):
            progress(f"idle rss {r + 1}/{settings.rss_samples}")
            figures["sdk"]["rss"].values.append(await idle_rss_ours(sdk_spec, settle=0.5))
            figures["floor"]["rss"].values.append(await idle_rss_bare(sdk_spec, settle=0.5))
        await state_figures(settings, data_root, figures, progress)
    return figures


# ---------------------------------------------------------------- report


@dataclass
class Row:
    figure: str
    ours: float
    reference: str
    ref_value: float
    relation: str  # how ours compares with the reference, as printed
    target: str = ""
    ok: bool | None = None

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


def ratio(a: float, b: float) -> float:
    return a / b if b else math.inf


def paired(ours: Runs, ref: Runs, relate: Callable[[float, float], float]) -> float:
    """Median over repeats of `relate(ours, ref)` within each repeat: the two ran back to back,
    so load that comes and goes on the machine cancels out better than in a ratio of medians."""
    return statistics.median(relate(a, b) for a, b in zip(ours.values, ref.values, strict=False))


def rows_of(f: dict[str, dict[str, Runs]]) -> list[Row]:
    sdk, raw, mcp, floor, sbx = f["sdk"], f["raw"], f["mcp"], f["floor"], f["sbx"]
    sbx_p50 = paired(sbx["p50"], sdk["p50"], ratio)
    sbx_cold = paired(sbx["cold"], sdk["cold"], lambda a, b: a - b)
    p50_ratio = paired(sdk["p50"], raw["p50"], ratio)
    tput_vs_mcp = paired(sdk["tput"], mcp["tput"], ratio)
    cold_extra = paired(sdk["cold"], floor["cold"], lambda a, b: a - b)
    rss_ratio = paired(sdk["rss"], floor["rss"], ratio)
    return [
        Row(
            "sequential p50 (us)",
            sdk["p50"].median,
            "raw floor",
            raw["p50"].median,
            f"{p50_ratio:.2f}x",
            "<= 2x floor",
            p50_ratio <= 2.0,
        ),
        Row(
            "sequential p99 (us)",
            sdk["p99"].median,
            "raw floor",
            raw["p99"].median,
            f"{paired(sdk['p99'], raw['p99'], ratio):.2f}x",
        ),
        Row(
            "sequential p50 (us)",
            sdk["p50"].median,
            "MCP SDK",
            mcp["p50"].median,
            f"{paired(mcp['p50'], sdk['p50'], ratio):.1f}x faster",
        ),
        Row(
            "sequential p99 (us)",
            sdk["p99"].median,
            "MCP SDK",
            mcp["p99"].median,
            f"{paired(mcp['p99'], sdk['p99'], ratio):.1f}x faster",
        ),
        Row(
            f"calls/s, {IN_FLIGHT} in flight",
            sdk["tput"].median,
            "raw floor",
            raw["tput"].median,
            f"{paired(sdk['tput'], raw['tput'], ratio):.2f}x",
            ">= 30,000/s",
            sdk["tput"].median >= 30_000,
        ),
        Row(
            f"calls/s, {IN_FLIGHT} in flight",
            sdk["tput"].median,
            "MCP SDK",
            mcp["tput"].median,
            f"{tput_vs_mcp:.1f}x",
            ">= 25x MCP",
            tput_vs_mcp >= 25.0,
        ),
        Row(
            "cold start to initialized (ms)",
            sdk["cold"].median,
            "python -c import",
            floor["cold"].median,
            f"{cold_extra:+.1f} ms",
            "<= floor + 40 ms",
            cold_extra <= 40.0,
        ),
        Row(
            "sandboxed: sequential p50 (us)",
            sbx["p50"].median,
            "not sandboxed",
            sdk["p50"].median,
            f"{sbx_p50:.2f}x",
            "<= 1.1x",
            sbx_p50 <= 1.1,
        ),
        Row(
            "sandboxed: cold start (ms)",
            sbx["cold"].median,
            "not sandboxed",
            sdk["cold"].median,
            f"{sbx_cold:+.1f} ms",
            "<= +30 ms",
            sbx_cold <= 30.0,
        ),
        Row(
            "idle RSS (MiB)",
            sdk["rss"].median,
            "bare python",
            floor["rss"].median,
            f"{rss_ratio:.2f}x",
            "<= 1.3x bare",
            rss_ratio <= 1.3,
        ),
        Row(
            "state.put round trip p50 (us)",
            f["state"]["p50"].median,
            "store.put, no RPC",
            f["store"]["p50"].median,
            f"{paired(f['state']['p50'], f['store']['p50'], lambda a, b: a - b):+.0f} us",
        ),
        Row(
            "state.put round trip p99 (us)",
            f["state"]["p99"].median,
            "store.put, no RPC",
            f["store"]["p99"].median,
            f"{paired(f['state']['p99'], f['store']['p99'], lambda a, b: a - b):+.0f} us",
        ),
        Row(
            f"state.put/s, {STATE_IN_FLIGHT} in flight",
            f["state"]["tput"].median,
            "store.put, no RPC",
            f["store"]["tput"].median,
            f"{paired(f['state']['tput'], f['store']['tput'], ratio):.2f}x",
        ),
    ]


def fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def table(rows: list[Row]) -> str:
    header = ("figure", "ours", "reference", "ref value", "ours vs ref", "target", "")
    lines = [header] + [
        (r.figure, fmt(r.ours), r.reference, fmt(r.ref_value), r.relation, r.target, r.verdict) for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {1, 3, 4}
    out = []
    for n, line in enumerate(lines):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths, strict=False))]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def spread(f: dict[str, dict[str, Runs]]) -> str:
    """Every repeat of every figure, so a reader can judge the noise behind each median."""
    names = {
        "sdk": "ours",
        "raw": "raw floor",
        "mcp": "MCP SDK",
        "floor": "floor",
        "state": "state.put",
        "store": "store",
        "sbx": "sandboxed",
    }
    out = []
    for metric, unit in (("p50", "us"), ("p99", "us"), ("tput", "calls/s"), ("cold", "ms"), ("rss", "MiB")):
        parts = [f"{names[s]} " + "/".join(fmt(v) for v in f[s][metric].values) for s in names if f[s][metric].values]
        out.append(f"  {metric:<4} ({unit}): " + "; ".join(parts))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run: fewer calls, shorter windows, fewer repeats")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = parser.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings.full()

    def progress(text: str) -> None:
        print(f"  .. {text}", file=sys.stderr, flush=True)

    began = time.perf_counter()
    figures = anyio.run(run, settings, progress)
    rows = rows_of(figures)
    print(
        f"bench/rpc.py{' --quick' if args.quick else ''}: python {platform.python_version()}, "
        f"msgspec {msgspec.__version__}, {os.cpu_count()} cpus, {time.perf_counter() - began:.0f} s; "
        f"medians of {settings.seq_repeats} x {settings.seq_calls} sequential calls, "
        f"{settings.tput_repeats} x {settings.tput_seconds:g} s at {IN_FLIGHT} in flight, "
        f"{settings.cold_starts} cold starts, {settings.rss_samples} RSS samples"
    )
    print(table(rows))
    print("(ours, ref value: medians over repeats; ours vs ref: median of the per-repeat comparison)")
    print("repeats:")
    print(spread(figures))
    if args.json:
        print(
            json.dumps(
                {
                    "settings": settings.__dict__,
                    "rows": [{**r.__dict__, "verdict": r.verdict} for r in rows],
                    "runs": {
                        s: {m: runs.values for m, runs in metrics.items() if runs.values}
                        for s, metrics in figures.items()
                    },
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
