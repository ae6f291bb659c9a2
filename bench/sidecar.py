"""Sidecar mode (SPEC 11): inbound events/s through the forwarder, and `/send` requests/s with dedupe.

    .venv/bin/python bench/sidecar.py [--quick] [--json] [--events N] [--sends N] [--repeats R]

Three processes on loopback, each under the same uvicorn settings (`bench/_serve.py`: one
worker, asyncio, h11, no access log): a `channel-runtime serve` app (no-op handler,
SQLite) with CHANNEL_RUNTIME_SIDECAR_URL pointing at a `channel-runtime sidecar` app
(SQLite in its home) whose BEAVER_BRIDGE_BASE_URL is that serve; and a bare Starlette app.
The `sidecho` test plugin is uploaded to the sidecar and its account onboarded through
serve (so both stores know the connection).

Inbound, per round (alternating, medians over rounds):
- through the sidecar: one webhook asks the plugin to emit N `event.inbound` calls
  (32 in flight, 64 conversations); each is committed to the sidecar's forward queue,
  acked, and forwarded to serve's bridge. Time: from the webhook until serve's store holds
  all N bridge dedupe records (polled every 10 ms).
- straight: `bench/_loadgen.py` POSTs N events to the same serve bridge (32 keep-alive
  connections, 64 conversations). Time: first send to last answer.
Target: through the sidecar >= 70% of straight.

`/send`: `_loadgen.py --shape send` POSTs N send requests (unique requestIds: dedupe
begin, plugin `message.send` over JSON-RPC, dedupe complete) to the sidecar, for the
bundled echo plugin's account; `send-same` repeats one requestId (completed duplicates,
answered from the dedupe store); the reference is a bare Starlette `/send` (decode, answer)
on the same machine, loaded the same way.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import REPO, Child, Report, free_port, median, parser, progress  # noqa: E402
from plugin_host.package import pack_directory  # noqa: E402

ADMIN = "bench-sidecar-admin-token-0123456789"
CONNECTOR = "bench-sidecar-connector-token-0123456789"
BRIDGE = "bench-sidecar-bridge-token-0123456789"
SEND_CONNECTION = "conn_bench_send"


class Server(Child):
    def __init__(self, name: str, app: str, port: int, home: Path | None, env: dict[str, str], **extra: str) -> None:
        args = [sys.executable, "-m", "bench._serve", app, "--port", str(port)]
        if home is not None:
            args += ["--home", str(home)]
        for key, value in extra.items():
            args += [f"--{key}", value]
        environ = {
            k: v for k, v in os.environ.items() if not k.startswith(("CHANNEL_RUNTIME_", "CONNECTOR_", "BEAVER_"))
        }
        environ.update(env, PYTHONPATH=str(REPO))
        super().__init__(name, args, environ, stop_timeout=30.0)
        self.port = port

    def wait_ready(self, path: str = "/healthz", timeout: float = 90.0) -> None:
        self.wait_http(f"http://127.0.0.1:{self.port}{path}", timeout)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children (the plugins), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def tree_cpu(pid: int) -> float:
    """CPU of a process and its live children (plugin processes), from /proc."""
    return cpu_seconds(pid) + children_cpu(pid)


def children_cpu(pid: int) -> float:
    """CPU of a process's live descendants (a sidecar's plugin processes, under their sandbox), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        total += cpu_seconds(child)
        todo += parents.get(child, [])
    return total


def wait_until(check: Any, timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def accepted(db: Path, prefix: str) -> int:
    """Bridge dedupe records of serve for events `evt_{prefix}…` (each one accepted by its bridge)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM bridge_dedupe WHERE event_id LIKE ?", (f"evt_{prefix}%",)).fetchone()[0]
        )
    finally:
        conn.close()


def loadgen(port: int, token: str, connection_id: str, prefix: str, count: int, shape: str) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "_loadgen.py"),
            "--port",
            str(port),
            "--token",
            token,
            "--connection-id",
            connection_id,
            "--prefix",
            prefix,
            "--count",
            str(count),
            "--connections",
            "32",
            "--peers",
            "64",
            "--shape",
            shape,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=None, help="events per inbound round (default 3000; quick 500)")
    p.add_argument("--sends", type=int, default=None, help="requests per /send round (default 3000; quick 500)")
    p.add_argument("--repeats", type=int, default=None, help="rounds (default 3; quick 1)")
    args = p.parse_args()
    events = args.events or (500 if args.quick else 3000)
    sends = args.sends or (500 if args.quick else 3000)
    repeats = args.repeats or (1 if args.quick else 3)
    report = Report("sidecar", args.quick)

    work = Path(tempfile.mkdtemp(prefix="bench-sidecar-"))
    serve_port, sidecar_port, bare_port = free_port(), free_port(), free_port()
    sidecar = Server(
        "sidecar",
        "sidecar",
        sidecar_port,
        work / "sidecar",
        {
            "CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN,
            "CONNECTOR_API_TOKEN": CONNECTOR,
            "BEAVER_BRIDGE_BASE_URL": f"http://127.0.0.1:{serve_port}",
            "BEAVER_BRIDGE_TOKEN": BRIDGE,
            "CHANNEL_RUNTIME_FORWARD_RETRY_CAP_SECONDS": "1",
        },
    )
    serve = Server(
        "serve",
        "ours",
        serve_port,
        work / "serve",
        {
            "CHANNEL_RUNTIME_ADMIN_TOKEN": ADMIN,
            "CHANNEL_RUNTIME_BRIDGE_TOKEN": BRIDGE,
            "CHANNEL_RUNTIME_SIDECAR_URL": f"http://127.0.0.1:{sidecar_port}",
            "CHANNEL_RUNTIME_SIDECAR_TOKEN": CONNECTOR,
        },
        handler="bench._handlers:noop",
    )
    bare = Server("bare", "ceiling", bare_port, None, {"BENCH_CEILING_DB": str(work / "ceiling.db")})
    try:
        for server in (sidecar, serve, bare):
            server.wait_ready()
        admin = {"Authorization": f"Bearer {ADMIN}"}
        connector = {"Authorization": f"Bearer {CONNECTOR}"}
        side = f"http://127.0.0.1:{sidecar_port}"
        archive = pack_directory(REPO / "tests" / "plugins" / "sidecho", work / "sidecho.zip").read_bytes()
        answer = httpx.post(
            f"{side}/api/plugins", content=archive, headers={**admin, "Content-Type": "application/zip"}
        )
        answer.raise_for_status()
        httpx.post(f"{side}/api/plugins/sidecho/enable", headers=admin).raise_for_status()
        wait_until(
            lambda: all(
                httpx.get(f"{side}/api/plugins/{pid}", headers=admin).json()["state"] == "running"
                for pid in ("sidecho", "echo")
            ),
            60,
            "plugins running",
        )
        onboarded = httpx.post(
            f"http://127.0.0.1:{serve_port}/api/connector-sessions", json={"kind": "sidecho"}, headers=admin, timeout=30
        )
        onboarded.raise_for_status()
        inbound_connection = onboarded.json()["connection"]["connectionId"]
        session = httpx.post(
            f"{side}/connector-sessions", json={"kind": "echo", "connectionId": SEND_CONNECTION}, headers=connector
        )
        session.raise_for_status()
        serve_db = work / "serve" / "state.db"

        straight: list[float] = []
        through: list[float] = []
        cpu: dict[str, list[float]] = {
            "serve (straight)": [],
            "serve (through)": [],
            "sidecar + plugins": [],
            "of which plugins": [],
        }
        for r in range(repeats):
            progress(f"inbound round {r + 1}/{repeats}: {events} events straight, then through the sidecar")
            serve_cpu = tree_cpu(serve.proc.pid)
            direct = loadgen(serve_port, BRIDGE, inbound_connection, f"d{r}", events, "bridge")
            assert direct["statuses"] == {"200": events}, direct
            straight.append(events / (direct["last"] - direct["first"]))
            cpu["serve (straight)"].append((tree_cpu(serve.proc.pid) - serve_cpu) / events * 1e6)
            prefix = f"s{r}_"
            serve_cpu, sidecar_cpu = tree_cpu(serve.proc.pid), tree_cpu(sidecar.proc.pid)
            plugins_cpu = children_cpu(sidecar.proc.pid)
            began = time.perf_counter()
            httpx.post(
                f"{side}/webhooks/{inbound_connection}", json={"burst": events, "peers": 64, "prefix": prefix}
            ).raise_for_status()
            wait_until(lambda p=prefix: accepted(serve_db, p) >= events, 300, "the burst accepted", interval=0.01)
            through.append(events / (time.perf_counter() - began))
            cpu["serve (through)"].append((tree_cpu(serve.proc.pid) - serve_cpu) / events * 1e6)
            cpu["sidecar + plugins"].append((tree_cpu(sidecar.proc.pid) - sidecar_cpu) / events * 1e6)
            cpu["of which plugins"].append((children_cpu(sidecar.proc.pid) - plugins_cpu) / events * 1e6)
        ratio = median(through) / median(straight)
        report.table(
            "Inbound events/s into serve's bridge",
            ["path", "events/s (median)", "rounds"],
            [
                ["straight POSTs (32 connections)", median(straight), ", ".join(f"{v:,.0f}" for v in straight)],
                ["plugin -> sidecar queue -> forwarder", median(through), ", ".join(f"{v:,.0f}" for v in through)],
                ["ratio", ratio, ""],
            ],
        )
        report.check("inbound through the sidecar / straight", ratio * 100, ">= 70", "%")
        report.table(
            "CPU per inbound event (µs, median)", ["process", "µs/event"], [[k, median(v)] for k, v in cpu.items()]
        )
        health = httpx.get(f"{side}/health", headers=connector).json()["forwarder"]
        report.note(f"forwarder after the rounds: delivered {health['delivered']}, failures {health['failures']}")

        rows = []
        rates: dict[str, list[float]] = {"send": [], "send-same": [], "bare": []}
        for r in range(repeats):
            progress(f"/send round {r + 1}/{repeats}: {sends} requests each")
            for shape in ("send", "send-same"):
                result = loadgen(sidecar_port, CONNECTOR, SEND_CONNECTION, f"q{r}", sends, shape)
                assert result["statuses"] == {"200": sends}, result
                rates[shape].append(result["rps"])
            result = loadgen(bare_port, CONNECTOR, SEND_CONNECTION, f"b{r}", sends, "send")
            rates["bare"].append(result["rps"])
        labels = {
            "send": "sidecar /send, unique requestIds (plugin call)",
            "send-same": "sidecar /send, one requestId (duplicates)",
            "bare": "bare Starlette /send",
        }
        for shape, values in rates.items():
            rows.append([labels[shape], median(values), median(values) / median(rates["bare"])])
        report.table("/send requests/s (32 connections)", ["endpoint", "requests/s (median)", "vs bare"], rows)
        report.data = {"straight": straight, "through": through, "send": rates}
    finally:
        for server in (serve, sidecar, bare):
            server.stop()
    report.emit(args.json)


if __name__ == "__main__":
    main()
